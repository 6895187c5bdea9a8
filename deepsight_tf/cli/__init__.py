"""The command line (console script `deepsight`): the only layer that prints and exits."""

from deepsight_tf.cli.app import app

__all__ = ["app"]
