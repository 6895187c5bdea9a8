"""What a run will do: its settings resolved against the weights, and its training phases."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.inputs import read_input_text
from deepsight_tf.core.settings import TrainSettings

# Progressive resizing: sizes between the first and the last are multiples of this many
# pixels (each new size traces the step once), and this share of the epochs, one at least,
# trains at the full --image-size, so the last epochs and the one-cycle anneal see the size
# the model is scored at.
SIZE_STEP = 8
FULL_SIZE_SHARE = 0.25


@dataclass
class PhasePlan:
    """One fit call: which layers train, for how many epochs, at which peak rate."""

    index: int
    name: str
    epochs: int
    trainable: str  # "head" or the stages unfrozen, e.g. "3,4" / "all"
    peak_lr: float  # the head's one-cycle peak, after scaling for the replicas
    backbone_lr_mult: float
    last_epoch_steps: int | None = None  # a shorter last epoch (--budget); None: a full one
    # Pixels of each epoch's training images (--progressive-resize); None: --image-size.
    image_sizes: tuple[int, ...] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhasePlan:
        plan = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        if plan.image_sizes is not None:
            plan.image_sizes = tuple(int(size) for size in plan.image_sizes)
        return plan

    def epoch_steps(self, epoch: int, steps_per_epoch: int) -> int:
        """Optimizer steps in this phase's `epoch` (0-based)."""
        if epoch == self.epochs - 1 and self.last_epoch_steps is not None:
            return min(self.last_epoch_steps, steps_per_epoch)
        return steps_per_epoch

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps in the whole phase: its one-cycle schedule's length."""
        if self.epochs <= 0:
            return 0
        return (self.epochs - 1) * steps_per_epoch + self.epoch_steps(
            self.epochs - 1, steps_per_epoch
        )


def resolve_settings(settings: TrainSettings) -> TrainSettings:
    """Fill the defaults that depend on other settings; the one place that decides them."""
    from deepsight_tf.model.backbones import get_backbone_spec

    spec = get_backbone_spec(settings.backbone)
    pretrained = settings.weights != "none"
    small = not pretrained and settings.image_size <= 32 and "cifar" in spec.stems
    resolved = replace(
        settings,
        stem=settings.stem or ("cifar" if small else "imagenet"),
        frozen_epochs=settings.frozen_epochs
        if settings.frozen_epochs is not None
        else int(pretrained),
        unfreeze=settings.unfreeze
        or (",".join(str(s) for s in spec.finetune_stages) if pretrained else "all"),
        lr=settings.lr if settings.lr is not None else (0.05 if pretrained else 0.4),
        backbone_lr_mult=(
            settings.backbone_lr_mult
            if settings.backbone_lr_mult is not None
            else (0.1 if pretrained else 1.0)
        ),
    )
    if resolved.focus_pairs and resolved.focus_pairs.startswith("@"):
        # interpret writes the most-confused pairs to a file: --focus-pairs @focus_pairs.txt
        text = read_input_text(Path(resolved.focus_pairs[1:]), "--focus-pairs")
        resolved = replace(resolved, focus_pairs=text.strip())
    if resolved.epochs + resolved.frozen_epochs <= 0:
        raise ConfigError("--epochs and --frozen-epochs are both 0")
    if resolved.frozen_epochs < 0:
        raise ConfigError(f"--frozen-epochs {resolved.frozen_epochs} must be >= 0")
    return resolved


def parse_unfreeze(text: str, backbone: str | None = None) -> tuple[int, ...] | str:
    """The stages --unfreeze names ("all", or numbers), checked against the backbone's stages
    (1 to 4 for the ResNets; 0 is the stem) before anything is built or written."""
    if text == "all":
        return "all"
    try:
        stages = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        stages = ()
    if not stages or any(s < 1 for s in stages):
        raise ConfigError(f"--unfreeze {text!r}: give stage numbers such as 3,4, or all")
    if backbone is not None:
        from deepsight_tf.model.backbones import get_backbone_spec

        last = get_backbone_spec(backbone).stages[-1]
        if stages[-1] > last:
            raise ConfigError(
                f"--unfreeze {text!r}: {backbone} has stages 1 to {last} (0 is the stem); "
                "give numbers in that range, or all"
            )
    return stages


def check_schedule(
    phases: list[PhasePlan], steps_per_epoch: int, pct_start: float, images: int, batch: int
) -> None:
    """Every phase's one-cycle schedule needs two steps and a warm-up step at least."""
    for phase in phases:
        steps = phase.total_steps(steps_per_epoch)
        if steps < 2 or pct_start * steps <= 1:
            raise ConfigError(
                f"phase {phase.index} ({phase.name}) would have {steps} optimizer "
                f"step{'' if steps == 1 else 's'} "
                f"({images} training images at batch {batch}, {phase.epochs} epochs); a "
                f"one-cycle schedule warming up for --pct-start {pct_start:g} needs more than "
                f"{1 / pct_start:g}: lower --batch-size or add epochs"
            )


def epoch_image_sizes(start: int | None, final: int, epochs: int) -> tuple[int, ...]:
    """Training-image pixels of each of a run's `epochs` under progressive resizing (fastai's,
    FFCV's): `start` at the first epoch, rising linearly to `final` at the last quarter of the
    epochs, which keeps it; between them the largest multiple of SIZE_STEP not above the line.
    Without `start` (or with `start` >= `final`) every epoch is at `final`."""
    if start is None or start >= final:
        return (final,) * epochs
    ramp = epochs - max(1, math.ceil(FULL_SIZE_SHARE * epochs))  # epochs below `final`
    sizes = []
    for epoch in range(epochs):
        if epoch >= ramp:
            sizes.append(final)
            continue
        line = start + (final - start) * epoch / ramp
        sizes.append(min(final, max(start, SIZE_STEP * math.floor(line / SIZE_STEP))))
    return tuple(sizes)


def progressive_start(image_size: int) -> int:
    """A starting size for progressive resizing: two thirds of the side (under half the
    pixels), a multiple of SIZE_STEP, SIZE_STEP at least (48 px: 32; 64 px: 40)."""
    return max(SIZE_STEP, SIZE_STEP * math.floor(image_size * 2 / 3 / SIZE_STEP))


def ramp_sizes(start: int | None, final: int) -> tuple[int, ...]:
    """Every size `epoch_image_sizes` can give, whatever the number of epochs (what the
    pre-flight probe times for a budget)."""
    if start is None or start >= final:
        return (final,)
    steps = range(SIZE_STEP * math.floor(start / SIZE_STEP) + SIZE_STEP, final, SIZE_STEP)
    return (start, *(size for size in steps if size > start), final)


def plan_phases(settings: TrainSettings, peak_lr: float | None = None) -> list[PhasePlan]:
    """The head phase (backbone frozen) when there are frozen epochs, then fine-tuning.

    `peak_lr` is the head's rate after scaling for the replicas (train/distribute.py); the
    plan is written into config.json, so every reader sees the rates the run really used.
    Progressive resizing runs over the epochs of all phases together.
    """
    lr = settings.lr if peak_lr is None else peak_lr
    sizes: tuple[int, ...] | None = None
    if settings.progressive_resize is not None:
        sizes = epoch_image_sizes(
            settings.progressive_resize,
            settings.image_size,
            settings.frozen_epochs + settings.epochs,
        )
    phases = []
    if settings.frozen_epochs:
        phases.append(
            PhasePlan(
                1,
                "head (backbone frozen)",
                settings.frozen_epochs,
                "head",
                lr,
                0.0,
                image_sizes=sizes[: settings.frozen_epochs] if sizes else None,
            )
        )
    if settings.epochs:
        phases.append(
            PhasePlan(
                len(phases) + 1,
                f"fine-tune (stages {settings.unfreeze})",
                settings.epochs,
                settings.unfreeze,
                lr,
                settings.backbone_lr_mult,
                settings.last_epoch_steps,
                image_sizes=sizes[settings.frozen_epochs :] if sizes else None,
            )
        )
    return phases


def default_run_id(settings: TrainSettings) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{settings.backbone}-{stamp}"
