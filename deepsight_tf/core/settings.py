"""Settings of each phase as dataclasses: defaults, help, allowed values, validation.

The one source of truth for every phase's options. Each field carries its help text and its
rule; the command line builds its options from these fields (deepsight_tf/cli/options.py), and
each dataclass checks itself when constructed, so a bad value fails with the flag's name before
any work starts, whether it came from the command line, a Python caller or a stored run.
"""

from __future__ import annotations

import math
import operator
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from deepsight_tf.core.checks import MAX_IMAGE_SIZE, check_image_size, check_name, parse_duration
from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.recipes import DEFAULT_BACKBONE, recipe_default, recipe_for
from deepsight_tf.core.workspace import (
    IMAGENET_TRAIN_ISSUES_FILE,
    METRICS_FILE,
    MODEL_FILE,
    TRAIN_LABEL_ISSUES_FILE,
)

# Vocabularies: the values each choice-valued setting may take.
BACKBONES = (
    "resnet18",
    "resnet50",
    "resnet9",
    "airbench94",
    "airbench93",
    "efficientnet-lite0",
    "efficientnet-lite1",
    "efficientnet-lite2",
)
STEMS = ("cifar", "imagenet")
AUGMENT_PRESETS = ("none", "light", "standard", "strong", "translate")
MIX_MODES = ("none", "cutmix", "mixup")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "one", "mirrored", "multiworker")
INTERPOLATIONS = (
    "bicubic",
    "bilinear",
    "nearest",
    "area",
    "lanczos3",
    "lanczos5",
    "gaussian",
    "mitchellcubic",
)
EXPORT_FORMATS = ("savedmodel", "keras", "onnx")
CAM_METHODS = ("gradcam", "gradcam++", "scorecam", "layercam")
TTA_MODES = ("none", "flip", "flip-shift", "flip-x-shift", "flip-translate")
ANNEALS = ("cos", "linear")
FLIPS = ("random", "alternate")
MAX_SAMPLES_PER_CLASS = 64
# Help panels, in the order --help shows them: a user looks for "the learning rate" or "the
# checkpoints", not through one long list of flags. Each class below names its fields' panels.
DATA, MODEL, SCHEDULE, REGULARISATION = "Data", "Model", "Schedule", "Regularisation"
BUDGET, CHECKPOINTS, OUTPUT = "Budget and precision", "Checkpoints", "Output"
DUPLICATES, INTERPOLATION, HEAT_MAPS = "Duplicates", "Interpolation study", "Heat maps"
FORENSICS, STATISTICS, EXPERIMENT = "Forensics", "Statistics", "Experiment"
PANELS = (DATA, MODEL, SCHEDULE, REGULARISATION, BUDGET, CHECKPOINTS, OUTPUT)
PANELS += (DUPLICATES, INTERPOLATION, HEAT_MAPS, FORENSICS, STATISTICS, EXPERIMENT)
# Every interval's bootstrap: resamples (the --n-boot default) and the error rate (95%).
DEFAULT_N_BOOT = 2000
DEFAULT_ALPHA = 0.05
# The near-duplicate decision (reasons in deepsight_tf/data/duplicates.py, stage 3).
NEAR_CEILING = 0.2  # distance 1 - r at r = 0.8: the most any data set's threshold may be
NEAR_FALSE_MATCH_TAIL = 1e-3  # share of distinct nearest neighbours put below the threshold


def setting(
    default: Any,
    help_text: str,
    *,
    choices: tuple[str, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    cli: bool = True,
) -> Any:
    """A settings field with its help and rule: `choices`, or bounds (ge >=, gt >, le <=, lt <).

    None is always allowed where the default is None (it means "decide for me"). `cli=False`
    keeps a field off the command line. Its help panel comes from its class's `panels`.
    """
    rule = {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt}
    return field(default=default, metadata={"help": help_text, "cli": cli, "panel": None, **rule})


def panels(groups: dict[str, str]) -> Callable[[type], type]:
    """Class decorator (above @dataclass): each listed field's help panel, {panel: "a b c"},
    into its metadata, where --help and the command reference read it."""

    def apply(cls: type) -> type:
        by_name = {f.name: f for f in fields(cls)}
        for panel, names in groups.items():
            if panel not in PANELS or not set(names.split()) <= set(by_name):
                raise TypeError(f"{cls.__name__} panel {panel!r}: {names}")
            for name in names.split():
                metadata = {**by_name[name].metadata, "panel": panel}
                by_name[name].metadata = MappingProxyType(metadata)
        return cls

    return apply


def rule_text(meta: dict[str, Any]) -> str:
    """A field's rule in words: its choices, or its bounds ("> 0 and < 1"); "" when free."""
    if meta.get("choices") is not None:
        return ", ".join(meta["choices"])
    bounds = [(key, meta[key]) for key in _BOUNDS if meta.get(key) is not None]
    return " and ".join(f"{_BOUNDS[key][1]} {limit:g}" for key, limit in bounds)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


_BOUNDS = {
    "ge": (operator.ge, ">="),
    "gt": (operator.gt, ">"),
    "le": (operator.le, "<="),
    "lt": (operator.lt, "<"),
}


def _check_field(name: str, value: Any, meta: dict[str, Any]) -> None:
    """One field's rule; None passes (it means "decide for me" where it is allowed at all)."""
    if value is None:
        return
    flag = flag_name(name)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    bounds = [(key, meta[key]) for key in _BOUNDS if meta.get(key) is not None]
    if not bounds:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{flag} {value!r}: give a finite number")
    if not all(_BOUNDS[key][0](value, limit) for key, limit in bounds):
        raise ConfigError(f"{flag} {value:g}: must be {rule_text(meta)}")


class Settings:
    """Validation shared by the phase settings: each field's rule, then the class's own checks."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            _check_field(f.name, getattr(self, f.name), dict(f.metadata))
        self.check()

    def check(self) -> None:
        """Rules that involve one field's form or several fields (override)."""


@panels({DATA: "source name resize strict force"})
@dataclass
class ObtainSettings(Settings):
    source: str | None = setting(
        None,
        "Local copy: cifar-10-python.tar.gz, cifar-10-batches-py/, an image folder "
        "(train/<class>/, test/<class>/) or an .npz. Default: Keras's CIFAR-10 download.",
    )
    name: str | None = setting(None, "Data set name in the workspace. Default: from the source.")
    resize: int | None = setting(
        None, "Resize every image to NxN pixels (needed for mixed sizes).", ge=1, le=MAX_IMAGE_SIZE
    )
    strict: bool = setting(False, "Refuse unreadable files instead of skipping them.")
    force: bool = setting(False, "Read the source again even if the stored copy is current.")

    def check(self) -> None:
        if self.name is not None:
            check_name(self.name, "--name")


@panels(
    {
        DATA: "dataset val_size seed",
        DUPLICATES: "drop_leaks near_threshold neighbours",
        INTERPOLATION: "image_size interp_sample",
    }
)
@dataclass
class ScrubSettings(Settings):
    dataset: str | None = setting(None, "Data set in the workspace. Default: the only one.")
    val_size: float = setting(
        0.1, "Fraction of the training split held out for validation (stratified).", gt=0, lt=1
    )
    seed: int = setting(42, "Seed of the validation split and the interpolation sample.", ge=0)
    drop_leaks: bool = setting(False, "Drop training images that duplicate a test image.")
    image_size: int = setting(
        64,
        "Training size that the interpolation study upsamples to (64: the upsampled ResNet "
        "recipe's; the default recipe trains at the data's own 32 px).",
    )
    interp_sample: int = setting(512, "Images measured in the interpolation study.", ge=1)
    # Near duplicates (see deepsight_tf/data/duplicates.py, stage 3): how close two distinct
    # images of a class come depends on the images (0.4 apart in CIFAR-10, under 0.1 in 8x8
    # handwriting), so the default threshold is set on the data set itself, never above the
    # 0.2 set on photos (r >= 0.8; planted copies of CIFAR-10 photos stay below 0.19).
    near_threshold: float | None = setting(
        None,
        "Near-duplicate distance (1 - aligned structure correlation). Default: calibrated on "
        "the data set: the distance that a log-normal fit to its images' nearest same-class "
        f"neighbours puts 1 in {round(1 / NEAR_FALSE_MATCH_TAIL):,} of them below, at most "
        f"{NEAR_CEILING:g} (the level set on photos, which CIFAR-10 gets).",
        gt=0,
        lt=1,
    )
    # Candidates per image from each of the two indexes (layout, spectrum), all verified: 3 + 3
    # find 97% of copies planted among CIFAR-10 (bench/duplicates.py); 5 from the layout index
    # alone found 88%, the shifted copies worst. Verification is most of the run time.
    neighbours: int = setting(3, "Near-duplicate candidates per image from each index.", ge=1)

    def check(self) -> None:
        check_image_size(self.image_size)
        if self.dataset is not None:
            check_name(self.dataset, "--dataset")


@panels({DATA: "dataset hypotheses", OUTPUT: "samples_per_class seed"})
@dataclass
class ExploreSettings(Settings):
    dataset: str | None = setting(None, "Data set in the workspace. Default: the only one.")
    hypotheses: str | None = setting(
        None,
        'JSON file with "groups" (name to list of classes), "comparisons" (pairs of groups) '
        'and "confusable_pairs" (pairs of classes). Default: the CIFAR-10 hypotheses when the '
        "data set has those classes.",
    )
    samples_per_class: int = setting(
        8, "Images per class in the sample grid.", ge=1, le=MAX_SAMPLES_PER_CLASS
    )
    seed: int = setting(0, "Seed of the sample grid.", ge=0)

    def check(self) -> None:
        if self.dataset is not None:
            check_name(self.dataset, "--dataset")


_UNFREEZE = re.compile(r"^(all|\s*\d+\s*(,\s*\d+\s*)*)$")


@panels(
    {
        DATA: "dataset image_size interpolation class_weights focus_pairs focus_factor drop_train "
        "drop_top seed max_train_images",
        MODEL: "backbone weights stem width_multiplier zero_init_residual unfreeze",
        SCHEDULE: "progressive_resize batch_size frozen_epochs epochs optimizer lr "
        "backbone_lr_mult momentum bias_lr_mult ema lookahead pct_start anneal div_factor "
        "final_div_factor",
        REGULARISATION: "dropout augment flip mix mix_alpha label_smoothing weight_decay",
        BUDGET: "budget last_epoch_steps precision deterministic estimate strategy",
        CHECKPOINTS: "resume resume_or_start checkpoint_minutes keep_checkpoints",
        OUTPUT: "run_id mva tta",
    }
)
@dataclass
class TrainSettings(Settings):
    dataset: str | None = setting(None, "Data set in the workspace. Default: the only one.")
    run_id: str | None = setting(None, "Run name (a folder under runs/). Default: backbone-time.")
    backbone: str = setting(
        DEFAULT_BACKBONE,
        "The network to train. Settings left unset take its recipe (core/recipes.py).",
        choices=BACKBONES,
    )
    weights: str = setting(
        "none", "imagenet, none, a KerasHub preset folder, a .weights.h5 file or a run folder."
    )
    stem: str | None = setting(
        None,
        "cifar (3x3, no pooling) or imagenet (ResNet: 7x7 and max-pool; EfficientNet's only "
        "stem). Default: cifar at <= 32 px from scratch where the backbone has it, else imagenet.",
        choices=STEMS,
    )
    image_size: int = setting(
        None, "Pixels fed to the network (CIFAR-10 is 32 px). " + recipe_default("image_size")
    )
    progressive_resize: int | None = setting(
        None,
        "Progressive resizing: the first epoch at this many pixels, growing in steps of 8 to "
        "--image-size, which the last quarter of the epochs keeps. Default: off.",
    )
    interpolation: str | None = setting(
        None,
        "Resize method. Default: the one scrub's interpolation study selected.",
        choices=INTERPOLATIONS,
    )
    width_multiplier: float = setting(
        1.0, "Channel width factor (<1: a narrow network; from scratch only).", gt=0, le=4
    )
    dropout: float = setting(
        None, "Dropout rate before the head. " + recipe_default("dropout"), ge=0, lt=1
    )
    zero_init_residual: bool = setting(
        False,
        "Start each residual block as the identity: the BatchNorm gamma ending its branch at "
        "zero (from scratch only).",
    )
    augment: str = setting(
        None, "Pixel augmentation preset. " + recipe_default("augment"), choices=AUGMENT_PRESETS
    )
    flip: str = setting(
        None,
        "The preset's mirror: random per image, or alternate (each image mirrored on every "
        "other epoch, airbench's). " + recipe_default("flip"),
        choices=FLIPS,
    )
    mix: str = setting("none", "Batch mixing.", choices=MIX_MODES)
    mix_alpha: float = setting(1.0, "Beta(alpha, alpha) of the mixing ratio.", gt=0)
    label_smoothing: float = setting(
        None, "Label smoothing epsilon. " + recipe_default("label_smoothing"), ge=0, lt=1
    )
    class_weights: str = setting(
        "none", f"none, balanced, or a per-class recall JSON / an earlier run's {METRICS_FILE}."
    )
    focus_pairs: str | None = setting(
        None, "Oversample confusable classes: cat:dog,automobile:truck, or @FILE."
    )
    focus_factor: float = setting(2.0, "How much more often focus classes are drawn.", ge=1)
    drop_train: str | None = setting(
        None,
        "Leave these training images out: a CSV with an index column (interpret's "
        f"{TRAIN_LABEL_ISSUES_FILE}, most doubtful first).",
    )
    drop_top: int | None = setting(
        None, "With --drop-train: only the file's first N rows. Default: all.", ge=1
    )
    batch_size: int = setting(
        None, "Images per step (per replica). " + recipe_default("batch_size"), ge=1
    )
    frozen_epochs: int | None = setting(
        None, "Head-only epochs (phase 1). Default: 1 with pretrained weights, else 0.", ge=0
    )
    epochs: int = setting(4, "Epochs with stages unfrozen (phase 2).", ge=0)
    budget: str | None = setting(
        None,
        "Wall time for the whole command, e.g. 10m, 1h30m, 600s: sets --epochs (and the steps "
        "of the last epoch) from the pre-flight step timing.",
    )
    last_epoch_steps: int | None = setting(
        None,
        "Steps in the last epoch of the last phase. --budget sets it; given by hand (with "
        "--epochs), it repeats a run's exact schedule, as the run's settings file does.",
        ge=1,
    )
    unfreeze: str | None = setting(
        None,
        "Stages to unfreeze: 3,4 or all. Default: all from scratch; pretrained, the backbone's "
        "last stages (ResNets 3,4; EfficientNet-Lite 4-8).",
    )
    optimizer: str = setting("sgd", "sgd (Nesterov momentum) or adamw.", choices=OPTIMIZERS)
    lr: float | None = setting(
        None,
        "One-cycle peak rate of the head. Default: from scratch 1.5 for airbench94 (its "
        "recipe), else 0.4; 0.05 pretrained (both measured on CIFAR-10).",
        gt=0,
    )
    backbone_lr_mult: float | None = setting(
        None, "Backbone rate as a multiple of --lr. Default: 1 from scratch, 0.1 pretrained.", ge=0
    )
    weight_decay: float = setting(
        None, "Decoupled weight decay. " + recipe_default("weight_decay"), ge=0
    )
    momentum: float | None = setting(
        None,
        "SGD momentum (AdamW's beta_1), held constant; unset, it is cycled against the rate, "
        "0.95 at the lowest rates to 0.85 at the peak. " + recipe_default("momentum"),
        ge=0,
        lt=1,
    )
    bias_lr_mult: float = setting(
        None,
        "BatchNorm offsets learn at this multiple of their layer's rate (weight decay "
        "unscaled). " + recipe_default("bias_lr_mult"),
        gt=0,
    )
    ema: float = setting(
        0.0,
        "Decay per step of an exponential moving average of the last phase's weights (0: "
        "off; e.g. 0.999). Its BatchNorm statistics re-estimated, it is kept when its "
        "validation macro-F1 beats the best epoch's; both are scored on the test set.",
        ge=0,
        lt=1,
    )
    lookahead: bool = setting(
        None,
        "airbench's lookahead in the last phase: every 5 steps an average of the weights "
        "moves towards them and they jump to it, the average's pull rising over the schedule; "
        "the run ends on the average. " + recipe_default("lookahead"),
    )
    pct_start: float = setting(
        None,
        "Fraction of each phase spent warming up. " + recipe_default("pct_start"),
        gt=0,
        lt=1,
    )
    anneal: str = setting(
        None,
        "Shape of the one-cycle rate: cos (fastai's) or linear. " + recipe_default("anneal"),
        choices=ANNEALS,
    )
    div_factor: float = setting(
        None, "The one-cycle rate starts at --lr / this. " + recipe_default("div_factor"), gt=0
    )
    final_div_factor: float = setting(
        None,
        "The one-cycle rate ends at its starting rate / this. "
        + recipe_default("final_div_factor"),
        gt=0,
    )
    precision: str = setting(
        "auto",
        "Float policy. auto: mixed_float16 on a capable GPU; on a CPU with native bfloat16 "
        "the faster of float32 and mixed_bfloat16 on the run's own step; else float32.",
        choices=PRECISIONS,
    )
    mva: float = setting(
        0.65,
        "Minimum Viable Accuracy on the test set; below it the exit code is 8 (0.65 is a "
        "CIFAR-10 target: set your data set's).",
        ge=0,
        le=1,
    )
    seed: int = setting(42, "Random seed.", ge=0)
    deterministic: bool = setting(False, "Deterministic ops (slower; exact resume).")
    resume: bool = setting(
        False,
        "Continue the unfinished run --run-id names, with its settings; a run id with no run "
        "is an error (never a new run).",
    )
    resume_or_start: bool = setting(
        False,
        "Continue the run --run-id names if it exists, else start it: for scripts that rerun "
        "(make all).",
    )
    # Commit the training state every this many minutes within an epoch (and at every epoch
    # end); a killed run loses at most this much. 0: at epoch ends only.
    checkpoint_minutes: float = setting(
        5.0, "Save the training state this often within an epoch (0: epoch ends only).", ge=0
    )
    keep_checkpoints: bool = setting(
        False,
        f"Keep checkpoints/ once the run is complete (default: dropped; {MODEL_FILE} holds "
        "the best epoch).",
    )
    estimate: bool = setting(
        True,
        "Time a few training steps before the first epoch and print the run's expected time.",
    )
    tta: str = setting(
        None,
        "Test-time augmentation for the final scoring: flip averages each image with its "
        "mirror; flip-shift adds four 1/16-side shifts; flip-x-shift the shifts' mirrors "
        "too (10 views); flip-translate airbench's 6 weighted views. " + recipe_default("tta"),
        choices=TTA_MODES,
    )
    max_train_images: int | None = setting(
        None, "Train on a stratified subset of this many images (quick runs).", ge=1
    )
    strategy: str = setting(
        "auto", "tf.distribute: one device, mirrored (GPUs) or multiworker.", choices=STRATEGIES
    )

    def __post_init__(self) -> None:
        """Settings left unset take the backbone's recipe, then every rule is checked."""
        for name, value in recipe_for(self.backbone, self.weights).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        super().__post_init__()

    def check(self) -> None:
        check_image_size(self.image_size)
        if self.progressive_resize is not None:
            check_image_size(self.progressive_resize, "--progressive-resize")
        if self.progressive_resize is not None and self.progressive_resize >= self.image_size:
            raise ConfigError(
                f"--progressive-resize {self.progressive_resize} must be below --image-size "
                f"{self.image_size} (it is the size the run starts at); lower it or drop it"
            )
        if self.budget is not None:
            parse_duration(self.budget)
        if self.unfreeze is not None and not _UNFREEZE.match(self.unfreeze):
            raise ConfigError(
                f"--unfreeze {self.unfreeze!r}: give stage numbers such as 3,4, or all"
            )
        for name, flag in ((self.run_id, "--run-id"), (self.dataset, "--dataset")):
            if name is not None:
                check_name(name, flag)
        if self.ema and self.lookahead:
            raise ConfigError("--ema and --lookahead are two weight averages: choose one")
        if self.drop_top is not None and self.drop_train is None:
            raise ConfigError("--drop-top counts rows of --drop-train: give --drop-train FILE")
        check_continuation(self.resume, self.resume_or_start)


def check_continuation(resume: bool, resume_or_start: bool) -> None:
    """--resume only continues; --resume-or-start may also start: one of them, not both."""
    if resume and resume_or_start:
        raise ConfigError(
            "--resume and --resume-or-start: give one (--resume refuses a name with nothing "
            "to continue, --resume-or-start starts it)"
        )


EXPERIMENT_ARMS = (
    "baseline",
    "cutmix",
    "mixup",
    "focus-pairs",
    "class-weights",
    "label-smoothing",
    "resnet50",
    "clean-labels",
    "clean-labels-imagenet",
    "ema",
    "zero-init",
    "progressive",
    "transfer",
)


@panels({EXPERIMENT: "arms baseline_seeds n_boot issues_from resume resume_or_start"})
@dataclass
class ExperimentSettings(Settings):
    name: str = setting("", "Experiment name (a folder under experiments/).", cli=False)
    arms: str = setting(
        "baseline,cutmix,mixup,focus-pairs,class-weights,resnet50",
        f"Arms, comma-separated, from: {', '.join(EXPERIMENT_ARMS)}, or any train setting "
        "changed alone, SETTING=VALUE (e.g. lookahead=false, label-smoothing=0, "
        "flip=random). focus-pairs and class-weights are derived from the baseline's "
        "validation predictions, clean-labels leaves out a run's training label issues "
        "(--issues-from), clean-labels-imagenet the ones that the same run's interpret found "
        "with ImageNet features. transfer trains EfficientNet-Lite0 from its ImageNet weights "
        "with deepsight's transfer defaults in place of the baseline's recipe; resnet50 "
        "swaps in ResNet-50, with its recipe where the baseline has its own backbone's.",
    )
    baseline_seeds: int = setting(
        2, "Baseline runs with different seeds: their spread is the run-to-run noise.", ge=1
    )
    n_boot: int = setting(DEFAULT_N_BOOT, "Paired bootstrap resamples for every interval.", ge=100)
    issues_from: str | None = setting(
        None,
        f"Run whose interpret/{TRAIN_LABEL_ISSUES_FILE} the clean-labels arm leaves out (and "
        f"whose {IMAGENET_TRAIN_ISSUES_FILE} clean-labels-imagenet does). "
        "Default: the baseline's (run `deepsight interpret NAME-baseline` once it is trained).",
    )
    resume: bool = setting(
        False,
        "Continue the experiment NAME (finished arms kept, an interrupted one resumed); a name "
        "with no experiment is an error (never a new one).",
    )
    resume_or_start: bool = setting(
        False,
        "Continue the experiment NAME if it exists, else start it: for scripts that rerun "
        "(make experiment).",
    )

    def check(self) -> None:
        if self.name:
            check_name(self.name, "experiment name")
        if self.issues_from is not None:
            check_name(self.issues_from, "--issues-from")
            if not {"clean-labels", "clean-labels-imagenet"} & set(self.arm_list()):
                raise ConfigError(
                    f"--issues-from {self.issues_from}: only the clean-labels arms read it; add "
                    "clean-labels or clean-labels-imagenet to --arms or drop --issues-from"
                )
        check_continuation(self.resume, self.resume_or_start)
        arms = self.arm_list()
        for arm in arms:
            if "=" in arm:
                setting_arm(arm)
        unknown = [a for a in arms if a not in EXPERIMENT_ARMS and "=" not in a]
        if unknown or "baseline" not in arms:
            raise ConfigError(
                f"--arms {self.arms!r}: give baseline and any of {', '.join(EXPERIMENT_ARMS)}"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            )

    def arm_list(self) -> list[str]:
        return list(dict.fromkeys(a.strip() for a in self.arms.split(",") if a.strip()))


# Settings an arm may not change: they name or drive the run rather than define what it trains.
_NOT_ARMS = frozenset({"run_id", "resume", "dataset", "budget", "estimate", "last_epoch_steps"})


def setting_arm(arm: str) -> dict[str, Any]:
    """A SETTING=VALUE experiment arm as the train settings it changes: the value read as the
    setting's type (true/false for a flag, none for a setting whose default is None) and
    checked by the setting's own rule."""
    name, _, text = arm.partition("=")
    field_name = name.strip().removeprefix("--").replace("-", "_")
    found = {f.name: f for f in fields(TrainSettings)}
    if field_name not in found or field_name in _NOT_ARMS or not found[field_name].metadata["cli"]:
        raise ConfigError(f"--arms {arm!r}: {name!r} is not a train setting an arm can change")
    default = found[field_name].default
    hint = typing.get_type_hints(TrainSettings)[field_name]
    kind = ([t for t in typing.get_args(hint) if t is not type(None)] or [hint])[0]
    text = text.strip()
    value: Any
    if text in (found[field_name].metadata.get("choices") or ()):
        value = text  # tta=none is the choice "none", not "unset"
    elif text.lower() == "none" and default is None:
        value = None  # "decide for me": the backbone's recipe, or the rule the help names
    elif kind is bool:
        if text.lower() not in ("true", "false"):
            raise ConfigError(f"--arms {arm!r}: {flag_name(field_name)} takes true or false")
        value = text.lower() == "true"
    elif kind in (int, float):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"--arms {arm!r}: {flag_name(field_name)} takes a number") from None
        if kind is int:
            if value != int(value):
                raise ConfigError(f"--arms {arm!r}: {flag_name(field_name)} takes a whole number")
            value = int(value)
    else:
        value = text
    meta = dict(found[field_name].metadata)
    _check_field(field_name, value, meta)
    return {field_name: value}


@panels(
    {
        HEAT_MAPS: "methods max_images sanity_images grid_per_class",
        FORENSICS: "context_images train_issues imagenet_evidence ensemble_with",
        STATISTICS: "n_boot seed",
    }
)
@dataclass
class InterpretSettings(Settings):
    run_id: str = setting("", "Run to interpret (a folder under runs/).", cli=False)
    methods: str = setting(
        ",".join(CAM_METHODS), f"CAM methods, comma-separated: {', '.join(CAM_METHODS)}."
    )
    max_images: int = setting(
        100, "Test images for CAM maps, faithfulness and the sanity check.", ge=1
    )
    context_images: int = setting(5000, "Test images for the occlusion test (0: all).", ge=0)
    sanity_images: int = setting(16, "Test images for the randomisation sanity check.", ge=1)
    grid_per_class: int = setting(4, "CAM grid: correct and wrong images per class.", ge=0)
    n_boot: int = setting(
        DEFAULT_N_BOOT, "Bootstrap resamples for every confidence interval.", ge=100
    )
    seed: int = setting(0, "Random seed.", ge=0)
    train_issues: bool = setting(
        True,
        "Label issues in the training images too, from K-fold linear probes on the run's "
        "features (a forward pass over the training set).",
    )
    imagenet_evidence: bool = setting(
        True,
        "Label evidence from a model that never saw the labels: K-fold linear probes on "
        "ImageNet features (EfficientNet-Lite0), for the test and the training images. The "
        "features' forward pass (about 2 minutes on 2 cores for CIFAR-10) is cached in the "
        "workspace for every later interpret on the same data set.",
    )
    ensemble_with: str = setting(
        "",
        "Another run on the same data set (a different network, say): the test label issues "
        "are ranked by the mean of the two runs' test probabilities, an ensemble whose blind "
        "spots are not one model's (on label flips planted in CIFAR-10 it found more than "
        "either run alone: docs/results.md).",
    )

    def check(self) -> None:
        if self.ensemble_with:
            check_name(self.ensemble_with, "--ensemble-with")
            if self.ensemble_with == self.run_id:
                raise ConfigError(
                    f"--ensemble-with {self.ensemble_with}: that is the run being interpreted; "
                    "name another run"
                )
        if self.run_id:
            check_name(self.run_id, "run id")
        methods = self.method_list()
        unknown = [m for m in methods if m not in CAM_METHODS]
        if unknown or not methods:
            choices = ", ".join(CAM_METHODS)
            raise ConfigError(
                f"--methods {self.methods!r}: unknown {unknown}; choose from {choices}"
            )

    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]
