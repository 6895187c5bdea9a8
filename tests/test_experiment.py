"""deepsight experiment: verdicts from paired intervals on planted predictions, the plan,
and an interrupted experiment that resumes without retraining what was done."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from deepsight_tf.core.errors import ConfigError, DataError, PrerequisiteError, TrainingInterrupted
from deepsight_tf.core.manifest import DROPPED_INPUT
from deepsight_tf.core.settings import ExperimentSettings, TrainSettings
from deepsight_tf.core.settings_file import settings_from_file
from deepsight_tf.core.storage import read_json, sha256_file
from deepsight_tf.core.workspace import DROPPED_TRAIN_FILE, PLAN_FILE, REPORT_JSON, Workspace
from deepsight_tf.diagnose.comparison import compare_arms, pair_confusion, verdict
from deepsight_tf.diagnose.experiment import SCHEMA as EXPERIMENT_SCHEMA
from deepsight_tf.diagnose.experiment import (
    ExperimentResult,
    _baseline_schedule,
    epochs_for_steps,
    load_experiment_report,
    plan_arms,
    run_experiment,
    shares_baseline_schedule,
)
from deepsight_tf.reporting.experiment_page import experiment_page
from deepsight_tf.training.data import dropped_indices
from deepsight_tf.training.record import RunRecord

from support.planted import at_step
from support.separable import separable_workspace, tiny

NAMES = ["cat", "dog", "ship", "truck"]


def planted(seed: int = 0):
    """A baseline with 30% errors, half of them cat<->dog swaps; arms built from it."""
    rng = np.random.default_rng(seed)
    n = 2000
    labels = rng.integers(0, 4, n)
    base = labels.copy()
    wrong = rng.choice(n, 600, replace=False)
    base[wrong] = (labels[wrong] + rng.integers(1, 4, len(wrong))) % 4
    cats_dogs = np.flatnonzero(labels < 2)[:300]
    base[cats_dogs] = 1 - labels[cats_dogs]
    better = base.copy()
    fixed = np.flatnonzero(base != labels)[::2]
    better[fixed] = labels[fixed]  # half of all errors corrected, many cat/dog among them
    worse = base.copy()
    broken = np.flatnonzero(base == labels)[:300]
    worse[broken] = (labels[broken] + 2) % 4  # 300 right answers made wrong, never cat<->dog
    same = base.copy()
    same[rng.choice(n, 10, replace=False)] = rng.integers(0, 4, 10)
    seed_run = base.copy()
    moved = rng.choice(n, 20, replace=False)
    seed_run[moved] = labels[moved]  # another seed: a few more right
    return labels, base, {"better": better, "worse": worse, "same": same}, [seed_run]


def test_verdicts_come_from_the_paired_intervals_and_the_seed_noise() -> None:
    labels, base, arms, seeds = planted()
    result = compare_arms(labels, base, arms, seeds, NAMES, [("cat", "dog")], n_boot=400)
    verdicts = {name: arm.verdict for name, arm in result.arms.items()}
    assert verdicts == {"better": "helps", "worse": "hurts", "same": "inconclusive"}
    better = result.arms["better"]
    assert better.accuracy.change == pytest.approx(
        (arms["better"] == labels).mean() - (base == labels).mean()
    )
    low, high = better.accuracy.ci
    assert low <= better.accuracy.change <= high
    # cat/dog confusion falls with "better" (a lower rate is the improvement), not with "worse".
    assert better.pairs["cat/dog"].verdict == "helps"
    assert result.arms["worse"].pairs["cat/dog"].change == pytest.approx(0.0)
    noise = (seeds[0] == labels).mean() - (base == labels).mean()
    assert noise > 0 and result.noise.accuracy == pytest.approx(noise)


def test_a_change_smaller_than_the_seed_noise_is_inconclusive() -> None:
    assert verdict(0.001, 0.01, 0.005, noise=0.0) == "helps"
    assert verdict(0.001, 0.01, 0.005, noise=0.006) == "inconclusive"
    assert verdict(-0.03, -0.01, -0.02, noise=0.0, better="lower") == "helps"
    assert verdict(-0.03, 0.01, -0.02, noise=0.0) == "inconclusive"


def test_pair_confusion_counts_both_directions() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    predicted = np.array([1, 0, 0, 2, 1])
    assert pair_confusion(labels, predicted, 0, 1) == pytest.approx(2 / 4)


def test_plan_names_every_arm_and_refuses_unknown_ones() -> None:
    settings = ExperimentSettings(
        name="e", arms="baseline,cutmix,resnet50,ema,zero-init,progressive", baseline_seeds=2
    )
    arms = plan_arms(settings, tiny(seed=5))
    assert [(a.name, a.run_id, a.changes) for a in arms] == [
        ("baseline", "e-baseline", {}),
        ("baseline-seed2", "e-baseline-seed2", {"seed": 6}),
        ("cutmix", "e-cutmix", {"mix": "cutmix"}),
        ("resnet50", "e-resnet50", {"backbone": "resnet50"}),
        ("ema", "e-ema", {"ema": 0.999}),
        ("zero-init", "e-zero-init", {"zero_init_residual": True}),
        ("progressive", "e-progressive", {"progressive_resize": 8}),  # 16 px: two thirds, 8 px
    ]
    with pytest.raises(ConfigError, match="unknown: cutmx"):
        ExperimentSettings(name="e", arms="baseline,cutmx")
    with pytest.raises(ConfigError, match="give baseline"):
        ExperimentSettings(name="e", arms="cutmix")


def test_the_resnet50_arm_takes_its_recipe_where_the_baseline_has_its_own() -> None:
    plan = ExperimentSettings(name="n", arms="baseline,resnet50", baseline_seeds=1)
    (arm,) = plan_arms(plan, TrainSettings(budget="10m", label_smoothing=0.1))[1:]
    swapped = replace(TrainSettings(budget="10m", label_smoothing=0.1), **arm.changes)
    # airbench94's recipe gives way to the ResNets' (64 px, batch 128, the rate by the
    # weights), but the label smoothing the baseline was given stays.
    assert (swapped.backbone, swapped.image_size, swapped.batch_size, swapped.lr) == (
        "resnet50",
        64,
        128,
        None,
    )
    assert swapped.label_smoothing == 0.1 and not swapped.lookahead
    assert "label_smoothing" not in arm.changes and "budget" not in arm.changes


def test_arms_that_cannot_train_or_change_nothing_are_refused_before_any_training() -> None:
    recipe = TrainSettings(budget="10m")  # airbench94: no residual blocks, lookahead on
    for arms, message in [
        ("baseline,zero-init", "no residual blocks"),
        ("baseline,lr=none", "already trains with that"),  # none: the recipe's 1.5 again
        ("baseline,flip=alternate", "already trains with that"),
    ]:
        with pytest.raises(ConfigError, match=message):
            plan_arms(ExperimentSettings(name="r", arms=arms, baseline_seeds=1), recipe)
    # The ema arm is one weight average in place of the other; backbone=X brings X's recipe.
    plan = ExperimentSettings(name="r", arms="baseline,ema,backbone=resnet9", baseline_seeds=1)
    ema, resnet9 = plan_arms(plan, recipe)[1:]
    assert ema.changes == {"ema": 0.999, "lookahead": False}
    swapped = replace(recipe, **resnet9.changes)
    assert (swapped.backbone, swapped.image_size, swapped.batch_size, swapped.lr) == (
        "resnet9",
        32,
        128,
        None,
    )


def test_the_transfer_arm_is_deepsights_transfer_defaults_on_the_experiments_data() -> None:
    """Against airbench94's recipe: Lite0 from ImageNet with every recipe setting at the default
    `deepsight train --backbone efficientnet-lite0 --weights imagenet` has, while the seed,
    budget and precision stay the experiment's; it is sized by a probe of its own."""
    root = Path(__file__).resolve().parents[1]
    recipe = settings_from_file(
        root / "assets/recipes/airbench94.toml", TrainSettings, budget="10m", seed=3
    )
    plan = ExperimentSettings(name="t", arms="baseline,transfer", baseline_seeds=1)
    (arm,) = plan_arms(plan, recipe)[1:]
    assert arm.run_id == "t-transfer"
    assert replace(recipe, **arm.changes) == TrainSettings(
        backbone="efficientnet-lite0", weights="imagenet", budget="10m", seed=3
    )
    assert {"seed", "budget", "precision"}.isdisjoint(arm.changes)
    assert arm.changes["image_size"] == 96 and arm.changes["lookahead"] is False
    assert not shares_baseline_schedule(arm)
    # without a budget both arms train the experiment's epochs
    (arm,) = plan_arms(plan, replace(recipe, budget=None, epochs=2))[1:]
    assert "epochs" not in arm.changes


def test_a_setting_arm_changes_that_setting_alone_read_as_its_type() -> None:
    settings = ExperimentSettings(
        name="a",
        arms="baseline,lookahead=true,label-smoothing=0,flip=random,momentum=none,batch-size=512",
        baseline_seeds=1,
    )
    arms = plan_arms(settings, tiny(label_smoothing=0.2, momentum=0.9, flip="alternate"))
    assert [(a.name, a.run_id, a.changes) for a in arms[1:]] == [
        ("lookahead=true", "a-lookahead-true", {"lookahead": True}),
        ("label-smoothing=0", "a-label-smoothing-0", {"label_smoothing": 0.0}),
        ("flip=random", "a-flip-random", {"flip": "random"}),
        ("momentum=none", "a-momentum-none", {"momentum": None}),
        ("batch-size=512", "a-batch-size-512", {"batch_size": 512}),
    ]
    assert not shares_baseline_schedule(arms[-1]) and shares_baseline_schedule(arms[1])
    bad = {
        "flip=sideways": "choose one of random, alternate",
        "label-smoothing=1.5": "must be >= 0 and < 1",
        "lookahead=maybe": "true or false",
        "batch-size=0.5": "whole number",
        "colour=red": "not a train setting",
        "run-id=x": "not a train setting",
    }
    for arm, says in bad.items():
        with pytest.raises(ConfigError, match=says):
            ExperimentSettings(name="a", arms=f"baseline,{arm}")


@pytest.mark.slow  # 40 s: keeps `make test` under 15 minutes; `make test-full` runs it
def test_an_interrupted_experiment_resumes_and_compares(tmp_path, monkeypatch) -> None:
    ws = separable_workspace(tmp_path)
    base = tiny(epochs=2, checkpoint_minutes=0)
    settings = ExperimentSettings(
        name="e", arms="baseline,class-weights", baseline_seeds=2, n_boot=200
    )
    # Ctrl-C during the third arm (after 2 x 26 steps of the baselines, 5 into class-weights).
    at_step(26 * 2 + 5, lambda: os.kill(os.getpid(), signal.SIGINT), monkeypatch)
    with pytest.raises(TrainingInterrupted):
        run_experiment(settings, base, ws)
    monkeypatch.undo()
    plan = read_json(ws.experiment_dir("e") / PLAN_FILE)
    assert [(a["name"], a["status"]) for a in plan["arms"]] == [
        ("baseline", "done"),
        ("baseline-seed2", "done"),
        ("class-weights", "running"),
    ]
    assert ws.run_dir("e-class-weights").is_dir()  # interrupted mid-run: resumed below
    baseline_model = ws.run_dir("e-baseline") / "model.keras"
    before = baseline_model.stat().st_mtime_ns
    with pytest.raises(ConfigError, match="pass --resume to continue it"):
        run_experiment(settings, base, ws)  # the same name again is no new experiment
    settings = replace(settings, resume=True)
    result = run_experiment(settings, base, ws)
    assert baseline_model.stat().st_mtime_ns == before  # done arms are not trained again
    assert [a.status for a in result.arms] == ["done"] * 3
    weights = result.arms[2].changes["class_weights"]
    assert weights.endswith("baseline_val_recall.json")
    assert set(result.comparison.arms) == {"class-weights"}
    arm = result.comparison.arms["class-weights"]
    assert arm.verdict in {"helps", "hurts", "inconclusive"}
    stored = read_json(ws.experiment_dir("e") / REPORT_JSON)
    assert stored["name"] == "e" and stored["schema"] == EXPERIMENT_SCHEMA
    back = load_experiment_report(ws, "e")  # the typed record, field for field
    assert back == result
    del stored["schema"]  # written before versions were: version 0
    assert ExperimentResult.from_dict(stored).schema == 0
    page = Path(experiment_page(ws, "e")).read_text()
    verdict = arm.verdict
    assert 'id="arms"' in page and "class-weights" in page and f"badge {verdict}" in page
    assert f"{arm.macro_f1.change:+.4f}" in page
    # The same name with other train settings is refused, not mixed in.
    with pytest.raises(ConfigError, match="other train settings"):
        run_experiment(settings, tiny(epochs=3), ws)


@pytest.mark.slow  # seconds of training each: make test-full runs it
def test_with_a_budget_the_seed_reruns_take_the_baselines_schedule(tmp_path, monkeypatch) -> None:
    """The baseline is sized by --budget (planted: 1 s a step, 40 s: about 27 steps, as the
    arm's own clock runs from its start); its rerun with the next seed is given that schedule,
    not a budget of its own."""
    from deepsight_tf.training import loop
    from deepsight_tf.training.timing import StepCosts

    from support.planted import plant_clock

    plant_clock(monkeypatch, 1.0)  # each arm's steps take what the probe said
    monkeypatch.setattr(
        loop, "probe", lambda *_: StepCosts(per_step={"all": 1.0}, forward=0.0, batch=8)
    )
    ws = separable_workspace(tmp_path)
    settings = ExperimentSettings(name="b", arms="baseline", baseline_seeds=2, n_boot=100)
    result = run_experiment(settings, tiny(epochs=1, budget="40s"), ws)
    stored = {
        arm.name: read_json(ws.run_dir(arm.run_id) / "config.json")["settings"]
        for arm in result.arms
    }
    base, rerun = stored["baseline"], stored["baseline-seed2"]
    assert base["budget"] == "40s" and base["last_epoch_steps"] is not None
    schedule = (base["epochs"], base["last_epoch_steps"])
    assert (rerun["epochs"], rerun["last_epoch_steps"], rerun["budget"]) == (*schedule, None)
    assert rerun["seed"] == base["seed"] + 1


def test_only_arms_that_change_the_step_get_a_schedule_of_their_own() -> None:
    settings = ExperimentSettings(
        name="e", arms="baseline,cutmix,class-weights,resnet50,progressive", baseline_seeds=2
    )
    shared = {a.name: shares_baseline_schedule(a) for a in plan_arms(settings, tiny())}
    assert shared == {
        "baseline": False,
        "baseline-seed2": True,
        "cutmix": True,
        "class-weights": True,
        "resnet50": False,  # a ResNet-50 step costs more: its own probe sizes it
        "progressive": False,  # smaller images first: cheaper steps, more of them
    }


def test_drop_train_reads_the_first_rows_of_a_ranked_index_csv(tmp_path) -> None:
    path = tmp_path / "issues.csv"
    path.write_text("index,label\n7,cat\n3,dog\n7,cat\n12,ship\n")
    assert dropped_indices(path, None, 20).tolist() == [3, 7, 12]
    assert dropped_indices(path, 2, 20).tolist() == [3, 7]
    with pytest.raises(DataError, match=r"index 12 is outside the 10 stored"):
        dropped_indices(path, None, 10)
    path.write_text("row,label\n7,cat\n")
    with pytest.raises(DataError, match="no 'index' column"):
        dropped_indices(path, None, 20)
    path.write_text("index\nseven\n")
    with pytest.raises(DataError, match="non-integer"):
        dropped_indices(path, None, 20)
    with pytest.raises(ConfigError, match="no such file"):
        dropped_indices(tmp_path / "absent.csv", None, 20)
    with pytest.raises(ConfigError, match="--drop-top counts rows of --drop-train"):
        tiny(drop_top=5)


@pytest.mark.slow  # three arms trained; reading --drop-train lists is tested fast above
def test_clean_labels_leaves_out_the_flagged_training_images(tmp_path, monkeypatch) -> None:
    """Each clean arm trains on the baseline's split without the images its list flagged (the
    run's probes' list, the ImageNet probes' list); a flagged validation image stays in
    validation; a missing issues file fails before any training."""
    from deepsight_tf.data.scrub_artifacts import load_split

    ws = separable_workspace(tmp_path)
    settings = ExperimentSettings(
        name="c",
        arms="baseline,clean-labels,clean-labels-imagenet",
        baseline_seeds=1,
        issues_from="src",
        n_boot=100,
    )
    with pytest.raises(PrerequisiteError, match="--issues-from src: no run 'src'"):
        run_experiment(settings, tiny(epochs=1), ws)
    assert not ws.run_dir("c-baseline").exists()
    split = load_split(ws, "rgb")
    flagged = [int(i) for i in split.train[[5, 0, 9, 2]]] + [int(split.val[0])]
    source = ws.interpret_dir("src") / "train_label_issues.csv"
    source.parent.mkdir(parents=True)
    source.write_text("index,given\n" + "".join(f"{i},x\n" for i in flagged))
    imagenet = ws.interpret_dir("src") / "train_label_issues_imagenet.csv"
    imagenet.write_text("index,given\n" + "".join(f"{i},x\n" for i in split.train[[7, 8]]))
    result = run_experiment(settings, tiny(epochs=1), ws)
    copy = ws.experiment_dir("c") / DROPPED_TRAIN_FILE
    assert copy.read_bytes() == source.read_bytes()
    assert result.arms[1].changes == {"drop_train": str(copy)}
    imagenet_copy = ws.experiment_dir("c") / "dropped_train_imagenet.csv"
    assert imagenet_copy.read_bytes() == imagenet.read_bytes()
    assert result.arms[2].changes == {"drop_train": str(imagenet_copy)}
    images = {name: score.train_images for name, score in result.scores.items()}
    assert images == {
        "baseline": len(split.train),
        "clean-labels": len(split.train) - 4,
        "clean-labels-imagenet": len(split.train) - 2,
    }
    predictions = np.load(ws.run_dir("c-clean-labels") / "predictions.npz")
    assert predictions["val_indices"].tolist() == list(split.val)  # validation untouched
    manifest = read_json(ws.run_dir("c-clean-labels") / "manifest.json")
    assert manifest["inputs"][DROPPED_INPUT]["sha256"] == sha256_file(copy)
    # Under a budget the clean arm takes the baseline's optimizer steps, in its own (shorter)
    # epochs: planted, a baseline of 3 epochs of 8-image batches, the last of 2 steps.
    baseline = tiny(epochs=1, batch_size=8)
    per_epoch = len(split.train) // 8
    planted = {"epochs": 3, "last_epoch_steps": 2}
    monkeypatch.setattr(RunRecord, "settings", property(lambda self: replace(baseline, **planted)))
    schedule = _baseline_schedule(ws, "c-baseline", baseline, result.arms[1])
    ours = (len(split.train) - 4) // 8
    assert schedule["budget"] is None
    assert (schedule["epochs"] - 1) * ours + (schedule["last_epoch_steps"] or ours) == (
        2 * per_epoch + 2
    )


def test_epochs_for_steps_makes_exactly_the_steps_asked() -> None:
    assert epochs_for_steps(585, 40) == (15, 25)  # 14 x 40 + 25
    assert epochs_for_steps(80, 40) == (2, None)  # whole epochs
    assert epochs_for_steps(3, 40) == (1, 3)
    for total in range(1, 200):
        epochs, last = epochs_for_steps(total, 7)
        assert (epochs - 1) * 7 + (last or 7) == total and 1 <= (last or 7) <= 7
    with pytest.raises(ValueError, match="must be > 0"):
        epochs_for_steps(0, 7)


def test_the_imagenet_clean_arm_needs_that_list_before_any_training(tmp_path) -> None:
    """The run's own list is there, the ImageNet one is not: refused before a step, naming
    the interpret that writes it."""
    ws = Workspace(tmp_path / "ws")
    folder = ws.interpret_dir("src")
    folder.mkdir(parents=True)
    (folder / "train_label_issues.csv").write_text("index,given\n3,x\n")
    settings = ExperimentSettings(
        name="c", arms="baseline,clean-labels,clean-labels-imagenet", issues_from="src"
    )
    with pytest.raises(PrerequisiteError, match=r"train_label_issues_imagenet\.csv is missing"):
        run_experiment(settings, tiny(epochs=1), ws)
    assert not ws.run_dir("c-baseline").exists()
