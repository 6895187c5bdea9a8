"""Faults during training: Ctrl-C, crashes, corrupt checkpoints, NaN, a full disk, hostile files.

Resumed runs are compared with an uninterrupted run of the same settings in --deterministic
mode, and must equal it exactly: the final weights, the test probabilities, every metric and
history row. Exact, not within a tolerance, because nothing differs: the batches are a pure
function of (seed, epoch, batch number), the commit holds every variable the step depends on
(weights, BatchNorm statistics, dropout's seed state, optimizer step and momenta, and mid-epoch
the training metrics' sums), and deterministic ops on one machine give the same bits. (Across
machines or thread counts the same does not hold; nothing here claims it.)

The SIGKILL trials run `deepsight train` in subprocesses and are marked slow.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import zipfile
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from deepsight_tf.cli import app
from deepsight_tf.core.errors import ConfigError, StorageError, TrainingInterrupted
from deepsight_tf.core.workspace import (
    CHECKPOINTS_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    STATE_FILE,
    Workspace,
)
from deepsight_tf.training.checkpoints import CheckpointStore
from deepsight_tf.training.loop import train

from support.planted import Crash, at_step, crash, lambda_model_file
from support.resume import assert_same_outcome, outcome, two_phases
from support.tiny_run import make_tiny_run


@pytest.fixture(scope="module")
def reference(prepared: Workspace) -> dict[str, object]:
    return outcome(Path(train(two_phases(run_id="reference"), prepared).run_dir))


# --- Ctrl-C ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "augment"),
    [
        pytest.param(5, "light", marks=pytest.mark.slow),
        (12, "light"),
        (20, "light"),
        pytest.param(5, "none", marks=pytest.mark.slow),
    ],
    ids=["phase1-pixels", "epoch-end", "phase2", "phase1-cached-features"],
)
def test_ctrl_c_stops_at_the_next_step_saves_and_resumes_exactly(
    prepared: Workspace,
    reference: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
    step: int,
    augment: str,
) -> None:
    run_id = f"ctrl-c-{step}-{augment}"
    want = (
        reference
        if augment == "light"
        else outcome(
            Path(train(two_phases(run_id="ref-" + run_id, augment=augment), prepared).run_dir)
        )
    )
    at_step(step, lambda: os.kill(os.getpid(), signal.SIGINT), monkeypatch)
    with pytest.raises(TrainingInterrupted, match=f"train --run-id {run_id} --resume") as info:
        train(two_phases(run_id=run_id, augment=augment), prepared)
    monkeypatch.undo()
    assert f"interrupted at step {step + 1} " in str(info.value)  # the next step, not later
    store = CheckpointStore(prepared.run_dir(run_id) / CHECKPOINTS_DIR)
    latest = store.commits()[0].position
    assert latest.step == step + 1 and latest.batch == (step + 1) % 13  # mid-epoch
    # Resume as a user would: only the run id; the stored settings apply.
    result = CliRunner().invoke(
        app,
        ["--workspace", str(prepared.root), "train", "--run-id", run_id, "--resume"],
    )
    assert result.exit_code == 0, result.output
    assert_same_outcome(outcome(prepared.run_dir(run_id)), want)


def test_sigterm_commits_exits_143_and_resumes_exactly(
    prepared: Workspace, reference: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (a scheduler's or `docker stop`'s notice before SIGKILL) is taken like Ctrl-C:
    the step finishes, the state is committed, and the exit code is the shell's 143."""
    run_id = "sigterm"
    at_step(7, lambda: os.kill(os.getpid(), signal.SIGTERM), monkeypatch)
    with pytest.raises(TrainingInterrupted, match=f"train --run-id {run_id} --resume") as info:
        train(two_phases(run_id=run_id), prepared)
    monkeypatch.undo()
    assert info.value.exit_code == 143
    latest = CheckpointStore(prepared.run_dir(run_id) / CHECKPOINTS_DIR).commits()[0].position
    assert latest.step == 8
    result = CliRunner().invoke(
        app, ["--workspace", str(prepared.root), "train", "--run-id", run_id, "--resume"]
    )
    assert result.exit_code == 0, result.output
    assert_same_outcome(outcome(prepared.run_dir(run_id)), reference)


def test_a_stop_during_the_probe_ends_the_run_before_its_first_step(
    prepared: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while the pre-flight probe times its steps: the probe ends at its next step,
    nothing is trained or written, and the message says to run the command again."""
    import deepsight_tf.training.timing as timing

    real = timing.train_step_function

    def signalled(*args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(timing, "train_step_function", signalled)
    with pytest.raises(TrainingInterrupted, match="before the first step; nothing was written"):
        train(two_phases(run_id="probed", estimate=True), prepared)
    assert not prepared.run_dir("probed").exists()


@pytest.mark.slow  # 24 s: two runs; keeps `make test` under 15 minutes
def test_a_stop_during_the_final_scoring_ends_it_and_resume_scores(
    prepared: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training is committed when the final scoring starts: a stop there ends the scoring at
    its next batch (minutes of test-time views must not outlast a SIGKILL's grace), and
    --resume scores the run."""
    import deepsight_tf.training.loop as loop

    real = loop.predict_probs

    def signalled(*args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "predict_probs", signalled)
    settings = two_phases(run_id="scored", frozen_epochs=0, epochs=1, deterministic=False)
    with pytest.raises(TrainingInterrupted, match="train --run-id scored --resume") as info:
        train(settings, prepared)
    monkeypatch.undo()
    assert info.value.exit_code == 143
    assert not (prepared.run_dir("scored") / METRICS_FILE).exists()
    result = train(replace(settings, resume=True), prepared)
    assert (prepared.run_dir("scored") / METRICS_FILE).is_file()
    assert result.epochs_run == 1 and 0.0 <= result.test["accuracy"] <= 1.0


def test_resume_refuses_a_flag_that_differs_from_the_stored_run(
    prepared: Workspace, reference: dict[str, object]
) -> None:
    runner = CliRunner()
    args = ["--workspace", str(prepared.root), "train", "--run-id", "reference", "--resume"]
    result = runner.invoke(app, [*args, "--lr", "0.3"])
    assert result.exit_code == 7 and "different settings (lr)" in result.stderr


def test_resume_of_a_complete_run_reports_it_and_rewrites_nothing(
    prepared: Workspace, reference: dict[str, object]
) -> None:
    from deepsight_tf.core.storage import sha256_file

    run_dir = prepared.run_dir("reference")
    before = {p: sha256_file(p) for p in run_dir.rglob("*") if p.is_file()}
    result = train(two_phases(run_id="reference", resume=True), prepared)
    assert result.resumed_from == "complete"
    assert result.test == reference["test"] and result.best_epoch == reference["best_epoch"]
    assert {p: sha256_file(p) for p in run_dir.rglob("*") if p.is_file()} == before


# --- crashes and corrupt checkpoints ---------------------------------------------------------


@pytest.mark.slow  # 33 s: keeps `make test` under 15 minutes; `make test-full` runs it
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    prepared: Workspace, reference: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    at_step(30, crash, monkeypatch)  # epoch 3, after the commits of epochs 1 and 2
    with pytest.raises(Crash):
        train(two_phases(run_id="corrupt"), prepared)
    monkeypatch.undo()
    store = CheckpointStore(prepared.run_dir("corrupt") / CHECKPOINTS_DIR)
    latest, previous = store.commits()
    assert (latest.position.step, previous.position.step) == (26, 13)
    with open(store.folder / latest.file, "r+b") as handle:  # one flipped byte mid-file
        handle.seek(os.path.getsize(store.folder / latest.file) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    warnings: list[str] = []
    result = train(two_phases(run_id="corrupt", resume=True), prepared, notify=warnings.append)
    assert any("does not match its SHA-256" in w and "previous" in w for w in warnings)
    assert result.resumed_from is not None and "step 13" in result.resumed_from
    assert_same_outcome(outcome(Path(result.run_dir)), reference)


@pytest.mark.slow  # 33 s: keeps `make test` under 15 minutes; `make test-full` runs it
def test_a_crash_before_the_first_commit_resumes_from_the_start(
    prepared: Workspace, reference: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing was committed, so nothing blocks the id: the run starts over, with or without
    --resume, and ends as an uninterrupted one."""
    for run_id, resume in (("early", False), ("early-resumed", True)):
        at_step(3, crash, monkeypatch)
        with pytest.raises(Crash):
            train(two_phases(run_id=run_id), prepared)
        monkeypatch.undo()
        assert not CheckpointStore(prepared.run_dir(run_id) / CHECKPOINTS_DIR).commits()
        result = train(two_phases(run_id=run_id, resume=resume), prepared)
        assert result.resumed_from is None
        assert_same_outcome(outcome(Path(result.run_dir)), reference)


@pytest.mark.slow  # seconds of training each: make test-full runs it
def test_a_crash_after_the_last_commit_still_completes_every_artifact(
    prepared: Workspace, reference: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the final epoch's commit but before the phase's end weights, the model
    and the predictions are written: resume finds training done and finishes the rest."""
    import deepsight_tf.training.events as training

    real = training.save_weights_npz

    def crash_at_the_end(model, path):  # type: ignore[no-untyped-def]
        if path.name == "phase2.end.weights.npz":
            raise Crash
        real(model, path)

    monkeypatch.setattr(training, "save_weights_npz", crash_at_the_end)
    with pytest.raises(Crash):
        train(two_phases(run_id="late"), prepared)
    monkeypatch.undo()
    run_dir = prepared.run_dir("late")
    assert not (run_dir / PREDICTIONS_FILE).exists()
    result = train(two_phases(run_id="late", resume=True), prepared)
    assert result.resumed_from is not None and "after epoch 2" in result.resumed_from
    assert_same_outcome(outcome(run_dir), reference)


# --- divergence ------------------------------------------------------------------------------


def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(
    prepared: Workspace,
) -> None:
    # Commit every step (checkpoint_minutes tiny), so "last good" is as recent as can be.
    settings = two_phases(run_id="nan", lr=1e4, checkpoint_minutes=1e-9)
    with pytest.raises(ConfigError, match=r"NaN or infinite at step (\d+)") as info:
        train(settings, prepared)
    diverged = int(str(info.value).split("at step ")[1].split()[0])
    store = CheckpointStore(prepared.run_dir("nan") / CHECKPOINTS_DIR)
    commits = store.commits()
    assert commits, "the steps before divergence were committed"
    assert commits[0].position.step < diverged
    arrays = store.load(commits[0])
    assert all(np.isfinite(a).all() for group in arrays.values() for a in group)
    assert "lower --lr" in str(info.value) and str(store.folder) in str(info.value)


# --- a full disk -----------------------------------------------------------------------------


@pytest.mark.slow  # 2 min: two-phase runs, one failing mid-commit
def test_a_full_disk_mid_checkpoint_keeps_the_previous_state_and_resume_completes(
    prepared: Workspace, reference: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC half-way through writing the epoch-2 checkpoint: exit 10 with one line, the
    epoch-1 commit stays intact, no partial file is left, and --resume finishes exactly."""
    real_savez = np.savez
    calls = {"n": 0}

    def savez_until_the_disk_fills(handle, **arrays):  # type: ignore[no-untyped-def]
        if any(k.startswith("model.") for k in arrays):
            calls["n"] += 1
            if calls["n"] == 2:
                handle.write(b"\0" * 4096)  # part of the file made it to disk
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(handle, **arrays)

    monkeypatch.setattr("deepsight_tf.core.storage.np.savez", savez_until_the_disk_fills)
    args = ["--workspace", str(prepared.root), "train", "--run-id", "full-disk"]
    flags = ["--frozen-epochs", "1", "--epochs", "2", "--augment", "light", "--deterministic"]
    flags += ["--checkpoint-minutes", "0", "--backbone", "resnet18", "--weights", "none"]
    flags += ["--image-size", "16"]
    flags += ["--width-multiplier", "0.0625", "--batch-size", "8", "--lr", "0.05", "--seed", "1"]
    flags += ["--mva", "0", "--keep-checkpoints", "--precision", "float32"]
    result = CliRunner().invoke(app, [*args, *flags])
    monkeypatch.undo()
    assert result.exit_code == 10, result.output
    assert "No space left on device" in result.stderr and "Traceback" not in result.output
    store = CheckpointStore(prepared.run_dir("full-disk") / CHECKPOINTS_DIR)
    (only,) = store.commits()
    assert only.position.step == 13
    store.load(only)  # intact: hash and contents
    assert not list(store.folder.glob(".*.tmp"))
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert_same_outcome(outcome(prepared.run_dir("full-disk")), reference)


def test_the_commit_is_the_state_file_rewrite(tmp_path: Path) -> None:
    """A kill after a checkpoint file is written but before state.json names it: the file is
    garbage, the previous commit stays in force, and the next commit removes the file."""
    store = CheckpointStore(tmp_path)
    arrays = {"model": [np.arange(3.0)], "optimizer": [np.zeros(2)]}
    from deepsight_tf.training.checkpoints import Position

    first = store.commit(Position(1, 1, 0, 13), arrays, 0.5, 1, None, "t0")
    state_before = (tmp_path / STATE_FILE).read_bytes()
    orphan = tmp_path / "step00000026-b0.npz"
    orphan.write_bytes(b"half")  # as if killed before the state rewrite
    assert store.commits() == [first] and (tmp_path / STATE_FILE).read_bytes() == state_before
    store.commit(Position(1, 2, 0, 26), arrays, 0.6, 2, None, "t0")
    assert store.load(store.commits()[0])["model"][0].tolist() == [0.0, 1.0, 2.0]
    assert [c.position.step for c in store.commits()] == [26, 13]
    third = store.commit(Position(1, 3, 0, 39), arrays, 0.6, 2, None, "t0")
    assert [c.position.step for c in store.commits()] == [39, 26]  # KEEP = 2
    assert sorted(p.name for p in tmp_path.glob("step*")) == sorted(
        [third.file, "step00000026-b0.npz"]
    )


# --- hostile and tampered files --------------------------------------------------------------


def test_a_model_file_with_a_lambda_is_refused(tmp_path: Path) -> None:
    tiny_run = make_tiny_run(tmp_path)
    model_path = tiny_run.run_dir / "model.keras"
    lambda_model_file(model_path)
    # Re-sign the manifest, as an attacker with write access could: only safe_mode stops it.
    manifest = tiny_run.workspace.read_manifest(tiny_run.run_dir, "deepsight train")
    tiny_run.workspace.write_manifest(tiny_run.run_dir, manifest)
    result = CliRunner().invoke(
        app,
        [
            "--workspace",
            str(tiny_run.workspace.root),
            "predict",
            "tiny",
            str(tiny_run.test_paths[0]),
        ],
    )
    assert result.exit_code == 5, result.output
    assert "cannot be loaded" in result.stderr and "safe_mode" in result.stderr


def test_a_crafted_keras_file_cannot_run_code(tmp_path: Path) -> None:
    """A .keras whose config names os.system as a layer: loading fails, nothing runs."""
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.keras"
    lambda_model_file(tmp_path / "template.keras")
    with zipfile.ZipFile(tmp_path / "template.keras") as template:
        members = {name: template.read(name) for name in template.namelist()}
    config = json.loads(members["config.json"])
    config["config"]["layers"][1] = {
        "module": "os",
        "class_name": "system",
        "config": {"command": f"touch {marker}"},
        "registered_name": "system",
        "name": "evil",
        "inbound_nodes": config["config"]["layers"][1]["inbound_nodes"],
    }
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as crafted:
        for name, data in members.items():
            crafted.writestr(name, data)
    with pytest.raises((TypeError, ValueError)):
        keras.saving.load_model(path, safe_mode=True, compile=False)
    assert not marker.exists()


def test_a_tampered_artifact_is_caught_by_its_manifest_hash(tmp_path: Path) -> None:
    tiny_run = make_tiny_run(tmp_path)
    predictions = tiny_run.run_dir / PREDICTIONS_FILE
    data = bytearray(predictions.read_bytes())
    data[-10] ^= 0x01
    predictions.write_bytes(bytes(data))
    result = CliRunner().invoke(
        app, ["--workspace", str(tiny_run.workspace.root), "report", "tiny"]
    )
    assert result.exit_code == 5, result.output
    assert "predictions.npz does not match the SHA-256" in result.stderr


def test_storage_error_is_raised_for_enospc(tmp_path: Path) -> None:
    # The mapping the full-disk test relies on, without training.
    from deepsight_tf.core.storage import atomic_save_npz

    target = tmp_path / "a.npz"
    atomic_save_npz(target, x=np.zeros(2))

    class FullDisk:
        def __call__(self, handle, **arrays):  # type: ignore[no-untyped-def]
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("deepsight_tf.core.storage.np.savez", FullDisk())
        with pytest.raises(StorageError, match="free some disk space"):
            atomic_save_npz(target, x=np.ones(2))
    np.testing.assert_array_equal(np.load(target)["x"], np.zeros(2))


# --- SIGKILL at random points (slow: each trial starts `deepsight train` twice) -------------

ROOT = Path(__file__).resolve().parents[1]
# 27 steps an epoch, 3 epochs over two phases: long enough to land kills anywhere in it.
KILL_RUN_FLAGS = [
    *("--backbone", "resnet18", "--weights", "none", "--image-size", "16"),
    *("--width-multiplier", "0.0625"),
    *("--batch-size", "4", "--frozen-epochs", "1", "--epochs", "2", "--lr", "0.03"),
    *("--augment", "light", "--seed", "1", "--mva", "0.0", "--deterministic"),
    *("--precision", "float32"),
    "--keep-checkpoints",  # the outcome compares the last phase's end weights
]


def start_train(
    ws: Workspace, run_id: str, flags: list[str], log: Path, worker: list[str] | None = None
):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    entry = (
        [str(ROOT / "tests/fault_worker.py"), *worker, "--"] if worker else ["-m", "deepsight_tf"]
    )
    command = [sys.executable, *entry, "--workspace", str(ws.root), "train", "--run-id", run_id]
    handle = open(log, "w")  # noqa: SIM115 (closed by finish)
    process = subprocess.Popen(
        [*command, *flags], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT
    )
    process.log_handle = handle  # type: ignore[attr-defined]
    return process


def finish(process) -> int:  # type: ignore[no-untyped-def]
    rc = process.wait(timeout=600)
    process.log_handle.close()
    return rc


def wait_for(log: Path, text: str, process, timeout: float = 300.0) -> float:  # type: ignore[no-untyped-def]
    import time

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if text in log.read_text(errors="replace"):
            return time.monotonic()
        if process.poll() is not None:
            raise AssertionError(f"train exited before {text!r}: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"no {text!r} in {log} after {timeout} s")


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(
    prepared: Workspace, tmp_path: Path
) -> None:
    import time

    rng = np.random.default_rng(2026)
    begin = time.monotonic()
    reference_process = start_train(
        prepared, "kill-reference", KILL_RUN_FLAGS, tmp_path / "ref.log"
    )
    train_start = wait_for(tmp_path / "ref.log", "phase 1:", reference_process)
    assert finish(reference_process) == 0, (tmp_path / "ref.log").read_text()
    reference_wall = time.monotonic() - begin
    training_s = time.monotonic() - train_start
    want = outcome(prepared.run_dir("kill-reference"))

    trials: list[dict[str, object]] = []
    steps = 81  # 3 epochs of 27
    plans: list[dict[str, object]] = [
        # Kill once the run has committed a random step (it commits every step here), so the
        # kill lands a step or two later: anywhere, in any phase, mid-write included.
        *(
            {"at_steps": [int(rng.integers(1, steps))], "checkpoint_minutes": "1e-9"}
            for _ in range(4)
        ),
        {
            "at_steps": sorted(int(s) for s in rng.integers(1, steps, 2)),
            "checkpoint_minutes": "1e-9",
        },
        # Epoch-end commits only, killed at a random time: the partial epoch is redone.
        *({"at_time": True, "checkpoint_minutes": "0"} for _ in range(2)),
        # Precise points in the commit protocol.
        {"worker": ["checkpoint", "3"], "checkpoint_minutes": "0"},
        {"worker": ["state", "4"], "checkpoint_minutes": "1e-9"},
    ]
    for i, plan in enumerate(plans):
        run_id = f"kill-{i}"
        flags = [*KILL_RUN_FLAGS, "--checkpoint-minutes", str(plan["checkpoint_minutes"])]
        walls, kill_points = [], []
        attempts = len(plan.get("at_steps", [None]))  # type: ignore[arg-type]
        for attempt in range(attempts):
            log = tmp_path / f"{run_id}-{attempt}.log"
            started = time.monotonic()
            resume = ["--resume"] if attempt else []
            process = start_train(prepared, run_id, [*flags, *resume], log, plan.get("worker"))  # type: ignore[arg-type]
            store = CheckpointStore(prepared.run_dir(run_id) / CHECKPOINTS_DIR)
            delay = None
            if "at_steps" in plan:
                target = plan["at_steps"][attempt]  # type: ignore[index]
                while process.poll() is None:
                    commits = store.commits() if store.state_path.is_file() else []
                    if commits and commits[0].position.step >= target:
                        process.send_signal(signal.SIGKILL)
                        break
                    time.sleep(0.01)
            elif "at_time" in plan:
                training = wait_for(log, "peak lr", process)  # a phase has begun
                delay = float(rng.uniform(0.0, 0.7 * training_s))  # margin for noise
                time.sleep(max(0.0, training + delay - time.monotonic()))
                process.send_signal(signal.SIGKILL)
            rc = finish(process)
            walls.append(time.monotonic() - started)
            assert rc == -signal.SIGKILL, log.read_text()[-2000:]
            commits = store.commits() if store.state_path.is_file() else []
            text = log.read_text(errors="replace")
            kill_points.append(
                {
                    "target_step": plan.get("at_steps", [None] * attempts)[attempt],  # type: ignore[index]
                    "seconds_into_training": None if delay is None else round(delay, 2),
                    "phase": 2 if "phase 2:" in text else 1,
                    "committed": commits[0].position.describe() if commits else "nothing",
                    "committed_step": commits[0].position.step if commits else 0,
                }
            )
        log = tmp_path / f"{run_id}-resume.log"
        started = time.monotonic()
        process = start_train(prepared, run_id, [*flags, "--resume"], log)
        assert finish(process) == 0, log.read_text()[-3000:]
        walls.append(time.monotonic() - started)
        got = outcome(prepared.run_dir(run_id))
        try:
            assert_same_outcome(got, want)
            exact = True
        except AssertionError:
            exact = False
        trials.append(
            {
                "plan": plan,
                "kill_points": kill_points,
                "exact": exact,
                "seconds_lost": round(sum(walls) - reference_wall, 1),
            }
        )
    report = {
        "reference_wall_s": round(reference_wall, 1),
        "training_s": round(training_s, 1),
        "trials": trials,
    }
    print(json.dumps(report, indent=1))
    if os.environ.get("DEEPSIGHT_FAULT_REPORT"):
        Path(os.environ["DEEPSIGHT_FAULT_REPORT"]).write_text(json.dumps(report, indent=1))
    assert all(t["exact"] for t in trials), json.dumps(trials, indent=1)
