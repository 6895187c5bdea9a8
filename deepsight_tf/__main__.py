"""`python -m deepsight_tf` runs the command line."""

from deepsight_tf.cli import run

run()
