"""--progressive-resize: smaller training images first, the full --image-size at the end.

The schedule is tested on its rules (start, ramp, the last quarter at full size, sizes on
the probe's list), the estimate and the budget on planted step costs per size, and a tiny run
on what it fed the network, what it stored, and an exact resume across a change of size.
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from deepsight_tf.cli import app
from deepsight_tf.core.errors import ConfigError, TrainingInterrupted
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.storage import read_json
from deepsight_tf.core.workspace import CONFIG_FILE, HISTORY_FILE, MODEL_FILE, Workspace
from deepsight_tf.model.saving import load_classifier
from deepsight_tf.training import loop, pipeline
from deepsight_tf.training.history import read_history
from deepsight_tf.training.plan import (
    SIZE_STEP,
    PhasePlan,
    epoch_image_sizes,
    plan_phases,
    ramp_sizes,
    resolve_settings,
)
from deepsight_tf.training.timing import (
    BUDGET_MARGIN,
    WRITE_SECONDS,
    StepCosts,
    estimate_run,
    size_to_budget,
)

from support.planted import at_step
from support.resume import assert_same_outcome, outcome, two_phases
from support.separable import tiny


@pytest.mark.parametrize(("start", "final"), [(32, 48), (30, 48), (32, 64), (8, 16), (60, 64)])
@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 7, 11, 14, 40])
def test_the_schedule_starts_small_ends_at_full_size_and_only_grows(
    start: int, final: int, epochs: int
) -> None:
    sizes = epoch_image_sizes(start, final, epochs)
    full = max(1, -(-epochs // 4))  # the last quarter, rounded up, one epoch at least
    assert len(sizes) == epochs
    assert sizes[-full:] == (final,) * full
    assert all(size < final for size in sizes[:-full])
    if epochs > full:
        assert sizes[0] == start
    assert list(sizes) == sorted(sizes)
    assert all(size in (start, final) or size % SIZE_STEP == 0 for size in sizes)
    assert set(sizes) <= set(ramp_sizes(start, final))  # the probe times every one


def test_the_schedule_follows_the_line_from_start_to_full_size() -> None:
    # 11 epochs: 8 below 48 px; the line 32 + 16 * e / 8 floored to a multiple of 8.
    assert epoch_image_sizes(32, 48, 11) == (32,) * 4 + (40,) * 4 + (48,) * 3
    assert epoch_image_sizes(None, 48, 3) == (48, 48, 48)
    assert ramp_sizes(30, 48) == (30, 32, 40, 48)
    assert ramp_sizes(None, 48) == (48,)


@pytest.mark.parametrize("start", [48, 64, 4])
def test_a_start_size_not_below_the_image_size_is_refused(start: int) -> None:
    with pytest.raises(ConfigError, match="--progressive-resize"):
        TrainSettings(image_size=48, progressive_resize=start)


def test_the_ramp_runs_over_both_phases_and_survives_config_json() -> None:
    settings = resolve_settings(
        TrainSettings(
            weights="none", frozen_epochs=1, epochs=3, image_size=16, progressive_resize=8
        )
    )
    head, tune = plan_phases(settings)
    assert (head.image_sizes, tune.image_sizes) == ((8,), (8, 8, 16))
    import json

    assert PhasePlan.from_dict(json.loads(json.dumps(tune.__dict__))) == tune
    plain = plan_phases(resolve_settings(TrainSettings(weights="none", epochs=2)))[0]
    assert plain.image_sizes is None


# A step on 8 px images costs a quarter of one on 16 px ones (planted).
COSTS = StepCosts(per_step={"all": 0.5}, forward=0.002, batch=8, by_size={8: 0.1, 16: 0.4})


def test_the_estimate_costs_each_epoch_at_its_size() -> None:
    settings = resolve_settings(
        TrainSettings(weights="none", epochs=4, image_size=16, progressive_resize=8)
    )
    phases = plan_phases(settings)
    assert phases[0].image_sizes == (8, 8, 8, 16)
    prepared = SimpleNamespace(steps_per_epoch=10)
    estimate = estimate_run(COSTS, prepared, phases, settings, (40, 60))
    validation = 4 * 40 * 0.002
    assert estimate.train_seconds == pytest.approx(10 * (3 * 0.125 + 0.5) + validation)
    assert estimate.seconds_per_step == pytest.approx((3 * 0.125 + 0.5) / 4)  # the mean step
    resumed = estimate_run(COSTS, prepared, phases, settings, (40, 60), steps_done=25)
    assert resumed.train_seconds == pytest.approx(5 * 0.125 + 10 * 0.5 + 1.5 * validation / 4)


@pytest.mark.parametrize("seconds", [60.0, 120.0, 400.0])
def test_a_budget_with_progressive_resizing_is_filled_to_the_step(seconds: float) -> None:
    settings = resolve_settings(
        TrainSettings(weights="none", image_size=16, progressive_resize=8, budget="1h")
    )
    prepared = SimpleNamespace(steps_per_epoch=10)
    epochs, last = size_to_budget(
        COSTS, prepared, plan_phases(settings), settings, (40, 60), seconds
    )
    usable = seconds * (1 - BUDGET_MARGIN) - WRITE_SECONDS

    def total(steps: int) -> float:
        e = -(-steps // 10)
        sized = replace(settings, epochs=e, last_epoch_steps=steps - (e - 1) * 10)
        return estimate_run(COSTS, prepared, plan_phases(sized), sized, (40, 60)).total_seconds

    steps = (epochs - 1) * 10 + last
    assert 1 <= last <= 10
    assert total(steps) <= usable < total(steps + 1)
    # Cheaper early epochs buy more steps than the full size alone would.
    flat = replace(COSTS, by_size=None)
    plain = replace(settings, progressive_resize=None)
    e, k = size_to_budget(flat, prepared, plan_phases(plain), plain, (40, 60), seconds)
    assert (e - 1) * 10 + k < steps


# --- tiny runs ---------------------------------------------------------------------------------


@pytest.mark.slow  # seconds of training each: make test-full runs it
def test_a_run_feeds_each_epoch_its_size_and_stores_the_schedule(
    prepared: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed: dict[int, int] = {}
    original = pipeline.make_train_dataset

    def spy(*args: object, **kwargs: object) -> object:
        batches = original(*args, **kwargs)
        fed[int(kwargs["first_epoch"])] = int(batches.element_spec[0].shape[1])  # type: ignore[arg-type]
        return batches

    monkeypatch.setattr(pipeline, "make_train_dataset", spy)
    settings = tiny(run_id="prog", epochs=4, progressive_resize=8)
    result = loop.train(settings, prepared)
    assert [fed[epoch] for epoch in range(4)] == [8, 8, 8, 16]
    run_dir = Path(result.run_dir)
    config = read_json(run_dir / CONFIG_FILE)
    assert config["phases"][-1]["image_sizes"] == [8, 8, 8, 16]
    assert config["preprocessing"]["image_size"] == 16  # scored and served at full size
    assert [row["image_size"] for row in read_history(run_dir / HISTORY_FILE)] == [8, 8, 8, 16]
    # Trained with an open input; stored, like any run, with its input at the full size.
    assert load_classifier(run_dir / MODEL_FILE).input_shape == (None, 16, 16, 3)
    assert tuple(result.params["input_shape"]) == (16, 16, 3)


@pytest.mark.slow
def test_a_run_interrupted_before_its_size_changes_resumes_exactly(prepared: Workspace) -> None:
    """Head epoch at 8 px, fine-tune at 8 then 16 px; Ctrl-C inside the second 8 px epoch."""
    settings = {"progressive_resize": 8}
    want = outcome(Path(loop.train(two_phases(run_id="prog-ref", **settings), prepared).run_dir))
    assert [row["image_size"] for row in want["history"]] == [8, 8, 16]  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as patch:
        at_step(20, lambda: os.kill(os.getpid(), signal.SIGINT), patch)
        with pytest.raises(TrainingInterrupted):
            loop.train(two_phases(run_id="prog-cut", **settings), prepared)
    result = CliRunner().invoke(
        app, ["--workspace", str(prepared.root), "train", "--run-id", "prog-cut", "--resume"]
    )
    assert result.exit_code == 0, result.output
    assert_same_outcome(outcome(prepared.run_dir("prog-cut")), want)
