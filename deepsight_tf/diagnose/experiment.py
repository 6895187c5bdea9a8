"""`deepsight experiment`: named interventions against a baseline, measured.

Every arm is an ordinary run (runs/<experiment>-<arm>/) of the same data split, seed and
settings (with --budget: the same wall time each) but for the arm's own change; the
baseline runs again with other seeds to measure the run-to-run noise. plan.json records the
arms, their flags and run ids; `--resume` continues it, skipping finished arms and resuming
an interrupted one (a name with no experiment is refused, never started). The comparison
(report.json) holds, per arm, the paired changes against the baseline on the shared test set
and a verdict each (comparison.py).

With --budget the baseline is sized to it; its reruns and every arm whose change leaves the
step's cost alone take the baseline's sized schedule (its epochs and steps), so that neither
the seeds' spread nor an arm's change holds the probe's noise (how fast the machine was that
minute). Arms that change the step (resnet50) are sized by their own probe to the same budget.
The arms' derived flags come from the baseline's validation predictions, never from the test
set they are judged on: focus-pairs oversamples its three most-confused validation pairs,
class-weights weighs classes by 1 / validation recall; clean-labels leaves out the training
images a run's interpret flagged as label issues (train_label_issues.csv, copied into the
experiment when the arm starts), clean-labels-imagenet those that the same interpret flagged
from ImageNet features, evidence that never saw the labels (train_label_issues_imagenet.csv):
two lists, one baseline, the same seed noise.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.errors import (
    ConfigError,
    PrerequisiteError,
    StaleArtifactError,
    short_list,
)
from deepsight_tf.core.manifest import now_iso
from deepsight_tf.core.progress import Notify, TrainingMonitor
from deepsight_tf.core.recipes import recipe_for
from deepsight_tf.core.records import from_versioned_json, read_record
from deepsight_tf.core.settings import (
    MODEL,
    REGULARISATION,
    SCHEDULE,
    ExperimentSettings,
    TrainSettings,
    setting_arm,
)
from deepsight_tf.core.storage import atomic_write_bytes, atomic_write_json, read_json
from deepsight_tf.core.workspace import (
    BASELINE_RECALL_FILE,
    DROPPED_TRAIN_FILE,
    DROPPED_TRAIN_IMAGENET_FILE,
    IMAGENET_TRAIN_ISSUES_FILE,
    PLAN_FILE,
    REPORT_JSON,
    TRAIN_LABEL_ISSUES_FILE,
    Workspace,
)
from deepsight_tf.diagnose.comparison import ArmComparison, compare_arms
from deepsight_tf.diagnose.evaluation import most_confused_pairs
from deepsight_tf.training.plan import progressive_start
from deepsight_tf.training.record import RunRecord

FOCUS_PAIRS = 3
# Each clean arm: the issues file of the --issues-from run it leaves out, and its copy here.
CLEAN_ARMS = {
    "clean-labels": (TRAIN_LABEL_ISSUES_FILE, DROPPED_TRAIN_FILE),
    "clean-labels-imagenet": (IMAGENET_TRAIN_ISSUES_FILE, DROPPED_TRAIN_IMAGENET_FILE),
}

# The change each named arm makes to the baseline's settings (derived arms filled later).
ARM_CHANGES: dict[str, dict[str, Any]] = {
    "baseline": {},
    "cutmix": {"mix": "cutmix"},
    "mixup": {"mix": "mixup"},
    "focus-pairs": {},  # focus_pairs: the baseline's most-confused validation pairs
    "class-weights": {},  # class_weights: 1 / the baseline's validation recall
    "label-smoothing": {"label_smoothing": 0.1},
    "resnet50": {},  # backbone: resnet50, with its recipe where the baseline has its own
    "clean-labels": {},  # drop_train: a run's training label issues (--issues-from)
    "clean-labels-imagenet": {},  # drop_train: the same run's list from ImageNet features
    "ema": {"ema": 0.999, "lookahead": False},  # one weight average in place of the other
    "zero-init": {"zero_init_residual": True},
    "progressive": {},  # progressive_resize: two thirds of the baseline's image size
    "transfer": {},  # the baseline's recipe undone, then TRANSFER: see transfer_changes
}
# The transfer arm's network. The recipe it undoes: every setting of the Model, Schedule and
# Regularisation panels, the image size and the test-time views (the data, seed, budget,
# precision and the epochs stay the experiment's: without a budget both arms train as long).
TRANSFER = {"backbone": "efficientnet-lite0", "weights": "imagenet"}
RECIPE_PANELS = (MODEL, SCHEDULE, REGULARISATION)
RECIPE_FIELDS = ("image_size", "tta")
DERIVED = ("focus-pairs", "class-weights", *CLEAN_ARMS)
# Changes that make a step, or the final scoring, cost more or less: with --budget such an arm
# is sized by its own probe (its change includes what the budget buys); every other arm takes
# the baseline's sized schedule (the same steps), so that the probe's noise (the machine's
# speed that minute) is not part of the arm's change.
OWN_SCHEDULE = (
    "backbone",
    "image_size",
    "width_multiplier",
    "batch_size",
    "progressive_resize",
    "tta",
    "weights",
    "unfreeze",
    "frozen_epochs",
    "precision",
)


SCHEMA = 1  # the layout of the experiment's report.json


@dataclass
class Arm:
    name: str
    run_id: str
    changes: dict[str, Any]
    status: str = "planned"  # planned, running (started, maybe interrupted), done


@dataclass(frozen=True)
class ArmScore:
    """An arm's run as its metrics.json records it."""

    accuracy: float
    macro_f1: float
    epochs: int
    duration_s: float
    train_images: int


@dataclass
class ExperimentResult:
    """The experiment's report.json (`SCHEMA`: its layout's version; none: version 0)."""

    name: str
    folder: str
    arms: list[Arm]
    comparison: ArmComparison
    scores: dict[str, ArmScore]  # arm -> its run's scores
    duration_s: float
    started: str
    files: list[str] = field(default_factory=list)
    schema: int = SCHEMA

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentResult:
        return from_versioned_json(cls, data, SCHEMA, "experiment report")


def load_experiment_report(workspace: Workspace, name: str) -> ExperimentResult:
    """experiments/<name>/report.json, or the error that names the command rewriting it."""
    path = workspace.experiment_dir(name) / REPORT_JSON
    if not path.is_file():
        raise PrerequisiteError(f"{path}: missing; run `deepsight experiment {name}` first")
    return read_record(path, ExperimentResult.from_dict, f"deepsight experiment {name} --resume")


def plan_arms(settings: ExperimentSettings, base: TrainSettings) -> list[Arm]:
    """The baseline, its reruns with the next seeds, then each other arm in the given order."""
    name = settings.name
    arms = [Arm("baseline", f"{name}-baseline", {})]
    for i in range(1, settings.baseline_seeds):
        arm = f"baseline-seed{i + 1}"
        arms.append(Arm(arm, f"{name}-{arm}", {"seed": base.seed + i}))
    arms += [
        Arm(arm, f"{name}-{arm_slug(arm)}", _checked(arm, base, _changes(arm, base)))
        for arm in settings.arm_list()
        if arm != "baseline"
    ]
    return arms


def _checked(arm: str, base: TrainSettings, changes: dict[str, Any]) -> dict[str, Any]:
    """An arm that trains at all, and differs from the baseline: refused before anything
    trains otherwise (a late failure would cost the arms already trained)."""
    from deepsight_tf.model.backbones import get_backbone_spec

    if arm == "zero-init" and not get_backbone_spec(base.backbone).residual_end_batchnorms:
        raise ConfigError(
            f"--arms zero-init: {base.backbone} has no residual blocks; drop the arm or train "
            "a ResNet (--backbone resnet18, resnet9)"
        )
    if arm in DERIVED:
        return changes  # filled from the baseline's run later
    changes = {k: v for k, v in changes.items() if getattr(base, k) != v}
    try:
        changed = replace(base, **changes)
    except ConfigError as exc:
        raise ConfigError(f"--arms {arm}: {exc}") from None
    if changed == base:
        raise ConfigError(
            f"--arms {arm}: the baseline already trains with that (its backbone's recipe "
            "decides what a setting left unset is); give a value that differs"
        )
    return changes


def arm_slug(arm: str) -> str:
    """An arm's part of its run id: a SETTING=VALUE arm as SETTING-VALUE (a folder name)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", arm.replace("=", "-"))


def _changes(arm: str, base: TrainSettings) -> dict[str, Any]:
    """An arm's changes to the baseline's settings that need no baseline run."""
    if "=" in arm:
        changes = setting_arm(arm)
        if "backbone" in changes or "weights" in changes:  # the recipe follows the network
            return backbone_changes(base, **changes)
        return changes
    if arm == "progressive":
        return {"progressive_resize": progressive_start(base.image_size)}
    if arm == "transfer":
        return transfer_changes(base)
    if arm == "resnet50":
        return backbone_changes(base, backbone="resnet50")
    return dict(ARM_CHANGES[arm])


def backbone_changes(
    base: TrainSettings, backbone: str | None = None, weights: str | None = None
) -> dict[str, Any]:
    """Another network or start in the baseline's place: each setting the baseline holds at
    its own recipe's value takes the new one's (airbench94's batch 1024 at a rate of 1.5 is
    no recipe for a ResNet-50; from a run's weights the pretrained rate rule holds); a
    setting the baseline holds at another value keeps it."""
    backbone, weights = backbone or base.backbone, weights or base.weights
    own = recipe_for(base.backbone, base.weights)
    new = recipe_for(backbone, weights)
    changes: dict[str, Any] = {"backbone": backbone, "weights": weights}
    changes = {k: v for k, v in changes.items() if getattr(base, k) != v}
    for name in sorted(own.keys() | new.keys()):
        if getattr(base, name) == own.get(name) and own.get(name) != new.get(name):
            changes[name] = new.get(name)  # None: decided with the weights (the rate)
    return changes


def transfer_changes(base: TrainSettings) -> dict[str, Any]:
    """ImageNet transfer against the baseline's recipe: TRANSFER with every other recipe
    setting at the default `deepsight train` gives it (those that differ from the baseline's)."""
    fresh = TrainSettings(**TRANSFER)  # the transfer backbone's own recipe filled in
    wanted = {
        f.name: getattr(fresh, f.name)
        for f in fields(TrainSettings)
        if (f.metadata.get("panel") in RECIPE_PANELS or f.name in RECIPE_FIELDS)
        and f.name != "epochs"
    }
    return {name: value for name, value in wanted.items() if getattr(base, name) != value}


def run_experiment(
    settings: ExperimentSettings,
    base: TrainSettings,
    workspace: Workspace,
    notify: Notify | None = None,
    monitor: Callable[[str], TrainingMonitor | None] | None = None,
) -> ExperimentResult:
    """Train every arm that is not done yet, then compare them all with the baseline."""
    from deepsight_tf.training.loop import train

    if not settings.name:
        raise ConfigError("name the experiment: deepsight experiment NAME")
    folder = workspace.experiment_dir(settings.name)
    arms = plan_arms(settings, base)
    started, start = now_iso(), time.perf_counter()
    with workspace.lock(f"experiment-{settings.name}"):
        stored = _continuation(settings, base, workspace)
        for name in CLEAN_ARMS:  # fail before training anything
            if name in settings.arm_list() and settings.issues_from:
                _issues_file(workspace, settings.issues_from, name)
        for arm in arms:
            _refuse_foreign(workspace, arm, stored, settings.name)
            done = _finished(workspace, arm.run_id)
            if arm.name in CLEAN_ARMS:
                arm.changes = _clean_labels(
                    workspace,
                    settings.issues_from or arms[0].run_id,
                    folder,
                    arm.name,
                    arm.name in stored,
                )
            elif arm.name in DERIVED:
                arm.changes = _derived_changes(arm.name, workspace, arms[0].run_id, folder)
            if base.budget and shares_baseline_schedule(arm):
                arm.changes.update(_baseline_schedule(workspace, arms[0].run_id, base, arm))
            if arm.name in stored and stored[arm.name] != arm.changes:
                raise ConfigError(
                    f"{folder / PLAN_FILE}: arm {arm.name} was planned with {stored[arm.name]}, "
                    f"now {arm.changes}; use another experiment name"
                )
            if not done:
                arm.status = "running"
                _write_plan(folder, settings, base, arms)
                if notify:
                    notify(f"experiment {settings.name}: arm {arm.name} (run {arm.run_id})")
                run_settings = replace(base, run_id=arm.run_id, resume_or_start=True, **arm.changes)
                train(
                    run_settings,
                    workspace,
                    notify=notify,
                    explicit={"run_id", "resume_or_start"},
                    monitor=monitor(arm.name) if monitor else None,
                    budget_from=time.monotonic(),  # each arm its own --budget
                )
            arm.status = "done"
            _write_plan(folder, settings, base, arms)
        comparison, scores = _compare(workspace, arms, settings)
        result = ExperimentResult(
            name=settings.name,
            folder=str(folder),
            arms=list(arms),
            comparison=comparison,
            scores=scores,
            duration_s=round(time.perf_counter() - start, 1),
            started=started,
            files=[PLAN_FILE, REPORT_JSON],
        )
        atomic_write_json(folder / REPORT_JSON, result)
    return result


def shares_baseline_schedule(arm: Arm) -> bool:
    """With --budget: does the arm train the baseline's sized schedule (its change leaves the
    step's cost alone), or is it sized by a probe of its own (OWN_SCHEDULE)?"""
    return arm.name != "baseline" and not set(arm.changes) & set(OWN_SCHEDULE)


def _finished(workspace: Workspace, run_id: str) -> bool:
    try:
        RunRecord.load(workspace, run_id)
    except PrerequisiteError:
        return False
    return True


def _continuation(
    settings: ExperimentSettings, base: TrainSettings, workspace: Workspace
) -> dict[str, dict[str, Any]]:
    """The arms an earlier invocation of this experiment started, with their changes ({}: a
    new experiment). `resume` only ever continues: a name with no experiment is an error
    that lists the experiments, never a new one; an experiment whose arms hold work is
    continued only with `resume` or `resume_or_start`, and only with the same train settings.
    A plan whose arms hold no work yet (refused, or killed before a commit) starts over."""
    from deepsight_tf.training.continuation import holds_work

    path = workspace.experiment_dir(settings.name) / PLAN_FILE
    plan = _read_plan(path) if path.is_file() else {}
    arms = [a for a in plan.get("arms", []) if a.get("status") != "planned"]
    done = [a for a in arms if holds_work(workspace.run_dir(str(a.get("run_id"))))]
    if settings.resume and not done:
        raise PrerequisiteError(
            f"--resume: no experiment '{settings.name}' to continue in "
            f"{path.parent.parent} (experiments: {short_list(workspace.experiments())}); check "
            "the name, or drop --resume to start it"
        )
    if not done:
        return {}
    if not (settings.resume or settings.resume_or_start):
        raise ConfigError(
            f"experiment {settings.name} exists at {path.parent} ({len(done)} of "
            f"{len(plan['arms'])} arms begun); pass --resume to continue it or choose another name"
        )
    if plan.get("base") != _base_document(base):
        raise ConfigError(
            f"{path}: this experiment ran with other train settings; repeat them or use "
            "another experiment name"
        )
    return {str(arm["name"]): arm.get("changes") for arm in arms}


def _read_plan(path: Path) -> dict[str, Any]:
    try:
        plan = read_json(path)
        if not isinstance(plan, dict) or not isinstance(plan.get("arms", []), list):
            raise ValueError("not a deepsight plan")
        if not all(isinstance(arm, dict) for arm in plan.get("arms", [])):
            raise ValueError("an arm is not a JSON object")
    except (OSError, ValueError) as exc:
        raise StaleArtifactError(
            f"{path} is unreadable ({exc}); move the experiment folder away or use another "
            "experiment name"
        ) from exc
    return plan


def _refuse_foreign(
    workspace: Workspace, arm: Arm, stored: dict[str, dict[str, Any]], name: str
) -> None:
    """An arm's run id held by a run that this experiment did not start (trained by hand,
    or by another experiment's plan) is never taken as the arm's result."""
    from deepsight_tf.training.continuation import holds_work

    if arm.name not in stored and holds_work(workspace.run_dir(arm.run_id)):
        raise ConfigError(
            f"run {arm.run_id} exists but experiment {name} did not train it; choose another "
            "experiment name"
        )


def _base_document(base: TrainSettings) -> dict[str, Any]:
    continuation = ("run_id", "resume", "resume_or_start")
    return {k: v for k, v in asdict(base).items() if k not in continuation}


def _write_plan(
    folder: Any, settings: ExperimentSettings, base: TrainSettings, arms: list[Arm]
) -> None:
    atomic_write_json(
        folder / PLAN_FILE,
        {
            "name": settings.name,
            "arms": [asdict(a) for a in arms],
            "baseline_seeds": settings.baseline_seeds,
            "base": _base_document(base),
        },
    )


def _baseline_schedule(
    workspace: Workspace, baseline: str, base: TrainSettings, arm: Arm
) -> dict[str, Any]:
    """The baseline's optimizer steps as --budget sized them, for an arm that shares its step
    (its reruns with other seeds, the clean-labels arms): their difference from the baseline is
    then the arm's change alone, not also a probe's. An arm that trains on fewer images (a
    clean-labels arm) has shorter epochs, so it takes more of them to the same steps."""
    from deepsight_tf.training.data import training_data
    from deepsight_tf.training.pipeline import steps_per_epoch

    record = RunRecord.load(workspace, baseline)
    stored = record.settings
    schedule = {
        "budget": None,
        "epochs": stored.epochs,
        "last_epoch_steps": stored.last_epoch_steps,
    }
    if "drop_train" not in arm.changes or record.metrics.train_images is None:
        return schedule
    images = len(training_data(replace(base, **arm.changes), workspace).train_indices)
    ours, theirs = (
        steps_per_epoch(n, stored.batch_size) for n in (images, record.metrics.train_images)
    )
    total = (stored.epochs - 1) * theirs + min(stored.last_epoch_steps or theirs, theirs)
    epochs, last = epochs_for_steps(total, ours)
    return {**schedule, "epochs": epochs, "last_epoch_steps": last}


def epochs_for_steps(total: int, steps_per_epoch: int) -> tuple[int, int | None]:
    """Epochs of `steps_per_epoch` that make `total` optimizer steps, and the last epoch's
    steps (None: a whole epoch)."""
    if total <= 0 or steps_per_epoch <= 0:
        raise ValueError(
            f"total and steps_per_epoch must be > 0. Received: {total}, {steps_per_epoch}"
        )
    epochs = -(-total // steps_per_epoch)
    last = total - (epochs - 1) * steps_per_epoch
    return epochs, None if last == steps_per_epoch else last


def _issues_file(workspace: Workspace, run_id: str, arm: str) -> Path:
    path = workspace.interpret_dir(run_id) / CLEAN_ARMS[arm][0]
    if not workspace.run_dir(run_id).is_dir():
        runs = workspace.runs_dir()
        issues = sorted(p.parent.parent.name for p in runs.glob(f"*/*/{CLEAN_ARMS[arm][0]}"))
        raise PrerequisiteError(
            f"--issues-from {run_id}: no run '{run_id}' in {runs} (runs with "
            f"{CLEAN_ARMS[arm][0]}: {short_list(issues)}); check the id"
        )
    if not path.is_file():
        extra = " with --imagenet-evidence" if arm == "clean-labels-imagenet" else ""
        raise PrerequisiteError(
            f"{path} is missing: the {arm} arm leaves out run {run_id}'s training label "
            f"issues; run `deepsight interpret {run_id}`{extra} first (or name another run "
            "with --issues-from)"
        )
    return path


def _clean_labels(
    workspace: Workspace, source: str, folder: Path, arm: str, started: bool
) -> dict[str, Any]:
    """A clean arm: the baseline's settings without the training images that run `source`
    flagged as label issues (CLEAN_ARMS: which list). The list is copied into the experiment
    once the arm starts, so a resumed arm leaves out the same images."""
    copy = folder / CLEAN_ARMS[arm][1]
    if not (started and copy.is_file()):
        atomic_write_bytes(copy, _issues_file(workspace, source, arm).read_bytes())
    return {"drop_train": str(copy)}


def _derived_changes(arm: str, workspace: Workspace, baseline: str, folder: Any) -> dict[str, Any]:
    """focus-pairs and class-weights from the baseline's validation predictions."""
    record = RunRecord.load(workspace, baseline)
    predictions = record.predictions()
    labels, predicted = predictions["val_labels"], predictions["val_probs"].argmax(axis=1)
    names = record.class_names
    k = len(names)
    if arm == "focus-pairs":
        confusion = np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
        pairs = most_confused_pairs(confusion, names, top=FOCUS_PAIRS)
        chosen = [f"{p.a}:{p.b}" for p in pairs if p.count > 0]
        if not chosen:
            raise ConfigError(
                f"run {baseline} confuses no pair of classes on validation; drop focus-pairs"
            )
        return {"focus_pairs": ",".join(chosen)}
    recalls = {
        name: float((predicted[labels == c] == c).mean()) if (labels == c).any() else 1.0
        for c, name in enumerate(names)
    }
    atomic_write_json(folder / BASELINE_RECALL_FILE, recalls)
    return {"class_weights": str(folder / BASELINE_RECALL_FILE)}


def _compare(
    workspace: Workspace, arms: list[Arm], settings: ExperimentSettings
) -> tuple[ArmComparison, dict[str, ArmScore]]:
    """Each arm's test predictions against the baseline's, with the seeds as noise."""
    from deepsight_tf.data.explore_artifacts import load_hypotheses

    records = {arm.name: RunRecord.load(workspace, arm.run_id) for arm in arms}
    predictions = {name: r.predictions() for name, r in records.items()}
    labels = predictions["baseline"]["test_labels"]
    for name, p in predictions.items():
        if not np.array_equal(p["test_labels"], labels):
            raise ConfigError(f"arm {name} was scored on other test images than the baseline")
    predicted = {name: p["test_probs"].argmax(axis=1) for name, p in predictions.items()}
    names = records["baseline"].class_names
    try:
        pairs = load_hypotheses(workspace, records["baseline"].dataset).confusable_pairs
    except PrerequisiteError:
        pairs = []
    seeds = [predicted[a.name] for a in arms if a.name.startswith("baseline-seed")]
    others = {a.name: predicted[a.name] for a in arms if not a.name.startswith("baseline")}
    comparison = compare_arms(
        labels, predicted["baseline"], others, seeds, names, pairs, n_boot=settings.n_boot
    )
    scores = {
        name: ArmScore(
            accuracy=record.metrics.test.accuracy,
            macro_f1=record.metrics.test.macro_f1,
            epochs=record.metrics.epochs_run or 0,
            duration_s=record.metrics.duration_s,
            train_images=record.metrics.train_images or 0,
        )
        for name, record in records.items()
    }
    return comparison, scores
