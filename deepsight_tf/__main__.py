"""`python -m deepsight_tf` runs the command line."""

from deepsight_tf.cli import app

app(prog_name="deepsight")
