"""Benchmark: EfficientNet-Lite inference (backbone, pooling, ImageNet head), float32 against
mixed_bfloat16, at several input sizes.

Usage: .venv/bin/python bench/efficientnet_lite_inference.py [--variant lite0]
       [--sizes 96 128 160] [--batch 64] [--rounds 5] [--steps 3]

Each model is built once per precision (the dtype policy is fixed when layers are made) and
called through one tf.function per input size on a fixed normalised batch. Sizes and
precisions alternate within each round, `--steps` timed calls a round after two warm-up calls,
and the figures are medians over rounds, with the bfloat16/float32 ratio computed within each
round, since these machines are noisy. The weights come from the deepsight cache
(DEEPSIGHT_CACHE), converted first if needed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

PRECISIONS = ("float32", "mixed_bfloat16")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="lite0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from deepsight_tf.model.efficientnet_lite import NORMALIZATION, imagenet_classifier

    forwards = {}
    for precision in PRECISIONS:
        keras.config.set_dtype_policy(precision)
        model = imagenet_classifier(args.variant)
        forwards[precision] = tf.function(lambda x, m=model: m(x, training=False))
    keras.config.set_dtype_policy("float32")
    rng = np.random.default_rng(0)
    batches = {
        size: NORMALIZATION(rng.integers(0, 256, (args.batch, size, size, 3)).astype("float32"))
        for size in args.sizes
    }
    rates: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for size, x in batches.items():
            for precision, forward in forwards.items():
                for _ in range(2):
                    forward(x).numpy()
                start = time.perf_counter()
                for _ in range(args.steps):
                    forward(x).numpy()
                elapsed = time.perf_counter() - start
                rates.setdefault((size, precision), []).append(args.batch * args.steps / elapsed)
    print(
        f"EfficientNet-{args.variant.capitalize()} inference, batch {args.batch}, "
        f"{os.cpu_count()} CPUs ({cpu_name()}), TensorFlow {tf.__version__}, "
        f"medians of {args.rounds} rounds"
    )
    print(f"{'size':>5} {'float32 img/s':>14} {'bf16 img/s':>11} {'bf16/fp32':>10}")
    for size in args.sizes:
        fp32, bf16 = rates[(size, "float32")], rates[(size, "mixed_bfloat16")]
        ratio = statistics.median(b / f for b, f in zip(bf16, fp32, strict=True))
        print(
            f"{size:>5} {statistics.median(fp32):>14.1f} {statistics.median(bf16):>11.1f} "
            f"{ratio:>10.2f}"
        )


if __name__ == "__main__":
    main()
