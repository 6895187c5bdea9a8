"""Benchmark: the training step, deepsight's against bare Keras and PyTorch's.

Usage: .venv/bin/python bench/train_step.py [--network resnet18|airbench94] [--image-size 64]
       [--batch 128] [--rounds 8] [--precision float32|mixed_bfloat16|auto] [--steps 3]

  deepsight     build_classifier (flat graph, fastconv gradients, fused BatchNorm in
                airbench), DifferentialSGD on a OneCycle, accuracy and macro-F1 metrics:
                `deepsight train`'s compiled step
  bare keras    the same layers without fastconv (airbench: Keras's BatchNormalization),
                keras.optimizers.SGD, no metrics
  torch         torchvision.models.resnet18, or airbench's own make_net94 (the `airbench`
                package, its CUDA calls pointed at the CPU), channels_last, SGD Nesterov,
                under torch.autocast(bfloat16) when the policy is bfloat16; when torch is
                installed (the optional `bench` extra: make bench-setup)

Each step is one optimizer update on a fixed preprocessed batch (the input pipeline is
bench/pipeline.py's subject). The variants alternate, `--steps` timed steps a round after two
warm-up steps each, and the figures are medians over rounds, with ratios computed within each
round, since these machines are noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

CLASSES = 10


def batch(size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, size, size, 3)).astype(np.float32)
    y = np.eye(CLASSES, dtype=np.float32)[np.arange(n) % CLASSES]
    return x, y


def keras_step(model: Any, x: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    """One compiled train step of `model` on (x, y), as fit runs it."""
    import tensorflow as tf

    data = (tf.constant(x), tf.constant(y))
    model.make_train_function()
    step = model.train_function
    iterator = iter(tf.data.Dataset.from_tensors(data).repeat())

    def run() -> None:
        logs = step(iterator)
        float(np.asarray(logs["loss"]))  # wait for the step to finish

    return run


def network(name: str, size: int) -> Any:
    from deepsight_tf.model.classifier import build_classifier

    if name == "airbench94":
        return build_classifier(name, CLASSES, size, dropout=0.0)
    return build_classifier(name, CLASSES, size, stem="imagenet", dropout=0.0)


def deepsight_variant(
    name: str, size: int, x: np.ndarray, y: np.ndarray, steps: int
) -> Callable[[], None]:
    import keras

    from deepsight_tf.training.metrics import training_metrics
    from deepsight_tf.training.optim import make_optimizer
    from deepsight_tf.training.schedules import OneCycle

    keras.utils.set_random_seed(0)
    model = network(name, size)
    model.compile(
        optimizer=make_optimizer("sgd", OneCycle(0.4, 10_000)),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=training_metrics(CLASSES),
        jit_compile=False,
    )
    return keras_step(model, x, y)


def bare_keras_variant(
    name: str, size: int, x: np.ndarray, y: np.ndarray, steps: int
) -> Callable[[], None]:
    import keras

    from deepsight_tf.model.layers import FusedBatchNormalization

    def plain(layer: Any) -> Any:
        if isinstance(layer, FusedBatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    keras.utils.set_random_seed(0)
    # Fresh layers: Keras's own convolution gradients and BatchNormalization.
    model = keras.models.clone_model(network(name, size), clone_function=plain)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        loss=keras.losses.CategoricalCrossentropy(),
        jit_compile=False,
    )
    return keras_step(model, x, y)


def airbench_on_cpu() -> Any:
    """airbench's make_net94 with its CUDA and half-precision calls pointed at the CPU."""
    import torch

    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.nn.Module.half = lambda self, *a, **k: self.float()
    import airbench

    return airbench.make_net94()


def torch_variant(
    name: str, size: int, x: np.ndarray, y: np.ndarray, steps: int, bf16: bool
) -> Callable[[], None]:
    import torch
    import torchvision

    torch.manual_seed(0)
    if name == "airbench94":
        model = airbench_on_cpu().to(memory_format=torch.channels_last)
    else:
        model = torchvision.models.resnet18(num_classes=CLASSES)
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    inputs = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(memory_format=torch.channels_last)
    targets = torch.from_numpy(y.argmax(1))
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        float(loss.detach())

    return run


def timed(run: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        run()
    return time.perf_counter() - start


def worker(variant: str, name: str, size: int, batch_size: int, precision: str) -> None:
    """Serve timing requests on stdin ("N" -> seconds for N steps) for one variant.

    TensorFlow and PyTorch crash when loaded into one process, so each variant lives in its
    own; the parent alternates between them.
    """
    import sys

    x, y = batch(size, batch_size)
    if variant == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        run = torch_variant(name, size, x, y, 0, precision == "mixed_bfloat16")
    else:
        from deepsight_tf.training.optim import apply_precision, resolve_precision

        apply_precision(resolve_precision(precision).policy)
        make = deepsight_variant if variant == "deepsight" else bare_keras_variant
        run = make(name, size, x, y, 0)
    run()
    run()  # warm-up: tracing, first allocations
    print("ready", flush=True)
    for line in sys.stdin:
        print(timed(run, int(line)), flush=True)


def main() -> None:
    import subprocess
    import sys

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--network", choices=("resnet18", "airbench94"), default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.network, args.image_size, args.batch, args.precision)
        return

    names = ["deepsight", "bare keras"]
    peer = "airbench" if args.network == "airbench94" else "torchvision"
    if not args.no_torch and importlib.util.find_spec(peer) is not None:
        names.append("torch")
    workers = {}
    for name in names:  # one at a time: two warming up at once would measure neither
        command = [sys.executable, __file__, "--worker", name, "--network", args.network]
        command += ["--image-size", str(args.image_size)]
        command += ["--batch", str(args.batch), "--precision", args.precision]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        workers[name] = process
    speeds: dict[str, list[float]] = {name: [] for name in workers}
    for _ in range(args.rounds):
        for name, process in workers.items():
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(f"{args.steps}\n")
            seconds = float(process.stdout.readline())
            speeds[name].append(args.steps * args.batch / seconds)
    for process in workers.values():
        assert process.stdin is not None
        process.stdin.close()
        process.wait()
    with open("/proc/cpuinfo") as info:
        cpu = [line for line in info if line.startswith("model name")][:1]
    policy = args.precision
    print(
        f"{args.network} training step, {args.image_size} px, batch {args.batch}, policy {policy}, "
        f"{os.cpu_count()} CPUs ({cpu[0].split(':')[1].strip() if cpu else 'unknown'}), "
        f"{args.rounds} rounds of {args.steps} steps, variants alternating"
    )
    for name, values in speeds.items():
        print(
            f"  {name:12s} {statistics.median(values):7.1f} images/s "
            f"(min {min(values):.1f}, max {max(values):.1f})"
        )
    base = speeds["deepsight"]
    for name, values in speeds.items():
        if name != "deepsight":
            ratios = [a / b for a, b in zip(base, values, strict=True)]
            print(f"  deepsight / {name}: {statistics.median(ratios):.2f} (median of rounds)")


if __name__ == "__main__":
    main()
