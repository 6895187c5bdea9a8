"""Everything a run needs before its first step: seeds, precision, the model, its pipelines."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.workspace import Workspace
from deepsight_tf.model.preprocessing import Preprocessing
from deepsight_tf.training.data import TrainingData, training_preprocessing
from deepsight_tf.training.plan import PhasePlan

if TYPE_CHECKING:
    from deepsight_tf.training.optim import PrecisionChoice

EVAL_BATCH = 256  # evaluation batches hold no gradients: at least this many images each
# --precision auto on a CPU with native bfloat16 times the run's step under each policy before
# the run starts: fewer steps than the estimate's 7, as the policies take turns (step.py).
PRECISION_TIMED_STEPS = 5


@dataclass
class Prepared:
    """What both training and the LR range test need: the model and its input pipelines."""

    model: Any
    preprocessing: Preprocessing
    precision: str
    # (first_epoch, epochs, skip_batches, image_size) -> batches; image_size None: the run's
    train_dataset: Callable[..., Any]
    eval_args: dict[str, Any]  # batch_size and preprocessing, for make_eval_dataset
    steps_per_epoch: int
    class_weights: np.ndarray | None
    distribution: dict[str, Any]  # the strategy, the global batch and the scaled rate
    precision_choice: PrecisionChoice | None = None  # how `precision` was decided


def prepare(
    settings: TrainSettings,
    data: TrainingData,
    workspace: Workspace,
    strategy: Any = None,
    precision: PrecisionChoice | None = None,
) -> Prepared:
    """Seed, decide the float policy, build the classifier and the batch streams of `data`.

    `precision` is a decision already made (a resumed run's, from its config.json); else
    resolve_precision decides, timing the run's own step where only a measurement can.
    """
    import keras
    import tensorflow as tf

    from deepsight_tf.training.distribute import describe_strategy, scale_for_replicas
    from deepsight_tf.training.pipeline import class_weights_from, parse_focus_pairs

    keras.utils.set_random_seed(settings.seed)
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    dataset = data.dataset
    # Everything a flag or a file can get wrong is checked before the model is built.
    class_weights = class_weights_from(
        settings.class_weights, dataset.y_train[data.train_indices], dataset.class_names
    )
    focus = parse_focus_pairs(settings.focus_pairs, dataset.class_names)
    preprocessing = training_preprocessing(settings, workspace, data)
    strategy = strategy or tf.distribute.get_strategy()
    global_batch, lr = scale_for_replicas(
        settings.batch_size, settings.lr, strategy.num_replicas_in_sync
    )
    if len(data.train_indices) < global_batch:
        raise ConfigError(
            f"--batch-size {settings.batch_size} is larger than the {len(data.train_indices)} "
            "training images; lower it"
        )
    train_dataset = _train_stream(settings, data, preprocessing, class_weights, focus, global_batch)
    precision, model = _decide_precision(
        settings,
        precision,
        dataset.num_classes,
        train_dataset,
        global_batch,
        strategy.num_replicas_in_sync,
        _init_images(settings, data, preprocessing),
    )
    distribution = {
        **describe_strategy(strategy),
        "global_batch": global_batch,
        "lr": lr,
        "lr_rule": "linear",
    }
    return Prepared(
        model=model,
        preprocessing=preprocessing,
        precision=precision.policy,
        train_dataset=train_dataset,
        eval_args={"batch_size": max(global_batch, EVAL_BATCH), "preprocessing": preprocessing},
        steps_per_epoch=int(train_dataset().cardinality()),
        class_weights=class_weights,
        distribution=distribution,
        precision_choice=precision,
    )


# Images a backbone's data-dependent initialisation reads (airbench's whitening: 5,000, as its own).
INIT_IMAGES = 5000


def _init_images(
    settings: TrainSettings, data: TrainingData, preprocessing: Preprocessing
) -> np.ndarray | None:
    """A seeded sample of the training images, preprocessed as the model is fed them, for a
    from-scratch backbone that initialises from data; None with pretrained weights."""
    if settings.weights != "none":
        return None
    rng = np.random.default_rng(settings.seed)
    count = min(INIT_IMAGES, len(data.train_indices))
    chosen = np.sort(rng.choice(data.train_indices, size=count, replace=False))
    return np.asarray(preprocessing(data.dataset.x_train[chosen]))


def _decide_precision(
    settings: TrainSettings,
    decided: PrecisionChoice | None,
    num_classes: int,
    train_dataset: Callable[..., Any],
    global_batch: int,
    replicas: int,
    init_images: np.ndarray | None = None,
) -> tuple[PrecisionChoice, Any]:
    """The run's float policy, set globally, and its classifier built under it (a
    from-scratch backbone initialised from `init_images` where it wants data).

    Each classifier is built from the same seed, so the run starts from the same weights
    whichever policies the probe built before it (and as with that --precision given).
    """
    import keras

    from deepsight_tf.model.classifier import build_classifier
    from deepsight_tf.training.optim import apply_precision, resolve_precision
    from deepsight_tf.training.plan import parse_unfreeze

    built: dict[str, Any] = {}

    def build(policy: str) -> Any:
        if policy not in built:
            apply_precision(policy)
            keras.utils.set_random_seed(settings.seed)
            built[policy] = build_classifier(
                settings.backbone,
                num_classes=num_classes,
                image_size=settings.image_size,
                weights=settings.weights,
                stem=settings.stem,
                dropout=settings.dropout,
                width_multiplier=settings.width_multiplier,
                zero_init_residual=settings.zero_init_residual,
                any_size=settings.progressive_resize is not None,
                init_images=init_images,
            )
        return built[policy]

    def measure(policies: tuple[str, ...]) -> tuple[dict[str, float], str]:
        models = {policy: build(policy) for policy in policies}
        unfreeze = parse_unfreeze(settings.unfreeze, settings.backbone)
        return time_precisions(models, train_dataset, settings, unfreeze, global_batch)

    # A probe outside a strategy's replica context would not time the step the run takes.
    choice = decided or resolve_precision(settings.precision, measure if replicas == 1 else None)
    model = build(choice.policy)
    apply_precision(choice.policy)
    return choice, model


def time_precisions(
    models: dict[str, Any],
    train_dataset: Callable[..., Any],
    settings: TrainSettings,
    unfreeze: tuple[int, ...] | str,
    batch: int,
) -> tuple[dict[str, float], str]:
    """Seconds per training step of the run's last phase under each dtype policy, and how
    they were timed: `models` holds the run's classifier built under each policy.

    The models take turns on one stream of the run's batches (step.step_seconds), the median
    of PRECISION_TIMED_STEPS each, or of two each when both rounds agree by 10% (a large step
    costs seconds, and a budget pays for them). Every variable is put back and every layer
    left trainable, as built, so the run starts as it would have without the probe.
    """
    import keras

    from deepsight_tf.model.classifier import unfreeze_all
    from deepsight_tf.training.optim import loss_scaled
    from deepsight_tf.training.plan import plan_phases
    from deepsight_tf.training.step import (
        WARMUP_STEPS,
        clear_winner,
        step_seconds,
        train_step_function,
    )

    phase = plan_phases(settings)[-1]
    saved = {policy: [v.numpy() for v in model.variables] for policy, model in models.items()}
    try:
        steps = {}
        for policy, model in models.items():
            set_trainable(model, phase, settings, unfreeze)
            optimizer = phase_optimizer(settings, phase, 1e-3, settings.ema)
            steps[policy] = train_step_function(
                model, loss_scaled(optimizer, policy), keras.losses.CategoricalCrossentropy()
            )
        batches = iter(train_dataset(first_epoch=0).repeat())
        seconds = step_seconds(steps, batches, PRECISION_TIMED_STEPS, settled=clear_winner)
    finally:
        for policy, model in models.items():
            for variable, value in zip(model.variables, saved[policy], strict=True):
                variable.assign(value)
            unfreeze_all(model)
    measured = (
        f"the median of up to {PRECISION_TIMED_STEPS} steps each (2 when both rounds agree by "
        f"10%), taking turns, after {WARMUP_STEPS} warm-up steps; phase {phase.trainable}, "
        f"batch {batch}, {os.cpu_count()} CPUs"
    )
    return seconds, measured


def _train_stream(
    settings: TrainSettings,
    data: TrainingData,
    preprocessing: Preprocessing,
    class_weights: np.ndarray | None,
    focus: list[tuple[int, int]],
    global_batch: int,
) -> Callable[..., Any]:
    """(first_epoch, epochs, skip_batches, image_size) -> the training batches, sharded for the
    strategy; `image_size` (progressive resizing) resizes to other than the run's size."""
    from dataclasses import replace

    from deepsight_tf.training.distribute import shard_by_data
    from deepsight_tf.training.pipeline import make_train_dataset

    dataset = data.dataset

    def train_dataset(
        first_epoch: int = 0, epochs: int = 1, skip_batches: int = 0, image_size: int | None = None
    ) -> Any:
        sized = preprocessing
        if image_size is not None and image_size != preprocessing.image_size:
            sized = replace(preprocessing, image_size=image_size)
        return shard_by_data(
            make_train_dataset(
                dataset.x_train,
                dataset.y_train,
                data.train_indices,
                dataset.num_classes,
                batch_size=global_batch,
                preprocessing=sized,
                augment=settings.augment,
                mix=settings.mix,
                mix_alpha=settings.mix_alpha,
                label_smoothing=settings.label_smoothing,
                class_weights=class_weights,
                focus_pairs=focus or None,
                focus_factor=settings.focus_factor,
                seed=settings.seed,
                first_epoch=first_epoch,
                epochs=epochs,
                skip_batches=skip_batches,
                flip=settings.flip,
            )
        )

    return train_dataset


def set_trainable(
    model: Any, phase: PhasePlan, settings: TrainSettings, unfreeze: tuple[int, ...] | str
) -> None:
    """Freeze for the head phase; unfreeze the chosen stages (BN frozen) for fine-tuning.

    The same layers train whatever state the model is in: a fine-tuning phase first freezes
    the backbone, so the stages it does not name stay frozen on a freshly built (all
    trainable) model too, as they are after a head phase: with --frozen-epochs 0, in a resume
    that starts in the fine-tuning phase, and in the step probes.
    """
    from deepsight_tf.model import classifier

    if phase.trainable == "head":
        classifier.freeze_backbone(model)
    elif settings.weights == "none" and unfreeze == "all":
        # From scratch every layer learns, BatchNorm included (batch statistics); BN is
        # kept in inference mode only to protect pretrained statistics.
        classifier.unfreeze_all(model)
    else:
        classifier.freeze_backbone(model)
        classifier.unfreeze_stages(model, unfreeze)


def phase_optimizer(
    settings: TrainSettings,
    phase: PhasePlan,
    learning_rate: Any,
    ema: float = 0.0,
    lookahead: bool = False,
) -> Any:
    """The phase's optimizer: the backbone at `backbone_lr_mult` times the head's rate, with
    a moving average of the weights of decay `ema` (0: none) or airbench's `lookahead` (on
    a one-cycle `learning_rate`)."""
    from deepsight_tf.model.backbones import HEAD_PREFIX
    from deepsight_tf.training.optim import make_optimizer

    return make_optimizer(
        settings.optimizer,
        learning_rate,
        backbone_lr_mult=phase.backbone_lr_mult,
        head_prefixes=(HEAD_PREFIX,),
        weight_decay=settings.weight_decay,
        momentum=0.9 if settings.momentum is None else settings.momentum,
        ema=ema,
        bias_lr_mult=settings.bias_lr_mult,
        lookahead=lookahead,
    )
