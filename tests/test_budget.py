"""--budget: a wall-time budget sized into epochs and last-epoch steps from the step timing.

The sizing is tested on planted step costs (the arithmetic), and a run on planted costs is
checked to take exactly the planned steps, store them in config.json, and resume to the same
bits after an interruption inside its shortened last epoch.
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import tensorflow as tf
from typer.testing import CliRunner

from deepsight_tf.cli import app
from deepsight_tf.core.checks import parse_duration
from deepsight_tf.core.errors import ConfigError, TrainingInterrupted
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.storage import read_json
from deepsight_tf.core.workspace import CONFIG_FILE, HISTORY_FILE, SETTINGS_FILE, Workspace
from deepsight_tf.training import budget, loop
from deepsight_tf.training.history import read_history
from deepsight_tf.training.plan import PhasePlan, plan_phases, resolve_settings
from deepsight_tf.training.schedules import OneCycle
from deepsight_tf.training.timing import (
    BUDGET_MARGIN,
    WRITE_SECONDS,
    StepCosts,
    estimate_run,
    rescaled,
    resize_to_budget,
    size_to_budget,
)

from support.planted import at_step, plant_clock
from support.resume import assert_same_outcome, outcome, two_phases
from support.separable import tiny


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10m", 600), ("1h30m", 5400), ("1h 30m", 5400), ("600s", 600), ("1.5h", 5400), ("15", 900)],
)
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "0m", "m", "-5m"])
def test_a_bad_duration_is_refused_while_parsing_the_settings(text: str) -> None:
    with pytest.raises(ConfigError, match="--budget"):
        TrainSettings(budget=text)


def test_a_shorter_last_epoch_counts_in_the_phase_and_its_schedule() -> None:
    phase = PhasePlan(1, "fine-tune", 3, "all", 0.1, 1.0, last_epoch_steps=4)
    assert [phase.epoch_steps(e, 10) for e in range(3)] == [10, 10, 4]
    assert phase.total_steps(10) == 24
    assert replace(phase, last_epoch_steps=None).total_steps(10) == 30
    assert replace(phase, last_epoch_steps=99).total_steps(10) == 30  # never above an epoch
    # Only the last phase (fine-tuning) is shortened; a head phase keeps whole epochs.
    settings = resolve_settings(
        TrainSettings(
            backbone="resnet18", weights="none", frozen_epochs=1, epochs=3, last_epoch_steps=4
        )
    )
    head, tune = plan_phases(settings)
    assert (head.last_epoch_steps, tune.last_epoch_steps) == (None, 4)


COSTS = StepCosts(per_step={"head": 0.05, "all": 0.5}, forward=0.002, batch=8)


def sized(seconds: float, **overrides: object) -> tuple[list[PhasePlan], TrainSettings]:
    settings = resolve_settings(TrainSettings(backbone="resnet18", weights="none", **overrides))  # type: ignore[arg-type]
    prepared = SimpleNamespace(steps_per_epoch=10)
    epochs, last = size_to_budget(
        planted_costs(settings), prepared, plan_phases(settings), settings, (40, 60), seconds
    )
    settings = replace(settings, epochs=epochs, last_epoch_steps=last)
    return plan_phases(settings), settings


@pytest.mark.parametrize(
    ("seconds", "overrides"),
    [
        (120.0, {}),
        (300.0, {"tta": "flip-shift"}),
        (200.0, {"frozen_epochs": 2, "augment": "light"}),
        (47.0, {}),
    ],
)
def test_the_budget_is_filled_and_one_more_step_would_overrun_it(
    seconds: float, overrides: dict[str, object]
) -> None:
    phases, settings = sized(seconds, **overrides)
    prepared = SimpleNamespace(steps_per_epoch=10)
    usable = seconds * (1 - BUDGET_MARGIN) - WRITE_SECONDS
    planned = estimate_run(COSTS, prepared, phases, settings, (40, 60)).total_seconds
    last = phases[-1]
    steps = last.total_steps(10)
    longer = replace(
        last,
        epochs=(steps + 1 + 9) // 10,
        last_epoch_steps=(steps + 1) - ((steps + 1 + 9) // 10 - 1) * 10,
    )
    assert longer.total_steps(10) == steps + 1
    over = estimate_run(COSTS, prepared, [*phases[:-1], longer], settings, (40, 60)).total_seconds
    assert planned <= usable < over
    assert 1 <= last.last_epoch_steps <= 10  # type: ignore[operator]


def test_test_time_augmentation_leaves_fewer_steps() -> None:
    plain, _ = sized(300.0)
    flipped, _ = sized(300.0, tta="flip-shift")
    assert flipped[-1].total_steps(10) < plain[-1].total_steps(10)


def test_the_weight_average_costs_its_reestimation_its_validation_and_a_second_test() -> None:
    """--ema adds the BatchNorm re-estimation batches and the average's validation pass (at
    the training forward cost) and the test scoring of the candidate not kept (every view)."""
    from deepsight_tf.model.classifier import build_classifier

    model = build_classifier("resnet18", 3, 16, width_multiplier=1 / 16, stem="cifar")
    prepared = SimpleNamespace(steps_per_epoch=10, model=model)
    costs = replace(COSTS, final_forward=0.003)
    plain = resolve_settings(
        TrainSettings(backbone="resnet18", weights="none", epochs=2, tta="flip")
    )
    averaged = replace(plain, ema=0.999)
    phases = plan_phases(plain)
    base = estimate_run(costs, prepared, phases, plain, (40, 60))
    extra = estimate_run(costs, prepared, phases, averaged, (40, 60))
    batches = 10  # 44 batches for BatchNorm momentum 0.9, at most the epoch's 10
    want = (batches * 8 + 40) * 0.002 + 60 * 2 * 0.003  # two views of the test set
    assert extra.train_seconds == base.train_seconds
    assert extra.eval_seconds - base.eval_seconds == pytest.approx(want)


def test_a_budget_too_short_for_a_schedule_says_by_how_much() -> None:
    with pytest.raises(ConfigError, match=r"--budget 1m: .* raise it by \d+ min"):
        sized(12.0, budget="1m")


# --- re-sized in flight, from the pace of the last phase's first epoch -----------------------

BUDGETS = [
    (120.0, {}),
    (300.0, {"tta": "flip-shift"}),
    (200.0, {"frozen_epochs": 2, "augment": "light"}),
    (95.0, {"progressive_resize": 8, "image_size": 16}),
]


def first_epoch_done(
    costs: StepCosts, phases: list[PhasePlan], settings: TrainSettings
) -> tuple[int, float]:
    """Steps taken and seconds gone at the end of the last phase's first epoch, at `costs`."""
    prepared = SimpleNamespace(steps_per_epoch=10)
    done = sum(p.total_steps(10) for p in phases[:-1]) + phases[-1].epoch_steps(0, 10)
    full = estimate_run(costs, prepared, phases, settings, (40, 60)).total_seconds
    rest = estimate_run(costs, prepared, phases, settings, (40, 60), done).total_seconds
    return done, full - rest


def resized(
    seconds: float, phases: list[PhasePlan], settings: TrainSettings, ratio: float
) -> tuple[int, float]:
    """The last phase's steps re-sized after a first epoch that ran at `ratio` times the
    probed cost, and the seconds gone by then."""
    costs = planted_costs(settings)
    done, spent = first_epoch_done(rescaled(costs, ratio), phases, settings)
    prepared = SimpleNamespace(steps_per_epoch=10)
    epochs, last = resize_to_budget(
        rescaled(costs, ratio), prepared, phases, settings, (40, 60), seconds, spent, done
    )
    return (epochs - 1) * 10 + last, spent


def planted_costs(settings: TrainSettings) -> StepCosts:
    if settings.progressive_resize is None:
        return COSTS
    return replace(COSTS, by_size={8: 0.2, 16: 0.5})  # a ramp 8 to 16 px


@pytest.mark.parametrize(("seconds", "overrides"), BUDGETS)
def test_a_run_at_the_probed_pace_keeps_its_schedule_to_the_step(
    seconds: float, overrides: dict[str, object]
) -> None:
    phases, settings = sized(seconds, **overrides)
    steps, _ = resized(seconds, phases, settings, 1.0)
    assert steps == phases[-1].total_steps(10)


@pytest.mark.parametrize(("seconds", "overrides"), BUDGETS)
@pytest.mark.parametrize("ratio", [1.3, 0.8])
def test_the_measured_pace_refills_the_budget_and_one_more_step_would_overrun_it(
    seconds: float, overrides: dict[str, object], ratio: float
) -> None:
    """At 1.3 times the probed cost the rest of the phase is cut, at 0.8 lengthened, to the
    most steps whose estimate at the measured cost fits what the budget has left."""
    phases, settings = sized(seconds, **overrides)
    planned = phases[-1].total_steps(10)
    steps, spent = resized(seconds, phases, settings, ratio)
    assert (steps < planned) if ratio > 1 else (steps > planned)
    costs, prepared = rescaled(planted_costs(settings), ratio), SimpleNamespace(steps_per_epoch=10)
    done, _ = first_epoch_done(costs, phases, settings)
    usable = seconds * (1 - BUDGET_MARGIN) - WRITE_SECONDS - spent

    def rest(total: int) -> float:
        epochs = -(-total // 10)
        again = replace(settings, epochs=epochs, last_epoch_steps=total - (epochs - 1) * 10)
        return estimate_run(
            costs, prepared, plan_phases(again), again, (40, 60), done
        ).total_seconds

    assert rest(steps) <= usable < rest(steps + 1)


def test_a_budget_already_spent_keeps_one_more_step_and_one_cycles_minimum() -> None:
    """Thirty times the probed cost: the first epoch alone (10 steps of 15 s) used the 120 s
    budget. The phase ends after one more step (no fewer than one cycle's minimum, 5 steps at
    pct_start 0.25), overrunning rather than stopping with the rate at its peak."""
    phases, settings = sized(120.0)
    assert resized(120.0, phases, settings, 30.0)[0] == 11
    short = replace(settings, pct_start=0.05)  # one cycle's minimum: 21 steps
    assert resized(120.0, plan_phases(short), short, 30.0)[0] == 21


def test_an_epochs_overhead_counts_once_for_every_epoch_left() -> None:
    phases, settings = sized(120.0)
    prepared = SimpleNamespace(steps_per_epoch=10)
    done = phases[-1].epoch_steps(0, 10) + 3  # 3 steps into the second epoch
    base = estimate_run(COSTS, prepared, phases, settings, (40, 60), done).total_seconds
    heavy = replace(COSTS, epoch_overhead=5.0)
    more = estimate_run(heavy, prepared, phases, settings, (40, 60), done).total_seconds
    assert more - base == pytest.approx(5.0 * (phases[-1].epochs - 1))


def test_an_epoch_corrects_steps_always_and_validation_and_overhead_once_untraced() -> None:
    """COSTS: 0.5 s a step, 2 ms a forward image, 40 validation images (0.08 s as probed)."""
    plan = budget.Budget(
        resolve_settings(TrainSettings(backbone="resnet18", weights="none")), COSTS, (40, 60)
    )
    # The first epoch traced: its steps' pace only (1.2x), forward passes by the same ratio.
    first = budget.EpochPace(80.0, 100, 0.6, 9.0, traced=True)
    costs = plan.corrected(first, "all")
    assert costs.per_step["all"] == pytest.approx(0.6)
    assert costs.forward == pytest.approx(0.002 * 1.2) and costs.epoch_overhead == 0.0
    # An untraced epoch: validation 0.16 s for 40 images is 2x the probed forward pass, and
    # 70 - 100 * 0.6 - 0.16 = 9.84 s went elsewhere.
    second = budget.EpochPace(70.0, 100, 0.6, 0.16, traced=False)
    assert second.overhead == pytest.approx(9.84)
    costs = plan.corrected(second, "all")
    assert costs.forward == pytest.approx(0.004) and costs.epoch_overhead == pytest.approx(9.84)
    assert costs.per_step["head"] == pytest.approx(0.05 * 1.2)
    # A later traced epoch (a new size) keeps the measured validation and overhead; its pace
    # pools with the two epochs before it: (60 + 60 + 30) s of steps probed at 300 * 0.5 s.
    again = plan.corrected(budget.EpochPace(90.0, 100, 0.3, 5.0, traced=True), "all")
    assert again.forward == pytest.approx(0.004) and again.epoch_overhead == pytest.approx(9.84)
    assert again.per_step["all"] == pytest.approx(0.5)


def test_one_stalled_epoch_is_outvoted_and_a_lasting_slowdown_is_followed() -> None:
    """A re-sizing reads the last PACE_WINDOW epochs: their pooled pace, the low median of what
    each took beyond its steps and validation."""
    plan = budget.Budget(
        resolve_settings(TrainSettings(backbone="resnet18", weights="none")), COSTS, (40, 60)
    )

    def epoch(seconds_per_step: float, besides: float) -> budget.EpochPace:
        # 100 steps and 0.08 s of validation (the probed forward pass), nothing traced.
        return budget.EpochPace(
            100 * seconds_per_step + 0.08 + besides, 100, seconds_per_step, 0.08, traced=False
        )

    plan.corrected(epoch(0.5, 1.0), "all")
    early = plan.corrected(epoch(0.5, 31.0), "all")  # a stall in the second epoch measured
    assert early.epoch_overhead == pytest.approx(1.0)  # of two, the lower
    for _ in range(2):  # the stall leaves the window
        plan.corrected(epoch(0.5, 1.0), "all")
    stalled = plan.corrected(epoch(0.5, 43.0), "all")  # 43 s of a stall, once
    assert stalled.epoch_overhead == pytest.approx(1.0)
    assert stalled.per_step["all"] == pytest.approx(0.5)
    # The machine turns 1.3x slower for good: each epoch moves the pace a third of the way.
    slower = [plan.corrected(epoch(0.65, 1.0), "all") for _ in range(budget.PACE_WINDOW)]
    assert [c.per_step["all"] for c in slower] == pytest.approx([0.55, 0.60, 0.65])
    assert [c.epoch_overhead for c in slower] == pytest.approx([1.0, 1.0, 1.0])


# --- a run on planted step costs ---------------------------------------------------------------


@pytest.fixture
def planted_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step costs 1 s as probed, scoring nothing, the command has just started."""
    monkeypatch.setattr(budget, "command_seconds", lambda: 0.0)
    monkeypatch.setattr(
        loop,
        "probe",
        lambda *_: StepCosts(per_step={"all": 1.0, "head": 1.0}, forward=0.0, batch=8),
    )


@pytest.fixture
def planted(planted_probe: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """...and takes 1 s: a budget of 40 s leaves 40 * 0.96 - 10 = 28.4 s, so 28 steps:
    13 + 13 + 2 at 13 steps an epoch, and the pace after the first epoch keeps them."""
    plant_clock(monkeypatch, 1.0)


def test_a_budget_run_takes_the_planned_steps_and_stores_them(
    prepared: Workspace, planted: None
) -> None:
    steps = []
    monitor = type("M", (loop.TrainingMonitor,), {"step": lambda self, *a: steps.append(a)})()
    result = loop.train(tiny(run_id="budget", epochs=1, budget="40s"), prepared, monitor=monitor)
    stored = read_json(Path(result.run_dir) / CONFIG_FILE)
    assert (stored["settings"]["epochs"], stored["settings"]["last_epoch_steps"]) == (3, 2)
    assert stored["phases"][-1]["last_epoch_steps"] == 2
    assert len(steps) == 28 and steps[-1][:2] == (28, 28)
    assert len(read_history(Path(result.run_dir) / HISTORY_FILE)) == 3
    # settings.toml keeps the budget, not what it decided, so the file sizes its run anew.
    recipe = (Path(result.run_dir) / SETTINGS_FILE).read_text()
    assert 'budget = "40s"' in recipe
    assert not {"epochs", "last-epoch-steps"} & {
        line.split(" = ")[0] for line in recipe.splitlines()
    }


@pytest.mark.slow  # two-phase runs; resumes are tested fast in test_faults
def test_a_budget_run_interrupted_in_its_short_epoch_resumes_exactly(
    prepared: Workspace, planted: None
) -> None:
    """Head phase: 13 steps of 1 s, leaving 15.4 s: 15 steps (13 + 2); Ctrl-C after step 27,
    the first of the shortened last epoch."""
    want = outcome(
        Path(loop.train(two_phases(run_id="budget-ref", budget="40s"), prepared).run_dir)
    )
    with pytest.MonkeyPatch.context() as patch:
        at_step(27, lambda: os.kill(os.getpid(), signal.SIGINT), patch)
        with pytest.raises(TrainingInterrupted):
            loop.train(two_phases(run_id="budget-cut", budget="40s"), prepared)
    result = CliRunner().invoke(
        app, ["--workspace", str(prepared.root), "train", "--run-id", "budget-cut", "--resume"]
    )
    assert result.exit_code == 0, result.output
    assert_same_outcome(outcome(prepared.run_dir("budget-cut")), want)
    assert len(want["history"]) == 1 + 2  # type: ignore[arg-type]


def test_a_budget_counts_from_budget_from_when_given(
    prepared: Workspace, planted_probe: None
) -> None:
    """The process has just started (planted), but the caller's clock says 30 of the 40 s are
    gone (as for an experiment's second arm): about 10 s are left, and 10 * 0.96 - 10 s of
    writing leaves no step, so it is refused before anything is written."""
    import time

    late = time.monotonic() - 30.0
    with pytest.raises(ConfigError, match=r"--budget 40s: the \d+ s left leave room for 0 "):
        loop.train(tiny(run_id="budget-late", budget="40s"), prepared, budget_from=late)
    assert not prepared.run_dir("budget-late").exists()


def test_a_run_slower_than_its_probe_is_resized_after_its_first_epoch(
    prepared: Workspace, planted_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probed at 1 s a step, run at 2: the 40 s budget planned 28 steps (13 + 13 + 2); after
    the first epoch's 13 steps 26 s are gone, and 28.4 - 26 = 2.4 s leave one more: 14."""
    plant_clock(monkeypatch, 2.0)
    traced = []  # the schedule's length at each call inside a trace (the rate, weight decay)
    original = OneCycle.__call__

    def spy(self: OneCycle, step: object) -> object:
        if not tf.executing_eagerly():
            traced.append(self.total_steps)
        return original(self, step)

    monkeypatch.setattr(OneCycle, "__call__", spy)
    steps, notes = [], []
    monitor = type("M", (loop.TrainingMonitor,), {"step": lambda self, *a: steps.append(a)})()
    result = loop.train(
        tiny(run_id="budget-slow", epochs=1, budget="40s"),
        prepared,
        monitor=monitor,
        notify=notes.append,
    )
    stored = read_json(Path(result.run_dir) / CONFIG_FILE)
    assert (stored["settings"]["epochs"], stored["settings"]["last_epoch_steps"]) == (2, 1)
    assert (stored["phases"][-1]["epochs"], stored["phases"][-1]["last_epoch_steps"]) == (2, 1)
    assert len(steps) == 14 and steps[-1][:2] == (14, 14)
    assert any("re-sized from 28 to 14 steps" in note for note in notes), notes
    history = read_history(Path(result.run_dir) / HISTORY_FILE)
    assert [row["epoch"] for row in history] == [1, 2] and result.epochs_run == 2
    # The optimizer's one cycle took the new length: after step 14 the rate is its floor
    # (on the planned 28 steps it would still be near the peak).
    cycle = OneCycle(result.phases[-1].peak_lr, 14, pct_start=tiny().pct_start)
    assert history[-1]["lr_end"] == pytest.approx(cycle.final_lr, rel=1e-5)
    # Traced on the planned length only: the step reads the new one from a variable.
    assert traced and set(traced) == {28}


@pytest.mark.slow  # three tiny runs; the budget's resume is also tested above
def test_a_resized_run_interrupted_after_the_resizing_resumes_exactly(
    prepared: Workspace, planted_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 s at 2 s a step, probed at 1: 47 steps planned (47.6 s usable), 23 after the first
    epoch (21.6 s left: 10 more steps); Ctrl-C after step 18, then --resume continues the
    stored 23 steps to the same bits as the run that was not interrupted."""
    plant_clock(monkeypatch, 2.0)
    settings = {"epochs": 1, "budget": "60s", "deterministic": True}
    end = "phase1.end.weights.npz"
    want = outcome(Path(loop.train(tiny(run_id="slow-ref", **settings), prepared).run_dir), end)
    assert len(want["history"]) == 2  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as patch:
        at_step(18, lambda: os.kill(os.getpid(), signal.SIGINT), patch)
        with pytest.raises(TrainingInterrupted):
            loop.train(tiny(run_id="slow-cut", **settings), prepared)
    stored = read_json(prepared.run_dir("slow-cut") / CONFIG_FILE)["settings"]
    assert (stored["epochs"], stored["last_epoch_steps"]) == (2, 10)
    result = CliRunner().invoke(
        app, ["--workspace", str(prepared.root), "train", "--run-id", "slow-cut", "--resume"]
    )
    assert result.exit_code == 0, result.output
    assert_same_outcome(outcome(prepared.run_dir("slow-cut"), end), want)


def test_a_clear_winner_ends_the_timing_after_two_agreeing_rounds() -> None:
    from deepsight_tf.training.step import clear_winner

    assert not clear_winner({"a": [1.0], "b": [2.0]})  # one round is not enough
    assert clear_winner({"a": [1.0, 1.0], "b": [2.0, 1.5]})
    assert not clear_winner({"a": [1.0, 1.0], "b": [2.0, 1.05]})  # the second round is close
    assert not clear_winner({"a": [1.0, 2.0], "b": [2.0, 1.0]})  # the rounds disagree
    assert not clear_winner({"a": [1.0, 1.0]})  # nothing to choose between
