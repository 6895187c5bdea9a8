"""Optimizers with differential (backbone vs head) learning rates, and mixed precision."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.settings import OPTIMIZERS, PRECISIONS
from deepsight_tf.training.schedules import OneCycle

# float16 tensor cores (and fast float16 maths at all) start with Volta, compute capability 7.0.
MIN_FLOAT16_CAPABILITY = (7, 0)
# airbench's lookahead: a sync every 5 steps, the average's pull rising to 0.95^5.
LOOKAHEAD_EVERY = 5
LOOKAHEAD_DECAY = 0.95**5
CPU_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo flags


def is_batchnorm_offset(path: str) -> bool:
    """Whether a variable path names a BatchNormalization offset (Keras calls it "beta")."""
    return path.rsplit("/", 1)[-1] == "beta"


def is_head_variable(path: str, head_prefixes: Sequence[str]) -> bool:
    """Whether a variable path ("layer/.../variable") lies in a layer named with a head prefix.

    Every layer name along the path is checked, so a head nested in a sub-model still counts.
    """
    layer_names = path.split("/")[:-1]
    return any(name.startswith(prefix) for name in layer_names for prefix in head_prefixes)


class _DifferentialLR:
    """Scales the learning rate of backbone variables by `backbone_lr_mult` inside update_step.

    Keras 3 has no per-variable learning rate, so the multiplier of each variable is fixed
    at build time from its path (the optimizer only sees bare tf.Variables in update_step,
    which carry no path) and looked up by the variable's index. Decoupled weight decay,
    which Keras scales by the learning rate, is moved into update_step so it scales by the
    same multiplier: a backbone at multiplier 0 neither moves nor decays.
    """

    def _init_groups(
        self,
        backbone_lr_mult: float,
        head_prefixes: Sequence[str],
        cycle_momentum: bool,
        bias_lr_mult: float = 1.0,
        lookahead: bool = False,
    ) -> None:
        if lookahead and not (self.use_ema and isinstance(self._learning_rate, OneCycle)):
            raise ValueError(
                "lookahead keeps its average in the optimizer's EMA slots and ends with the "
                "one-cycle schedule: pass use_ema=True and a OneCycle learning rate. "
                f"Received: use_ema={self.use_ema}, learning_rate={self._learning_rate!r}"
            )
        self.lookahead = bool(lookahead)
        if not bias_lr_mult > 0:
            raise ValueError(f"`bias_lr_mult` must be > 0. Received: bias_lr_mult={bias_lr_mult}")
        if not backbone_lr_mult >= 0:
            raise ValueError(
                f"`backbone_lr_mult` must be >= 0. Received: backbone_lr_mult={backbone_lr_mult}"
            )
        if isinstance(head_prefixes, str) or not all(
            isinstance(p, str) and p for p in head_prefixes
        ):
            raise ValueError(
                "`head_prefixes` must be a list of non-empty layer-name prefixes. "
                f"Received: head_prefixes={head_prefixes!r}"
            )
        self.backbone_lr_mult = float(backbone_lr_mult)
        self.bias_lr_mult = float(bias_lr_mult)
        self.head_prefixes = tuple(head_prefixes)
        self.cycle_momentum = bool(cycle_momentum)

    @property
    def cycles_momentum(self) -> bool:
        """True when momentum (beta_1) follows the OneCycle schedule instead of a constant."""
        return self.cycle_momentum and isinstance(self._learning_rate, OneCycle)

    def _momentum_now(self, constant: float) -> Any:
        # The same step count as the learning rate this update uses (BaseOptimizer reads
        # `_iterations` for the schedule), so lr and momentum stay in phase.
        if self.cycles_momentum:
            return self._learning_rate.momentum(self._iterations)
        return constant

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        paths = [getattr(v, "path", v.name) for v in variables]
        heads = [is_head_variable(path, self.head_prefixes) for path in paths]
        if self.backbone_lr_mult != 1.0 and variables and not any(heads):
            raise ValueError(
                f"No trainable variable lies in a layer named with {list(self.head_prefixes)}, "
                f"so every variable would get the backbone rate. Received: paths={paths[:5]}"
            )
        self._lr_multipliers = [1.0 if head else self.backbone_lr_mult for head in heads]
        self._offset_multipliers = [
            self.bias_lr_mult if is_batchnorm_offset(path) else 1.0 for path in paths
        ]

    def lr_multiplier(self, variable: Any) -> float:
        """The factor applied to the learning rate (and weight decay) of `variable`."""
        return self._lr_multipliers[self._get_variable_index(variable)]

    def gradient_lr_multiplier(self, variable: Any) -> float:
        """The factor on the gradient step alone: lr_multiplier times `bias_lr_mult` for a
        BatchNorm offset (airbench's bias scaler, which leaves weight decay as it is)."""
        return (
            self.lr_multiplier(variable)
            * self._offset_multipliers[self._get_variable_index(variable)]
        )

    def _apply_weight_decay(self, variables: list[Any]) -> None:
        # Applied per variable in update_step with the scaled rate (see the class docstring).
        return

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        index = self._get_variable_index(variable)
        lr = ops.cast(learning_rate, variable.dtype) * self._lr_multipliers[index]
        if self.weight_decay is not None and self._use_weight_decay(variable):
            wd = ops.cast(self.weight_decay, variable.dtype)
            self.assign_sub(variable, variable * wd * lr)
        if self._offset_multipliers[index] != 1.0:
            lr = lr * self._offset_multipliers[index]
        self._scaled_update_step(ops.cast(gradient, variable.dtype), variable, lr)

    # The weight average (use_ema). Keras overwrites the weights with it at the end of every
    # fit; deepsight fits once per epoch, so that would restart training from the average
    # each epoch. The fitter calls `apply_average` once, at the end of the phase, instead.
    def finalize_variable_values(self, var_list: list[Any]) -> None:
        return

    def apply_average(self, variables: list[Any]) -> None:
        """Overwrite `variables` (the phase's trainable ones) with their moving average."""
        self._overwrite_model_variables_with_average_value(variables)

    def _update_model_variables_moving_average(self, trainable_variables: list[Any]) -> None:
        if self.lookahead:
            self._lookahead(trainable_variables)
            return
        # TensorFlow's ExponentialMovingAverage(num_updates=step) warm-up: the decay is
        # min(ema_momentum, (1 + t) / (10 + t)) at step t (0 at the first, which copies the
        # weights), so the average soon forgets the starting weights; Keras's constant decay
        # would still give the random initial weights 0.999^3700 = 2% of the average at the
        # end of a 30-minute run.
        if not self.use_ema:
            return
        t = ops.cast(self.iterations, "float32")
        warm = ops.minimum(ops.cast(self.ema_momentum, "float32"), (1.0 + t) / (10.0 + t))
        decay = ops.where(ops.equal(t, 0.0), 0.0, warm)
        for var, average in zip(
            trainable_variables, self._model_variables_moving_average, strict=True
        ):
            if average is not None:
                d = ops.cast(decay, var.dtype)
                average.assign(d * average + (1 - d) * var)

    def _lookahead(self, trainable_variables: list[Any]) -> None:
        """airbench's lookahead (Jordan 2024, after Zhang et al. 2019): every LOOKAHEAD_EVERY
        steps the average moves towards the weights by 1 - d and the weights jump to it, with
        d = LOOKAHEAD_DECAY * (done / total)^3 rising from 0 (the average follows the
        weights early) to 0.77 (it holds them back late); after the schedule's last step the
        weights are the average. `total` is the one-cycle schedule's length, so a budget
        re-sized in flight moves the end with it. Keras's average slots start at zero: the
        first step copies the weights in (airbench copies them before it; the first sync's
        pull, 0.77 (5 / total)^3, is too small for the difference to matter)."""
        first = ops.equal(self.iterations, 0)
        done = ops.cast(self.iterations + 1, "float32")
        total = ops.cast(ops.convert_to_tensor(self._learning_rate._length), "float32")
        decay = LOOKAHEAD_DECAY * ops.power(ops.minimum(done / total, 1.0), 3.0)
        sync = ops.equal(ops.mod(done, float(LOOKAHEAD_EVERY)), 0.0)
        take = ops.logical_or(sync, ops.greater_equal(done, total))
        for var, average in zip(
            trainable_variables, self._model_variables_moving_average, strict=True
        ):
            if average is None:
                continue
            average.assign(ops.where(first, var, average))
            moved = average + (1.0 - ops.cast(decay, var.dtype)) * (var - average)
            new_average = ops.where(sync, moved, average)
            average.assign(new_average)
            var.assign(ops.where(take, new_average, var))

    def _group_config(self) -> dict[str, Any]:
        return {
            "backbone_lr_mult": self.backbone_lr_mult,
            "head_prefixes": list(self.head_prefixes),
            "cycle_momentum": self.cycle_momentum,
            "bias_lr_mult": self.bias_lr_mult,
            "lookahead": self.lookahead,
        }


@keras.saving.register_keras_serializable(package="deepsight")
class DifferentialSGD(_DifferentialLR, keras.optimizers.SGD):
    """SGD (Keras's momentum convention) with a backbone rate multiplier and cycled momentum.

    Update, with lr scaled by `backbone_lr_mult` for backbone variables and momentum `m_t`
    taken from a OneCycle learning rate's `momentum(step)` when `cycle_momentum` is set:

        v = m_t * v - lr * g;   w += v                    (nesterov=False)
        v = m_t * v - lr * g;   w += m_t * v - lr * g     (nesterov=True)

    preceded by decoupled weight decay `w -= w * weight_decay * lr`. Keras's SGD bakes a
    float momentum into the traced step; this one reads it from the step counter each step.

    Args:
        momentum: the constant momentum when not cycled; must be > 0 for cycling, since it
            also decides whether momentum slots exist.
        backbone_lr_mult: factor on the rate of every variable outside the head.
        head_prefixes: layer-name prefixes that mark head layers.
        cycle_momentum: follow `learning_rate.momentum(step)` when it is a OneCycle.
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.01,
        momentum: float = 0.9,
        nesterov: bool = True,
        backbone_lr_mult: float = 1.0,
        head_prefixes: Sequence[str] = ("head_",),
        cycle_momentum: bool = True,
        bias_lr_mult: float = 1.0,
        lookahead: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate, momentum=float(momentum), nesterov=nesterov, **kwargs
        )
        self._init_groups(backbone_lr_mult, head_prefixes, cycle_momentum, bias_lr_mult, lookahead)
        if self.cycles_momentum and self.momentum == 0:
            raise ValueError(
                "Cycling momentum needs momentum slots: pass momentum > 0 or "
                f"cycle_momentum=False. Received: momentum={momentum}"
            )

    def _scaled_update_step(self, gradient: Any, variable: Any, lr: Any) -> None:
        if not self.momentums:
            self.assign_sub(variable, gradient * lr)
            return
        velocity = self.momentums[self._get_variable_index(variable)]
        momentum = ops.cast(self._momentum_now(self.momentum), variable.dtype)
        self.assign(velocity, velocity * momentum - gradient * lr)
        if self.nesterov:
            self.assign_add(variable, velocity * momentum - gradient * lr)
        else:
            self.assign_add(variable, velocity)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._group_config()}


@keras.saving.register_keras_serializable(package="deepsight")
class DifferentialAdamW(_DifferentialLR, keras.optimizers.AdamW):
    """AdamW with a backbone rate multiplier and beta_1 cycled by a OneCycle schedule.

    The Adam update of Keras (bias-corrected, `epsilon` outside the square root), with
    beta_1 read from `learning_rate.momentum(step)` when cycled, as PyTorch's OneCycleLR
    does for Adam; the bias correction then uses the current beta_1, as PyTorch's Adam does.
    Decoupled weight decay `w -= w * weight_decay * lr` uses the group's scaled rate.
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.001,
        weight_decay: float = 0.004,
        backbone_lr_mult: float = 1.0,
        head_prefixes: Sequence[str] = ("head_",),
        cycle_momentum: bool = True,
        bias_lr_mult: float = 1.0,
        lookahead: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self._init_groups(backbone_lr_mult, head_prefixes, cycle_momentum, bias_lr_mult, lookahead)

    def _scaled_update_step(self, gradient: Any, variable: Any, lr: Any) -> None:
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        beta_1 = self._momentum_now(self.beta_1)
        # 1 - beta taken before the cast, as Keras's Adam does, so that uncycled updates
        # round exactly like Keras's.
        one_minus_beta_1 = ops.cast(1 - beta_1, variable.dtype)
        one_minus_beta_2 = ops.cast(1 - self.beta_2, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1_power = ops.power(ops.cast(beta_1, variable.dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, variable.dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        self.assign_add(m, (gradient - m) * one_minus_beta_1)
        self.assign_add(v, (ops.square(gradient) - v) * one_minus_beta_2)
        if self.amsgrad:
            v_hat = self._velocity_hats[index]
            self.assign(v_hat, ops.maximum(v_hat, v))
            v = v_hat
        self.assign_sub(variable, m * alpha / (ops.sqrt(v) + self.epsilon))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._group_config()}


def make_optimizer(
    name: str,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    *,
    backbone_lr_mult: float = 1.0,
    head_prefixes: Sequence[str] = ("head_",),
    weight_decay: float | None = 5e-4,
    momentum: float = 0.9,
    nesterov: bool = True,
    cycle_momentum: bool = True,
    ema: float = 0.0,
    bias_lr_mult: float = 1.0,
    lookahead: bool = False,
    **kwargs: Any,
) -> DifferentialSGD | DifferentialAdamW:
    """The optimizer for `deepsight train` from its settings (defaults: DESIGN.md's recipe).

    `learning_rate` (a float or a OneCycle) is the head's rate (`--lr`); variables outside
    layers named with `head_prefixes` get it times `backbone_lr_mult`, weight decay included.
    `name` is "sgd" (Nesterov momentum `momentum`) or "adamw" (`momentum` is beta_1). Under
    a OneCycle rate, momentum/beta_1 follow its cycle unless `cycle_momentum` is False.
    `ema` > 0 keeps a moving average of the weights with that decay per step (Keras's
    use_ema, warmed up as TensorFlow's ExponentialMovingAverage; `apply_average` puts it
    in). BatchNorm offsets take `bias_lr_mult` times their rate in the gradient step (not in
    the decay). `kwargs` go to the Keras optimizer (clipnorm, beta_2, epsilon, ...).
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not backbone_lr_mult >= 0:
        raise ConfigError(f"--backbone-lr-mult must be >= 0, got {backbone_lr_mult}")
    if isinstance(learning_rate, int | float) and not learning_rate > 0:
        raise ConfigError(f"--lr must be > 0, got {learning_rate}")
    if weight_decay is not None and not weight_decay >= 0:
        raise ConfigError(f"weight decay must be >= 0, got {weight_decay}")
    if not 0 <= momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
    if not 0 <= ema < 1:
        raise ConfigError(f"--ema must be in [0, 1), got {ema}")
    if ema and lookahead:
        raise ConfigError("--ema and --lookahead are two weight averages: choose one")
    if ema or lookahead:
        kwargs = {"use_ema": True, "ema_momentum": float(ema or 0.99), **kwargs}
    if isinstance(learning_rate, int):
        learning_rate = float(learning_rate)
    groups = {
        "backbone_lr_mult": backbone_lr_mult,
        "head_prefixes": head_prefixes,
        "cycle_momentum": cycle_momentum,
        "bias_lr_mult": bias_lr_mult,
        "lookahead": lookahead,
    }
    if name == "sgd":
        return DifferentialSGD(
            learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay or None,
            **groups,
            **kwargs,
        )
    return DifferentialAdamW(
        learning_rate, weight_decay=weight_decay or 0.0, beta_1=momentum, **groups, **kwargs
    )


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """Compute capability (major, minor) of each visible GPU; empty on a CPU-only machine."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        capabilities.append(tuple(capability) if capability else (0, 0))
    return capabilities


def cpu_bfloat16_native() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512_BF16 or AMX-BF16) and TensorFlow
    runs its oneDNN kernels, the ones that use it."""
    from deepsight_tf.model.fastconv import onednn_enabled

    try:
        with open("/proc/cpuinfo") as info:
            flags = next(
                (line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []
            )
    except OSError:
        return False
    # ONEDNN_MAX_CPU_ISA=AVX2 (or any cap below the bfloat16 ISAs) leaves it emulated.
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    capped = cap not in ("ALL", "DEFAULT") and not any(isa in cap for isa in ("BF16", "AMX"))
    return bool(CPU_BFLOAT16_FLAGS & set(flags)) and onednn_enabled() and not capped


@dataclass(frozen=True)
class PrecisionChoice:
    """The dtype policy a run computes in, and what decided it (config.json's record).

    `ms_per_step` holds the probe's median milliseconds per training step under each policy
    it timed (--precision auto on a CPU with native bfloat16), None where nothing was timed.
    """

    policy: str
    flag: str  # --precision as given
    rule: str  # why this policy, in words
    ms_per_step: dict[str, float] | None = None
    measured: str | None = None  # how the probe timed the steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrecisionChoice:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def describe(self) -> str:
        """One line for the run's notifications."""
        line = f"precision {self.policy} (--precision {self.flag}: {self.rule})"
        if self.ms_per_step:
            times = ", ".join(f"{p} {ms:.0f} ms" for p, ms in self.ms_per_step.items())
            line += f"; a training step took {times} ({self.measured})"
        return line


def precision_candidates(
    flag: str,
    capabilities: Sequence[tuple[int, int]] | None = None,
    cpu_bfloat16: bool | None = None,
) -> tuple[tuple[str, ...], str]:
    """The policies `--precision` leaves open, and why: one where the flag or the hardware
    decides, float32 and mixed_bfloat16 where only a measurement can (auto on a CPU that
    computes bfloat16 natively). `capabilities` and `cpu_bfloat16` override detection."""
    if flag not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {flag!r}")
    if flag != "auto":
        return (flag,), "given"
    if capabilities is None:
        capabilities = gpu_compute_capabilities()
    if capabilities:
        if all(tuple(c) >= MIN_FLOAT16_CAPABILITY for c in capabilities):
            return ("mixed_float16",), "every GPU has float16 tensor cores (capability >= 7.0)"
        return ("float32",), "a GPU without float16 tensor cores (capability < 7.0)"
    if cpu_bfloat16 is None:
        cpu_bfloat16 = cpu_bfloat16_native()
    if not cpu_bfloat16:
        return ("float32",), "this CPU emulates bfloat16 and float16"
    return ("float32", "mixed_bfloat16"), "the faster of the two as timed on this CPU"


def resolve_precision(
    flag: str,
    measure: Callable[[tuple[str, ...]], tuple[Mapping[str, float], str]] | None = None,
    capabilities: Sequence[tuple[int, int]] | None = None,
    cpu_bfloat16: bool | None = None,
) -> PrecisionChoice:
    """The Keras dtype policy for `--precision`, the one place that decides it.

    auto is mixed_float16 when every visible GPU has compute capability >= 7.0 and float32 on
    any other GPU or on a CPU without native bfloat16 (float16 maths is emulated there, and so
    is bfloat16). On a CPU with AVX512_BF16 or AMX, bfloat16 pays for some networks and not
    for others (on this project's AMD EPYC the ResNet-18 step ran 1.32x faster in
    mixed_bfloat16, EfficientNet-Lite0 inference 0.85-0.97x as fast), so `measure(policies)`
    times the run's own step under each and the faster wins, float32 on a tie. It returns
    seconds per step by policy and how they were measured. Without `measure` (a run over
    several replicas, where the probe's single-device step is not the run's) the hardware
    rule stands: mixed_bfloat16.
    """
    candidates, rule = precision_candidates(flag, capabilities, cpu_bfloat16)
    if len(candidates) == 1:
        return PrecisionChoice(candidates[0], flag, rule)
    if measure is None:
        return PrecisionChoice("mixed_bfloat16", flag, "native bfloat16 (not timed)")
    seconds, measured = measure(candidates)
    fastest = min(candidates, key=lambda policy: (seconds[policy], policy != "float32"))
    return PrecisionChoice(
        fastest,
        flag,
        rule,
        {policy: round(seconds[policy] * 1000.0, 1) for policy in candidates},
        measured,
    )


def apply_precision(policy: str) -> None:
    """Set the global Keras dtype policy; call it before building the model.

    Under mixed_float16, `model.compile` wraps the optimizer in a LossScaleOptimizer itself
    (auto_scale_loss=True), so no explicit wrapping is needed for `model.fit`.
    """
    if policy not in PRECISIONS or policy == "auto":
        raise ValueError(
            f"`policy` must be a resolved precision {PRECISIONS[1:]}. Received: policy={policy!r}"
        )
    keras.config.set_dtype_policy(policy)


def loss_scaled(optimizer: keras.optimizers.Optimizer, policy: str) -> keras.optimizers.Optimizer:
    """`optimizer` wrapped in a LossScaleOptimizer when `policy` needs loss scaling.

    Only float16 underflows; bfloat16 has float32's exponent range. For custom training
    loops; `model.compile` does this itself.
    """
    if policy == "mixed_float16" and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
