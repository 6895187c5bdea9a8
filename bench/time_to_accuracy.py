"""Benchmark: time to accuracy on this CPU, airbench94 (PyTorch) against `deepsight train`.

Usage: .venv/bin/python bench/time_to_accuracy.py --workspace WS [--fractions 0.5,0.75,1]
       [--airbench-python .venv-bench/bin/python] [--airbench-result FILE] [--deepsight-flags ...]

WS is a deepsight workspace where `deepsight obtain` and `scrub` have run on the shared
CIFAR-10 (both contenders then train on the same JPEG-decoded images). First airbench94 itself:
the `airbench` package from PyPI (`make bench-setup` installs it in .venv-bench), its own
recipe and test-time augmentation, in a process of its own, on the CPU under bfloat16 autocast
where the CPU computes bfloat16 natively; its CUDA calls (`.cuda()`, CUDA events, half
precision) are pointed at the CPU by this script, nothing else of it is changed. Its wall time
W (the whole process: imports, data, training, scoring) and test accuracy A are the bar. Then
`deepsight train` with its default recipe and `--budget` at each fraction of W, one after the
other. The figures, as ratios:

  accuracy at equal minutes   deepsight's test accuracy at budget W, minus A
  minutes to A                the least budget (linear between the measured fractions) at which
                              deepsight reaches A, over W (<= 1: deepsight is as fast or faster)

airbench trains on all 50,000 training images, deepsight on scrub's training split (45,000 by
default: it holds out validation for model selection and the forensics). Timed runs need the
machine to themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the bench environment's Python (torch, airbench); prints one JSON line.
AIRBENCH_ON_CPU = r"""
import json, os, sys, time
start = time.perf_counter()
import numpy as np
import torch

torch.set_num_threads(os.cpu_count())
cpu = torch.device("cpu")
# airbench is written for one CUDA GPU: its tensors, events and half precision go to the CPU.
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
torch.Tensor.half = lambda self, *a, **k: self.float()
torch.nn.Module.half = lambda self, *a, **k: self.float()
torch.cuda.synchronize = lambda *a, **k: None
_load = torch.load
torch.load = lambda *a, **k: _load(*a, **{**k, "map_location": cpu})
class _Event:
    def __init__(self, *a, **k):
        self.t = 0.0
    def record(self, *a, **k):
        self.t = time.perf_counter()
    def elapsed_time(self, other):
        return 1e3 * (other.t - self.t)
torch.cuda.Event = _Event
import airbench
import airbench.utils

# The whitening layer's covariance and eigendecomposition in float32, as on the GPU (where no
# autocast runs): under bfloat16 autocast the covariance's matrix product rounds to bfloat16,
# eigenvalues come out below -eps, and the square root makes the whole network NaN.
_init_whitening = airbench.utils.init_whitening_conv
def _init_whitening_float32(*args, **kwargs):
    with torch.autocast("cpu", enabled=False):
        return _init_whitening(*args, **kwargs)
airbench.utils.init_whitening_conv = _init_whitening_float32

data = np.load(sys.argv[1])
# airbench's train() opens "cifar10/test.pt" relative to the working directory (this process
# runs in a scratch folder), so both splits go there.
folder = os.path.join(sys.argv[2], "cifar10")
os.makedirs(folder, exist_ok=True)
for split in ("train", "test"):
    torch.save({"images": torch.tensor(data[f"x_{split}"]),
                "labels": torch.tensor(data[f"y_{split}"]).long(),
                "classes": [str(c) for c in data["class_names"]]},
               os.path.join(folder, f"{split}.pt"))
bf16 = sys.argv[3] == "bf16"
with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
    train = airbench.CifarLoader(folder, train=True, batch_size=1024,
                                 aug={"flip": True, "translate": 2}, altflip=True)
    model = airbench.train94(train, verbose=False)
    test = airbench.CifarLoader(folder, train=False, batch_size=2000)
    accuracy = airbench.evaluate(model, test, tta_level=2)
print(json.dumps({"accuracy": accuracy, "wall_s": time.perf_counter() - start,
                  "torch": torch.__version__, "bfloat16": bf16}))
"""


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def native_bfloat16() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_airbench(python: str, images: Path) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        out = subprocess.run(
            [
                os.path.abspath(python),  # the subprocess runs in the scratch folder
                "-c",
                AIRBENCH_ON_CPU,
                str(images),
                folder,
                "bf16" if native_bfloat16() else "fp32",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=folder,
        )
        if out.returncode:
            sys.exit(f"airbench failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["wall_s"] = time.perf_counter() - start  # the process as launched
        return result


def run_deepsight(workspace: Path, budget_s: float, run_id: str, flags: list[str]) -> dict:
    command = [
        str(ROOT / ".venv" / "bin" / "deepsight"),
        "--workspace",
        str(workspace),
        "train",
        "--run-id",
        run_id,
        "--budget",
        f"{round(budget_s)}s",
        "--mva",
        "0",
        *flags,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    metrics = json.loads((workspace / "runs" / run_id / "metrics.json").read_text())
    return {"budget_s": budget_s, "wall_s": wall, "accuracy": metrics["test"]["accuracy"]}


def minutes_to(target: float, runs: list[dict]) -> float | None:
    """The least wall time at which the runs (sorted by budget) reach `target`, linear
    between neighbouring budgets; None when none does."""
    runs = sorted(runs, key=lambda r: r["wall_s"])
    for before, after in zip([None, *runs[:-1]], runs, strict=True):
        if after["accuracy"] >= target:
            if before is None or before["accuracy"] >= target:
                return after["wall_s"]
            share = (target - before["accuracy"]) / (after["accuracy"] - before["accuracy"])
            return before["wall_s"] + share * (after["wall_s"] - before["wall_s"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--fractions", default="0.5,0.75,1")
    parser.add_argument("--airbench-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    parser.add_argument(
        "--airbench-result", type=Path, help="JSON of an earlier airbench run on this CPU"
    )
    parser.add_argument("--deepsight-flags", default="", help="extra flags for deepsight train")
    args = parser.parse_args()

    images = args.workspace / "data" / args.dataset / "images.npz"
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores", flush=True)
    if args.airbench_result:
        bar = json.loads(args.airbench_result.read_text())
    else:
        bar = run_airbench(args.airbench_python, images)
    print(
        f"airbench94 (torch {bar['torch']}, bfloat16 {bar['bfloat16']}): "
        f"{bar['accuracy']:.2%} in {bar['wall_s']:.0f} s",
        flush=True,
    )
    runs = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        run_id = f"tta-{int(time.time())}-{fraction:g}"
        run = run_deepsight(
            args.workspace, fraction * bar["wall_s"], run_id, args.deepsight_flags.split()
        )
        runs.append(run)
        print(
            f"deepsight --budget {run['budget_s']:.0f}s: {run['accuracy']:.2%} in "
            f"{run['wall_s']:.0f} s",
            flush=True,
        )
    equal = max(runs, key=lambda r: r["budget_s"])
    print(f"accuracy at equal minutes: {equal['accuracy'] - bar['accuracy']:+.2%} points")
    reached = minutes_to(bar["accuracy"], runs)
    if reached is None:
        print("minutes to airbench's accuracy: not reached at the budgets measured")
    else:
        print(f"minutes to airbench's accuracy: {reached / bar['wall_s']:.2f} of airbench's")
    json.dump({"airbench": bar, "deepsight": runs}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
