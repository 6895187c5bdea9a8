"""Using a finished run: prediction on new images and export."""
