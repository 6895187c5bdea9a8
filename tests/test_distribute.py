"""deepsight_tf.training.distribute: strategy choice, TF_CONFIG checks, scaling, equivalence."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.training.distribute import (
    choose_strategy,
    cluster_workers,
    describe_strategy,
    make_strategy,
    scale_for_replicas,
)

WORKER = Path(__file__).with_name("distribute_worker.py")
REPO = WORKER.parents[1]
# One device and the strategy differ only in float32 summation order (per-replica partial
# sums, then the all-reduce); measured here: 1.2e-7 on the losses (~2), 1.8e-7 on the
# weights (~0.3) after 8 steps. A wrong global batch moves the weights by 7e-2 (the control).
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
TIMEOUT_S = 300


def tf_config(ports: list[int], index: int, job: str = "worker") -> str:
    workers = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({"cluster": {job: workers}, "task": {"type": job, "index": index}})


# Scaling ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("rule", "expected_lr"), [("linear", 1.6), ("sqrt", 0.8), ("none", 0.4)])
def test_scale_for_replicas_rules(rule: str, expected_lr: float) -> None:
    global_batch, lr = scale_for_replicas(128, 0.4, 4, rule)
    assert global_batch == 512
    assert lr == pytest.approx(expected_lr)


def test_scale_for_replicas_keeps_one_replica_unchanged() -> None:
    assert scale_for_replicas(128, 0.4, 1) == (128, 0.4)
    assert scale_for_replicas(32, 0.05, 3, "sqrt") == (96, pytest.approx(0.05 * math.sqrt(3)))


@pytest.mark.parametrize(
    "args",
    [(0, 0.1, 2), (8.0, 0.1, 2), (True, 0.1, 2), (8, 0.0, 2), (8, math.nan, 2), (8, 0.1, 0)],
)
def test_scale_for_replicas_rejects_bad_values(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError, match="Received"):
        scale_for_replicas(*args)


def test_scale_for_replicas_rejects_unknown_rule() -> None:
    with pytest.raises(ValueError, match="rule='square'"):
        scale_for_replicas(8, 0.1, 2, "square")


# TF_CONFIG --------------------------------------------------------------------------------
def test_cluster_workers_counts_chief_and_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster_workers() == 0
    assert cluster_workers("  ") == 0
    assert cluster_workers(tf_config([1000, 1001], 1)) == 2
    config = {
        "cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"], "evaluator": ["d:4"]},
        "task": {"type": "evaluator", "index": 0},
    }
    assert cluster_workers(json.dumps(config)) == 3
    monkeypatch.setenv("TF_CONFIG", tf_config([1000, 1001, 1002], 2))
    assert cluster_workers() == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{cluster", "not valid JSON"),
        ("[1, 2]", 'no "cluster"'),
        ('{"cluster": {"worker": "a:1"}}', '"host:port"'),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', '"host:port"'),
        ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', 'no "worker"'),
        ('{"cluster": {"worker": ["a:1"]}}', '"task" must name'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "task"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}', "integer"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": true}}', "integer"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "0"),
    ],
)
def test_cluster_workers_rejects_malformed_tf_config(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        cluster_workers(text)
    assert "\n" not in str(raised.value)
    assert raised.value.exit_code == 7


def test_a_tf_config_nested_past_the_parser_is_one_config_error() -> None:
    for text, message in (
        ("[" * 200_000 + "]" * 200_000, "TF_CONFIG: JSON nested too deeply to read"),
        ('{"cluster": ' * 50 + "1" + "}" * 50, "TF_CONFIG: JSON nested more than 32 levels"),
    ):
        with pytest.raises(ConfigError, match=message) as raised:
            cluster_workers(text)
        assert "\n" not in str(raised.value)


# Choosing a strategy ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("workers", "gpus", "expected"),
    [(0, 0, "one"), (0, 1, "one"), (0, 2, "mirrored"), (1, 4, "mirrored"), (2, 0, "multiworker")],
)
def test_auto_prefers_multiworker_then_mirrored(workers: int, gpus: int, expected: str) -> None:
    config = tf_config(list(range(1000, 1000 + workers)), 0) if workers else ""
    assert choose_strategy("auto", config, gpus) == expected


def test_explicit_strategies_are_kept() -> None:
    for name in ("one", "mirrored", "multiworker"):
        assert choose_strategy(name, "", 8) == name


def test_unknown_strategy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="choose one of auto, one, mirrored, multiworker"):
        make_strategy("horovod")


def test_multiworker_without_tf_config_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        make_strategy("multiworker")


def test_devices_only_for_mirrored() -> None:
    with pytest.raises(ValueError, match="Received: devices"):
        make_strategy("multiworker", devices=["/cpu:0"])


def test_one_is_the_default_strategy_on_one_device() -> None:
    import tensorflow as tf

    strategy = make_strategy("one")
    assert strategy is tf.distribute.get_strategy()
    described = describe_strategy(strategy)
    assert described["kind"] == "one"
    assert (described["replicas"], described["workers"], described["chief"]) == (1, 1, True)
    assert len(described["devices"]) == 1


# Equivalence with one device ----------------------------------------------------------------
def run_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    # The CPU tests split the CPU; a GPU would otherwise take the default device.
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_two_workers(commands: list[list[str]], logs_dir: Path) -> None:
    """Run one command per worker of a 2-worker TF_CONFIG cluster on 127.0.0.1; both must exit 0."""
    ports = free_ports(2)
    logs = [(logs_dir / f"worker{i}.log").open("w") for i in range(2)]
    workers = [
        subprocess.Popen(
            command,
            env=run_env(TF_CONFIG=tf_config(ports, i)),
            stdout=logs[i],
            stderr=subprocess.STDOUT,
        )
        for i, command in enumerate(commands)
    ]
    try:
        codes = [worker.wait(timeout=TIMEOUT_S) for worker in workers]
    finally:
        # A worker whose peer died waits for it in the collective: never leave one behind.
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()
    tails = [log.name + ":\n" + Path(log.name).read_text()[-3000:] for log in logs]
    assert codes == [0, 0], "\n".join(tails)


def assert_matches_one_device(result: dict[str, Any]) -> None:
    reference, strategy = result["reference"], result["strategy"]
    assert strategy["batch"] == reference["batch"] == 16
    assert len(strategy["running_losses"]) == 8  # 64 images / 16, two epochs
    np.testing.assert_allclose(
        strategy["running_losses"], reference["running_losses"], rtol=LOSS_RTOL
    )
    for got, want in zip(strategy["weights"], reference["weights"], strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=WEIGHT_ATOL)
    # Both runs learned: the loss fell from the first to the last step.
    assert reference["running_losses"][-1] < reference["running_losses"][0] - 0.1
    # Epoch metrics (accuracy, macro-F1, validation loss...) aggregate over all replicas.
    assert sorted(strategy["history"]) == sorted(reference["history"])
    assert "val_macro_f1" in strategy["history"]
    for name, values in reference["history"].items():
        np.testing.assert_allclose(strategy["history"][name], values, rtol=LOSS_RTOL, err_msg=name)
    # Predictions come back whole and in order, the uneven last batch (21 = 16 + 5) included.
    assert np.shape(strategy["val_probs"]) == (21, 4)
    np.testing.assert_allclose(strategy["val_probs"], reference["val_probs"], atol=WEIGHT_ATOL)


def max_weight_change(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(
        float(np.max(np.abs(np.subtract(x, y))))
        for x, y in zip(a["weights"], b["weights"], strict=True)
    )


@pytest.mark.slow
def test_mirrored_on_two_devices_matches_one_device(tmp_path: Path) -> None:
    out = tmp_path / "mirrored.json"
    command = [sys.executable, str(WORKER), "--strategy", "mirrored", "--logical-cpus", "2"]
    subprocess.run(
        [*command, "--control", "--out", str(out)],
        env=run_env(),
        check=True,
        timeout=TIMEOUT_S,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    described = result["describe"]
    assert (described["kind"], described["replicas"], described["workers"]) == ("mirrored", 2, 1)
    assert [d.rsplit("/", 1)[-1] for d in described["devices"]] == ["device:CPU:0", "device:CPU:1"]
    # Each replica gets its own half of the global batch of 2 x 8 (linear scaling: lr x 2).
    assert [len(share) for share in result["replica_shares"]] == [8, 8]
    assert result["replica_shares"][0] + result["replica_shares"][1] == result["first_batch"]
    assert result["strategy"]["lr"] == pytest.approx(2 * result["control"]["lr"])
    assert_matches_one_device(result)
    # The control, one device on the per-replica batch at the unscaled rate, is what a
    # global batch misread as the replica's would train: the tolerance must catch it.
    assert max_weight_change(result["control"], result["reference"]) > 1000 * WEIGHT_ATOL


@pytest.mark.slow
def test_multiworker_over_localhost_matches_one_device(tmp_path: Path) -> None:
    outs = [tmp_path / f"worker{i}.json" for i in range(2)]
    run_two_workers(
        [
            [sys.executable, str(WORKER), "--strategy", "multiworker", "--out", str(outs[i])]
            for i in range(2)
        ],
        tmp_path,
    )
    chief, other = (json.loads(out.read_text()) for out in outs)
    assert chief["describe"]["chief"] is True and other["describe"]["chief"] is False
    for result in (chief, other):
        described = result["describe"]
        assert (described["kind"], described["replicas"], described["workers"]) == (
            "multiworker",
            2,
            2,
        )
    # Worker 0 takes the first half of each global batch, worker 1 the second: no repeats.
    assert [len(share) for share in chief["replica_shares"] + other["replica_shares"]] == [8, 8]
    assert chief["replica_shares"][0] + other["replica_shares"][0] == chief["first_batch"]
    assert_matches_one_device(chief)
    assert_matches_one_device(other)
    assert chief["strategy"]["weights"] == other["strategy"]["weights"]


@pytest.mark.slow
def test_deepsight_train_multiworker_matches_a_one_device_run(tmp_path: Path) -> None:
    """`deepsight train --strategy multiworker` itself, two processes over 127.0.0.1, against
    `deepsight train` on one device with the same global batch (2 x 8) and rate (2 x 0.05).

    The head phase (BatchNorm in inference mode) with dropout off: per-replica BatchNorm
    statistics and per-replica dropout masks are what data parallelism changes by design,
    so only this setting has one right answer to compare with.
    """
    from deepsight_tf.core.storage import read_json
    from deepsight_tf.core.workspace import HISTORY_FILE, PREDICTIONS_FILE
    from deepsight_tf.training.history import read_history

    from support.separable import separable_workspace

    ws = separable_workspace(tmp_path)
    common = [
        *("--backbone", "resnet18", "--weights", "none", "--image-size", "16"),
        *("--width-multiplier", "0.0625"),
        *("--frozen-epochs", "2", "--epochs", "0", "--dropout", "0", "--augment", "light"),
        *("--seed", "4", "--mva", "0", "--precision", "float32"),
    ]
    cli = [sys.executable, "-m", "deepsight_tf", "--workspace", str(ws.root), "train"]
    one = [*cli, "--run-id", "one", "--strategy", "one", "--batch-size", "16", "--lr", "0.1"]
    subprocess.run([*one, *common], env=run_env(), check=True, timeout=TIMEOUT_S)
    multi = [*cli, "--run-id", "mw", "--strategy", "multiworker", "--batch-size", "8"]
    run_two_workers([[*multi, "--lr", "0.05", *common]] * 2, tmp_path)
    distribution = read_json(ws.run_dir("mw") / "config.json")["distribution"]
    assert (distribution["replicas"], distribution["workers"]) == (2, 2)
    assert (distribution["global_batch"], distribution["lr"]) == (16, 0.1)
    want, got = (np.load(ws.run_dir(r) / PREDICTIONS_FILE) for r in ("one", "mw"))
    np.testing.assert_allclose(got["val_probs"], want["val_probs"], atol=WEIGHT_ATOL)
    np.testing.assert_allclose(got["test_probs"], want["test_probs"], atol=WEIGHT_ATOL)
    rows = [read_history(ws.run_dir(r) / HISTORY_FILE) for r in ("one", "mw")]
    for a, b in zip(*rows, strict=True):
        for key in ("loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=LOSS_RTOL), key
    assert sorted(p.name for p in ws.runs_dir().iterdir()) == ["mw", "one"]  # one writer
