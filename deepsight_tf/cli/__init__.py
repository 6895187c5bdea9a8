"""The command line (console script `deepsight`): the only layer that prints and exits."""

from deepsight_tf.cli.app import app, run

__all__ = ["app", "run"]
