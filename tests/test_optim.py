"""Tests for differential learning rates, cycled momentum, saving/resuming, mixed precision."""

from __future__ import annotations

import copy
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.training.metrics import training_metrics
from deepsight_tf.training.optim import (
    DifferentialAdamW,
    DifferentialSGD,
    PrecisionChoice,
    apply_precision,
    cpu_bfloat16_native,
    is_head_variable,
    loss_scaled,
    make_optimizer,
    resolve_precision,
)
from deepsight_tf.training.schedules import OneCycle

# Every test here starts and ends under the float32 policy (conftest's float32_policy).
pytestmark = pytest.mark.usefixtures("float32_policy")


def tiny_classifier(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(5, activation="relu", name="stem_dense")(inputs)
    hidden = keras.layers.Dense(4, activation="relu", name="block_dense")(hidden)
    logits = keras.layers.Dense(3, name="head_dense")(hidden)
    # Softmax in float32 so mixed precision keeps a float32 loss.
    outputs = keras.layers.Activation("softmax", dtype="float32", name="head_softmax")(logits)
    return keras.Model(inputs, outputs)


def tiny_data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = keras.utils.to_categorical((x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1), 3)
    return x, y.astype("float32")


def gradients(model: keras.Model, x: np.ndarray, y: np.ndarray) -> list[tf.Tensor]:
    with tf.GradientTape() as tape:
        loss = keras.losses.categorical_crossentropy(y, model(x, training=True))
        loss = tf.reduce_mean(loss)
    return tape.gradient(loss, model.trainable_variables)


def split(model: keras.Model) -> tuple[list, list]:
    head = [v for v in model.trainable_variables if v.path.startswith("head_")]
    backbone = [v for v in model.trainable_variables if not v.path.startswith("head_")]
    return backbone, head


def test_batchnorm_offsets_step_at_their_multiple_and_decay_as_the_rest():
    """One SGD step without momentum: a BatchNorm beta moves bias_lr_mult times as far as
    the same optimizer at multiplier 1 moves it, less the decay, which is not multiplied."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 1, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head_dense")(x)
    model = keras.Model(inputs, outputs)
    x_data = np.random.default_rng(1).normal(size=(8, 4, 4, 2)).astype("float32")
    y_data = keras.utils.to_categorical(np.arange(8) % 2, 2).astype("float32")
    beta = model.get_layer("stem_bn").beta
    beta.assign(np.full(3, 0.5, np.float32))
    start = [v.numpy() for v in model.trainable_variables]
    moved = {}
    for mult in (1.0, 64.0):
        for variable, value in zip(model.trainable_variables, start, strict=True):
            variable.assign(value)
        optimizer = make_optimizer(
            "sgd", 0.01, momentum=0.0, cycle_momentum=False, weight_decay=0.1, bias_lr_mult=mult
        )
        grads = gradients(model, x_data, y_data)
        optimizer.apply(grads, model.trainable_variables)
        moved[mult] = {v.path: v.numpy() for v in model.trainable_variables}
    decay = 0.5 * 0.1 * 0.01
    gradient_step = moved[1.0]["stem_bn/beta"] - (0.5 - decay)
    np.testing.assert_allclose(
        moved[64.0]["stem_bn/beta"], 0.5 - decay + 64 * gradient_step, rtol=1e-5
    )
    for path in ("stem_conv/kernel", "head_dense/kernel"):
        np.testing.assert_array_equal(moved[64.0][path], moved[1.0][path])


def test_lookahead_follows_airbench_s_update_step_by_step():
    """Plain SGD steps on one variable with planted gradients, against airbench94's
    LookaheadState written out: every 5th step the average moves by 1 - d towards the
    weights and the weights take it, d = 0.95^5 (t / T)^3; after step T the weights are it.
    The average starts from the weights after the first step (Keras's slots start empty)."""
    total = 12
    schedule = OneCycle(0.1, total, pct_start=0.25)
    optimizer = make_optimizer(
        "sgd", schedule, momentum=0.0, cycle_momentum=False, weight_decay=None, lookahead=True
    )
    weight = keras.Variable(np.array([1.0, -2.0], np.float32), name="head_w")
    optimizer.build([weight])
    grads = np.random.default_rng(4).normal(size=(total, 2)).astype(np.float32)
    ours = np.array([1.0, -2.0], np.float32)
    ema = ours
    for step in range(total):
        optimizer.apply([tf.constant(grads[step])], [weight])
        ours = ours - float(schedule(step)) * grads[step]
        if step == 0:
            ema = ours.copy()
        done = step + 1
        if done % 5 == 0:
            decay = 0.95**5 * (done / total) ** 3
            ema = ema + (1 - decay) * (ours - ema)
            ours = ema.copy()
        if done >= total:
            ours = ema.copy()
        np.testing.assert_allclose(weight.numpy(), ours, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="choose one"):
        make_optimizer("sgd", schedule, ema=0.99, lookahead=True)
    with pytest.raises(ValueError, match="OneCycle"):
        make_optimizer("sgd", 0.1, lookahead=True)


def test_head_variables_are_found_by_layer_name_prefix():
    assert is_head_variable("head_dense/kernel", ["head_"])
    assert is_head_variable("classifier/head_dense/bias", ["head_"])
    assert not is_head_variable("conv1/kernel", ["head_"])
    # The variable's own name is not a layer name.
    assert not is_head_variable("dense/head_kernel", ["head_"])
    assert is_head_variable("fc/kernel", ["head_", "fc"])


def test_multiplier_zero_moves_the_head_but_not_the_backbone():
    model = tiny_classifier()
    x, y = tiny_data()
    optimizer = DifferentialSGD(0.1, momentum=0.9, backbone_lr_mult=0.0, weight_decay=5e-4)
    backbone, head = split(model)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    optimizer.apply(gradients(model, x, y), model.trainable_variables)
    for v in backbone:
        np.testing.assert_array_equal(v.numpy(), before[v.path])
    for v in head:
        assert np.abs(v.numpy() - before[v.path]).max() > 1e-4
    assert [optimizer.lr_multiplier(v) for v in model.trainable_variables] == [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("mult", [0.1, 0.25, 1.0])
def test_plain_sgd_update_ratio_equals_the_multiplier(mult):
    model = tiny_classifier()
    x, y = tiny_data()
    lr = 0.5
    optimizer = DifferentialSGD(lr, momentum=0.0, backbone_lr_mult=mult, cycle_momentum=False)
    grads = [g.numpy() for g in gradients(model, x, y)]
    before = [v.numpy().copy() for v in model.trainable_variables]
    optimizer.apply(grads, model.trainable_variables)
    steps = {}
    for v, g, old in zip(model.trainable_variables, grads, before, strict=True):
        rate = lr if v.path.startswith("head_") else lr * mult
        # Up to float32 rounding of the subtraction (a couple of ulps of the weight).
        np.testing.assert_allclose(v.numpy(), old - np.float32(rate) * g, rtol=1e-6, atol=1e-7)
        # Least-squares step size per unit gradient, in float64.
        delta = v.numpy().astype("float64") - old
        steps[v.path] = -np.sum(delta * g) / np.sum(g.astype("float64") ** 2)
    for path in ("stem_dense/kernel", "block_dense/kernel"):
        assert steps[path] / steps["head_dense/kernel"] == pytest.approx(mult, rel=1e-3)


def test_weight_decay_scales_with_the_group_rate():
    model = tiny_classifier()
    lr, wd, mult = 0.1, 0.01, 0.3
    optimizer = DifferentialSGD(lr, momentum=0.0, backbone_lr_mult=mult, weight_decay=wd)
    before = [v.numpy().copy() for v in model.trainable_variables]
    zeros = [tf.zeros_like(v) for v in model.trainable_variables]
    optimizer.apply(zeros, model.trainable_variables)
    for v, old in zip(model.trainable_variables, before, strict=True):
        rate = lr if v.path.startswith("head_") else lr * mult
        np.testing.assert_allclose(v.numpy(), old - old * wd * rate, rtol=1e-6)


@pytest.mark.parametrize(
    ("ours", "reference"),
    [
        (
            lambda: DifferentialSGD(0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
            lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        ),
        (
            lambda: DifferentialAdamW(0.01, weight_decay=0.01, amsgrad=True),
            lambda: keras.optimizers.AdamW(0.01, weight_decay=0.01, amsgrad=True),
        ),
    ],
    ids=["sgd", "adamw"],
)
def test_multiplier_one_reproduces_the_keras_optimizer(ours, reference):
    x, y = tiny_data()
    finals = []
    for make in (ours, reference):
        model = tiny_classifier(seed=3)
        optimizer = make()
        for _ in range(4):
            optimizer.apply(gradients(model, x, y), model.trainable_variables)
        finals.append([v.numpy() for v in model.trainable_variables])
    # Equal up to float32 rounding (weights near 0.5 have an ulp of 6e-8).
    for a, b in zip(*finals, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_sgd_momentum_follows_the_one_cycle_formula_each_step():
    schedule = OneCycle(peak_lr=0.2, total_steps=12, pct_start=0.25)
    optimizer = DifferentialSGD(schedule, momentum=0.9, nesterov=False)
    weight = keras.Variable(np.zeros(1, dtype="float32"), name="w")
    # Graph mode, as in model.fit: a float momentum would be baked into this trace.
    step = tf.function(lambda: optimizer.apply([tf.ones(1)], [weight]))
    deltas = []
    for _ in range(12):
        before = float(weight.numpy()[0])
        step()
        deltas.append(float(weight.numpy()[0]) - before)
    # With gradient 1: delta_t = v_t = m_t * v_{t-1} - lr_t, so m_t = (delta_t + lr_t) / v_{t-1}.
    peak = 0.25 * 12 - 1
    for t in range(1, 12):
        if t <= peak:
            p = t / peak
            lr_t = 0.2 + (0.2 / 25 - 0.2) / 2 * (math.cos(math.pi * p) + 1)
            m_t = 0.85 + (0.95 - 0.85) / 2 * (math.cos(math.pi * p) + 1)
        else:
            p = (t - peak) / (11 - peak)
            floor = 0.2 / 25 / 1e4
            lr_t = floor + (0.2 - floor) / 2 * (math.cos(math.pi * p) + 1)
            m_t = 0.95 + (0.85 - 0.95) / 2 * (math.cos(math.pi * p) + 1)
        assert (deltas[t] + lr_t) / deltas[t - 1] == pytest.approx(m_t, rel=1e-4)
    assert int(optimizer.iterations.numpy()) == 12


def test_adamw_beta_1_follows_the_one_cycle_formula():
    schedule = OneCycle(peak_lr=0.1, total_steps=8)
    optimizer = DifferentialAdamW(schedule, weight_decay=0.0, epsilon=1e-7)
    weight = keras.Variable(np.array([0.5], dtype="float32"), name="w")
    grads = [0.3, -0.2, 0.5, 0.1, -0.4, 0.25, 0.05, -0.1]
    step = tf.function(lambda g: optimizer.apply([g], [weight]))
    w, m, v = 0.5, 0.0, 0.0
    for t, g in enumerate(grads):
        step(tf.constant([g], dtype="float32"))
        lr, beta_1 = float(schedule(t)), float(schedule.momentum(t))
        m = m + (g - m) * (1 - beta_1)
        v = v + (g * g - v) * (1 - 0.999)
        alpha = lr * math.sqrt(1 - 0.999 ** (t + 1)) / (1 - beta_1 ** (t + 1))
        w -= m * alpha / (math.sqrt(v) + 1e-7)
        assert float(weight.numpy()[0]) == pytest.approx(w, rel=1e-5)


def test_optimizer_configs_round_trip():
    for optimizer in (
        make_optimizer("sgd", OneCycle(0.4, 100), backbone_lr_mult=0.1, head_prefixes=["fc_"]),
        make_optimizer("adamw", 1e-3, backbone_lr_mult=0.5, weight_decay=0.05, momentum=0.8),
    ):
        config = optimizer.get_config()
        # from_config replaces the schedule's dict by the object in place, as Keras's does.
        restored = type(optimizer).from_config(copy.deepcopy(config))
        assert restored.get_config() == config
        again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
        assert type(again) is type(optimizer) and again.get_config() == config
    adamw = make_optimizer("adamw", 1e-3, momentum=0.8)
    assert adamw.beta_1 == 0.8 and adamw.weight_decay == 5e-4


def test_model_save_and_load_restore_the_optimizer_state(tmp_path):
    x, y = tiny_data()
    model = tiny_classifier()
    schedule = OneCycle(0.1, total_steps=30)
    model.compile(make_optimizer("sgd", schedule, backbone_lr_mult=0.1), "categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(loaded.optimizer, DifferentialSGD)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(loaded.optimizer.iterations.numpy()) == 6
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Both continue identically: momentum slots, step count and multipliers all came back.
    for m in (model, loaded):
        m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_one_optimizer_carries_its_state_across_an_unfreeze_when_prebuilt():
    x, y = tiny_data()
    model = tiny_classifier()
    schedule = OneCycle(0.1, total_steps=6)
    optimizer = make_optimizer("sgd", schedule, backbone_lr_mult=0.5)
    # Built on every variable that will ever train, before freezing: Keras refuses variables
    # an optimizer was not built with, and the slot count then stays fixed for checkpoints.
    optimizer.build(model.trainable_variables)
    for name in ("stem_dense", "block_dense"):
        model.get_layer(name).trainable = False
    model.compile(optimizer, "categorical_crossentropy")
    stem = model.get_layer("stem_dense").kernel
    frozen = stem.numpy().copy()
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_array_equal(stem.numpy(), frozen)
    for name in ("stem_dense", "block_dense"):
        model.get_layer(name).trainable = True
    model.compile(optimizer, "categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert np.abs(stem.numpy() - frozen).max() > 0
    # One schedule over both stages: the step count went on from 3 to 6.
    assert int(optimizer.iterations.numpy()) == 6
    assert float(optimizer.learning_rate) == pytest.approx(float(schedule(6)))


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("interrupted")


class _EpochLog(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_backup_and_restore_resumes_to_the_uninterrupted_result(tmp_path):
    x, y = tiny_data()

    def fit(seed, callbacks):
        model = tiny_classifier(seed)
        optimizer = make_optimizer("sgd", OneCycle(0.1, total_steps=12), backbone_lr_mult=0.2)
        model.compile(optimizer, "categorical_crossentropy")
        model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=callbacks)
        return model

    straight = fit(5, [])
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(5, [backup, _Interrupt()])
    # A fresh process: other initial weights, so only a real restore can match `straight`.
    log = _EpochLog()
    resumed = fit(99, [backup, log])
    assert log.epochs == [2, 3]
    assert int(resumed.optimizer.iterations.numpy()) == 12
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_mixed_float16_wraps_in_loss_scaling_and_keeps_the_multiplier(tmp_path):
    apply_precision("mixed_float16")
    model = tiny_classifier()
    x, y = tiny_data()
    model.compile(
        make_optimizer("sgd", OneCycle(0.1, 10), backbone_lr_mult=0.0),
        "categorical_crossentropy",
    )
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer, DifferentialSGD)
    backbone, head = split(model)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert model.layers[1].compute_dtype == "float16"
    assert int(model.optimizer.iterations.numpy()) == 3
    for v in backbone:
        np.testing.assert_array_equal(v.numpy(), before[v.path])
    assert all(np.abs(v.numpy() - before[v.path]).max() > 0 for v in head)
    model.save(tmp_path / "mixed.keras")
    loaded = keras.saving.load_model(tmp_path / "mixed.keras", safe_mode=True)
    assert isinstance(loaded.optimizer.inner_optimizer, DifferentialSGD)
    assert int(loaded.optimizer.iterations.numpy()) == 3


def test_differential_sgd_and_macro_f1_under_xla():
    model = tiny_classifier()
    x, y = tiny_data()
    model.compile(
        make_optimizer("sgd", OneCycle(0.1, 6), backbone_lr_mult=0.0),
        "categorical_crossentropy",
        metrics=training_metrics(3),
        jit_compile=True,
    )
    backbone, _ = split(model)
    before = [v.numpy().copy() for v in backbone]
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert 0.0 <= history.history["macro_f1"][-1] <= 1.0
    for v, old in zip(backbone, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), old)


def test_build_refuses_a_model_without_head_layers():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    optimizer = DifferentialSGD(0.1, backbone_lr_mult=0.1)
    with pytest.raises(ValueError, match="Received: paths"):
        optimizer.build(model.trainable_variables)
    # With no multiplier there are no groups to tell apart.
    DifferentialSGD(0.1).build(model.trainable_variables)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("adam", 0.1), {}),
        (("sgd", 0.1), {"backbone_lr_mult": -0.5}),
        (("sgd", 0.0), {}),
        (("sgd", 0.1), {"weight_decay": -1.0}),
        (("sgd", 0.1), {"momentum": 1.0}),
    ],
)
def test_make_optimizer_rejects_bad_settings(args, kwargs):
    with pytest.raises(ConfigError) as raised:
        make_optimizer(*args, **kwargs)
    assert "\n" not in str(raised.value)


def test_cycling_needs_momentum_slots():
    with pytest.raises(ValueError, match="Received: momentum=0"):
        DifferentialSGD(OneCycle(0.1, 10), momentum=0.0)
    DifferentialSGD(OneCycle(0.1, 10), momentum=0.0, cycle_momentum=False)


def _never_measured(policies):
    raise AssertionError(f"timed {policies} where the hardware decides")


def test_resolve_precision_where_the_flag_or_the_hardware_decides():
    def policy(flag, **kwargs):
        return resolve_precision(flag, _never_measured, **kwargs).policy

    assert policy("auto", capabilities=[(7, 0)]) == "mixed_float16"
    assert policy("auto", capabilities=[(9, 0), (8, 6)]) == "mixed_float16"
    assert policy("auto", capabilities=[(8, 0), (6, 1)]) == "float32"
    assert policy("auto", capabilities=[], cpu_bfloat16=False) == "float32"
    for flag in ("float32", "mixed_float16", "mixed_bfloat16"):
        choice = resolve_precision(flag, _never_measured, capabilities=[], cpu_bfloat16=True)
        assert (choice.policy, choice.rule, choice.ms_per_step) == (flag, "given", None)
    if not tf.config.list_physical_devices("GPU") and not cpu_bfloat16_native():
        assert policy("auto") == "float32"
    # Several replicas (no probe): bfloat16 where the CPU has it, as the hardware says.
    unmeasured = resolve_precision("auto", None, capabilities=[], cpu_bfloat16=True)
    assert unmeasured.policy == "mixed_bfloat16" and unmeasured.ms_per_step is None
    with pytest.raises(ConfigError, match="--precision"):
        resolve_precision("fp16")


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        ({"float32": 0.200, "mixed_bfloat16": 0.150}, "mixed_bfloat16"),  # ResNet-18-like
        ({"float32": 0.180, "mixed_bfloat16": 0.205}, "float32"),  # EfficientNet-Lite-like
        ({"float32": 0.100, "mixed_bfloat16": 0.100}, "float32"),  # a tie keeps full precision
    ],
)
def test_auto_on_a_bfloat16_cpu_keeps_the_faster_policy_as_measured(seconds, expected):
    asked = []

    def measure(policies):
        asked.append(policies)
        return seconds, "planted"

    choice = resolve_precision("auto", measure, capabilities=[], cpu_bfloat16=True)
    assert asked == [("float32", "mixed_bfloat16")]
    assert choice.policy == expected
    assert choice.ms_per_step == pytest.approx({p: s * 1000 for p, s in seconds.items()})
    assert choice.measured == "planted"
    assert PrecisionChoice.from_dict(choice.to_dict()) == choice
    line = choice.describe()
    assert f"precision {expected}" in line and "\n" not in line
    assert all(f"{policy} {s * 1000:.0f} ms" in line for policy, s in seconds.items())


def test_apply_precision_sets_the_global_policy():
    apply_precision("mixed_bfloat16")
    layer = keras.layers.Dense(2)
    assert (layer.compute_dtype, layer.variable_dtype) == ("bfloat16", "float32")
    with pytest.raises(ValueError, match="Received"):
        apply_precision("auto")
    sgd = keras.optimizers.SGD(0.1)
    assert isinstance(loss_scaled(sgd, "mixed_float16"), keras.optimizers.LossScaleOptimizer)
    assert loss_scaled(sgd, "mixed_bfloat16") is sgd
