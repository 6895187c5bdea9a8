"""Run deepsight from a checkout: `python cli.py --help`. The CLI lives in deepsight_tf.cli."""

from deepsight_tf.cli import run

if __name__ == "__main__":
    run()
