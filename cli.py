"""Run deepsight from a checkout: `python cli.py --help`. The CLI lives in deepsight_tf.cli."""

from deepsight_tf.cli import app

if __name__ == "__main__":
    app()
