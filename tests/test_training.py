"""deepsight train on a tiny separable data set: artifacts, metrics, gate, resume, transfer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from deepsight_tf.cli import app
from deepsight_tf.core.errors import ConfigError, StaleArtifactError
from deepsight_tf.core.settings import TrainSettings
from deepsight_tf.core.storage import read_json, to_jsonable
from deepsight_tf.core.workspace import HISTORY_FILE, MODEL_FILE, PREDICTIONS_FILE, Workspace
from deepsight_tf.model.saving import network_of
from deepsight_tf.training.checkpoints import load_weights_npz
from deepsight_tf.training.history import read_history
from deepsight_tf.training.loop import train
from deepsight_tf.training.metrics import classification_scores
from deepsight_tf.training.outcome import run_config
from deepsight_tf.training.plan import plan_phases, resolve_settings
from deepsight_tf.training.record import RunRecord
from deepsight_tf.training.run_config import SCHEMA as CONFIG_SCHEMA
from deepsight_tf.training.run_config import RunConfig
from deepsight_tf.training.run_metrics import SCHEMA, RunMetrics

from support.resume import crash_after_commit
from support.separable import CLASSES, tiny
from support.tiny_run import PREPROCESSING


def test_defaults_depend_on_the_weights() -> None:
    scratch = resolve_settings(TrainSettings(backbone="resnet18", weights="none", image_size=32))
    assert (scratch.stem, scratch.frozen_epochs, scratch.unfreeze, scratch.lr) == (
        "cifar",
        0,
        "all",
        0.4,
    )
    pretrained = resolve_settings(TrainSettings(backbone="resnet18", weights="imagenet"))
    assert (pretrained.frozen_epochs, pretrained.unfreeze, pretrained.backbone_lr_mult) == (
        1,
        "3,4",
        0.1,
    )
    assert [p.trainable for p in plan_phases(pretrained)] == ["head", "3,4"]
    assert plan_phases(pretrained)[0].backbone_lr_mult == 0.0
    with pytest.raises(ConfigError, match=r"--mva 1\.5"):
        resolve_settings(TrainSettings(mva=1.5))


def test_metrics_equal_sklearn() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    probs = rng.random((50, 3))
    got = classification_scores(labels, probs, CLASSES)
    assert got["accuracy"] == accuracy_score(labels, probs.argmax(1))
    assert got["macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_a_run_writes_consistent_artifacts(prepared: Workspace, precision: str) -> None:
    """Also under bfloat16 compute: the run is scored and stored as its float32 copy, so the
    stored model reproduces the stored probabilities and diagnostics run at full precision."""
    result = train(tiny(run_id=f"basic-{precision}", precision=precision), prepared)
    run = Path(result.run_dir)
    assert result.passed  # mva 0
    history = read_history(run / HISTORY_FILE)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert {"loss", "val_macro_f1", "val_accuracy", "lr_end"} <= set(history[0])
    predictions = np.load(run / PREDICTIONS_FILE)
    recomputed = classification_scores(
        predictions["test_labels"], predictions["test_probs"], CLASSES
    )
    metrics = read_json(run / "metrics.json")
    assert metrics["test"]["accuracy"] == recomputed["accuracy"] == result.test["accuracy"]
    assert metrics["test"]["macro_f1"] == pytest.approx(recomputed["macro_f1"])
    # The file is a typed record with its layout's version, read back field for field.
    record = RunRecord.at(run).metrics
    assert (record.schema, record.epochs_run, record.best_epoch) == (SCHEMA, 3, result.best_epoch)
    assert (
        record.test.per_class[CLASSES[0]]["support"]
        == recomputed["per_class"][CLASSES[0]]["support"]
    )
    assert record.to_dict() == metrics
    stored_config = read_json(run / "config.json")  # config.json likewise
    run_config = RunRecord.at(run).config
    assert (stored_config["schema"], run_config.schema) == (CONFIG_SCHEMA, CONFIG_SCHEMA)
    assert run_config.to_dict() == stored_config
    assert (run_config.settings.run_id, run_config.precision) == (result.run_id, precision)
    model = keras.saving.load_model(run / MODEL_FILE, safe_mode=True, compile=False)
    network = network_of(model)
    assert network is not model  # the file holds the run's preprocessing in front of it
    assert {layer.dtype_policy.compute_dtype for layer in network.layers} == {"float32"}
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(run / MODEL_FILE) as archive:  # the network only: no optimizer state
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        assert "optimizer" not in weights
    from deepsight_tf.model.preprocessing import Normalization, preprocess

    config = read_json(run / "config.json")
    normalize = Normalization.from_dict(config["preprocessing"]["normalization"])
    data = np.load(prepared.data_dir("rgb") / "images.npz")
    probs = network.predict(
        preprocess(data["x_test"], 16, normalize, config["preprocessing"]["interpolation"]),
        verbose=0,
    )
    np.testing.assert_allclose(probs, predictions["test_probs"], atol=1e-5)
    # The file itself takes the data set's uint8 images as stored (other sizes: test_predict).
    assert data["x_test"].dtype == np.uint8
    raw = model.predict(data["x_test"], verbose=0)
    np.testing.assert_allclose(raw, predictions["test_probs"], atol=1e-5)
    prepared.verify(run, "deepsight train")
    assert config["preprocessing"]["normalization"]["source"] == "imagenet"  # no explore here


def test_metrics_files_of_other_versions() -> None:
    """A file written before the layout had a version reads as version 0, its absent parts
    None; a version newer than this code knows is refused, naming the fix."""
    held_out = {"n": 4, "accuracy": 0.5, "macro_f1": 0.4, "per_class": {}}
    old = {
        "dataset": "rgb",
        "class_names": ["a", 1],
        "val": held_out,
        "test": held_out,
        "mva": 0.65,
        "passed": False,
        "duration_s": 3,
        "best_epoch": 2,
    }
    metrics = RunMetrics.from_dict(old)
    assert (metrics.schema, metrics.epochs_run, metrics.tta, metrics.ema) == (0, None, None, None)
    assert metrics.class_names == ["a", "1"] and metrics.test.macro_f1 == 0.4
    assert metrics.to_dict()["schema"] == SCHEMA
    with pytest.raises(ValueError, match=r"schema 99 is newer .* upgrade"):
        RunMetrics.from_dict({**old, "schema": 99})


def test_config_files_of_other_versions() -> None:
    """config.json without a version reads as version 0; a setting this deepsight does not
    know is left out; a newer version is refused."""
    settings = resolve_settings(tiny(run_id="config-versions"))
    written = run_config("config-versions", settings, "float32", PREPROCESSING, [], {}, "now")
    old = json.loads(json.dumps(to_jsonable(written)))
    del old["schema"]
    old["settings"]["a_setting_from_elsewhere"] = 1
    config = RunConfig.from_dict(old)
    assert config.schema == 0 and config.to_dict()["schema"] == CONFIG_SCHEMA
    assert config == replace(written, schema=0)
    assert "a_setting_from_elsewhere" not in config.to_dict()["settings"]
    with pytest.raises(ValueError, match=r"config.json: schema 7 is newer"):
        RunConfig.from_dict({**old, "schema": 7})


def test_gate_failure_exits_8_and_keeps_the_run(prepared: Workspace) -> None:
    result = CliRunner().invoke(
        app,
        [
            "--workspace",
            str(prepared.root),
            "train",
            "--run-id",
            "gated",
            "--mva",
            "1.0",
            "--backbone",
            "resnet18",
            "--image-size",
            "16",
            "--width-multiplier",
            "0.0625",
            "--batch-size",
            "16",
            "--epochs",
            "1",
            "--augment",
            "none",
            "--lr",
            "1e-6",  # an untrained network: far below a 100% gate
        ],
    )
    assert result.exit_code == 8, result.output
    assert "below the MVA gate of 100% by" in result.stderr
    assert (prepared.run_dir("gated") / MODEL_FILE).is_file()
    assert "Held-out results" in result.stdout


def test_existing_run_needs_resume_and_resume_continues(
    prepared: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Crash(Exception):
        pass

    crash_after_commit(monkeypatch, 0, Crash)
    with pytest.raises(Crash):
        train(tiny(run_id="resumed", epochs=3), prepared)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="pass --resume"):
        train(tiny(run_id="resumed", epochs=3), prepared)
    with pytest.raises(ConfigError, match="different settings \\(lr\\)"):
        train(tiny(run_id="resumed", epochs=3, lr=0.1, resume=True), prepared)
    result = train(tiny(run_id="resumed", epochs=3, resume=True), prepared)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.epochs_run == 3


def test_training_from_a_saved_kerashub_preset(prepared: Workspace, tmp_path: Path) -> None:
    """The ImageNet path offline: a random KerasHub ResNet-18 saved with save_to_preset is
    loaded by the same code as `--weights imagenet` (from_preset, a name or a folder)."""
    import keras_hub

    from deepsight_tf.model.backbones import get_backbone_spec

    keras.utils.set_random_seed(3)
    hub = keras_hub.models.ResNetBackbone(**get_backbone_spec("resnet18").hub_config())
    hub.save_to_preset(str(tmp_path / "preset"))
    expected = hub.get_layer("stack3_block1_2_conv").get_weights()[0]
    result = train(
        tiny(
            run_id="from-preset",
            weights=str(tmp_path / "preset"),
            image_size=32,
            width_multiplier=1.0,
            frozen_epochs=1,
            epochs=1,
            unfreeze="4",
            batch_size=16,
        ),
        prepared,
    )
    assert [p.trainable for p in result.phases] == ["head", "4"]
    model = network_of(keras.saving.load_model(Path(result.run_dir) / MODEL_FILE, compile=False))
    stem = model.get_layer("conv1_conv").get_weights()[0]
    np.testing.assert_array_equal(stem, hub.get_layer("conv1_conv").get_weights()[0])
    # Stage 4 was fine-tuned in phase 2 (model.keras holds the best epoch, maybe phase 1's).
    load_weights_npz(model, Path(result.run_dir) / "checkpoints/phase2.end.weights.npz")
    assert not np.array_equal(model.get_layer("stack3_block1_2_conv").get_weights()[0], expected)
    np.testing.assert_array_equal(model.get_layer("conv1_conv").get_weights()[0], stem)


def test_find_lr_writes_a_curve_and_a_suggestion_inside_the_range(prepared: Workspace) -> None:
    from deepsight_tf.training.lr_finder import find_lr

    report = find_lr(tiny(run_id="lr-test"), prepared, steps=30)
    saved = read_json(Path(report.run_dir) / "lr_finder.json")
    assert saved["suggestion"] == report.suggestion
    assert 2 <= report.steps <= 30  # stops early once the loss blows up
    assert min(saved["lrs"]) <= report.suggestion <= max(saved["lrs"])
    assert Path(report.figure).is_file()


def _bfloat16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as a CPU that computes bfloat16 natively, whatever it is."""
    from deepsight_tf.training import optim

    monkeypatch.setattr(optim, "cpu_bfloat16_native", lambda: True)
    monkeypatch.setattr(optim, "gpu_compute_capabilities", lambda: [])


def _planted(monkeypatch: pytest.MonkeyPatch, seconds: dict[str, float]) -> list[dict]:
    """The precision probe answering `seconds` per policy; returns what it was given."""
    from deepsight_tf.training import prepare

    given: list[dict] = []

    def time_precisions(models, train_dataset, settings, unfreeze, batch):
        given.append(
            {p: m.get_layer("conv1_conv").compute_dtype for p, m in models.items()} | {"b": batch}
        )
        return seconds, "planted"

    monkeypatch.setattr(prepare, "time_precisions", time_precisions)
    return given


@pytest.mark.parametrize(
    ("seconds", "chosen"),
    [
        ({"float32": 0.030, "mixed_bfloat16": 0.020}, "mixed_bfloat16"),
        ({"float32": 0.020, "mixed_bfloat16": 0.030}, "float32"),
    ],
)
def test_auto_precision_keeps_what_the_probe_measured_faster_and_records_it(
    prepared: Workspace, monkeypatch: pytest.MonkeyPatch, seconds: dict, chosen: str
) -> None:
    _bfloat16_cpu(monkeypatch)
    given = _planted(monkeypatch, seconds)
    lines: list[str] = []
    result = train(tiny(run_id=f"auto-{chosen}", precision="auto"), prepared, notify=lines.append)
    # The run's own classifier, built under each policy, at the run's batch.
    assert given == [{"float32": "float32", "mixed_bfloat16": "bfloat16", "b": 8}]
    assert result.precision == chosen
    config = read_json(Path(result.run_dir) / "config.json")
    assert config["precision"] == chosen
    record = config["precision_choice"]
    assert (record["policy"], record["flag"], record["measured"]) == (chosen, "auto", "planted")
    assert record["ms_per_step"] == pytest.approx({p: s * 1000 for p, s in seconds.items()})
    (line,) = [line for line in lines if line.startswith("precision ")]
    assert line.startswith(f"precision {chosen} (--precision auto")
    assert all(f"{policy} {s * 1000:.0f} ms" in line for policy, s in seconds.items())


@pytest.mark.slow  # seconds of training each: make test-full runs it
def test_the_precision_probe_starts_the_run_where_its_choice_given_would(
    prepared: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real probe: both policies timed on the run's own step, every variable put back,
    so the run begins with the weights that --precision <its choice> begins with."""
    from deepsight_tf.training import prepare as prepare_module
    from deepsight_tf.training.data import training_data

    _bfloat16_cpu(monkeypatch)
    measured: list[dict[str, float]] = []
    real = prepare_module.time_precisions

    def spy(*args, **kwargs):
        seconds, how = real(*args, **kwargs)
        measured.append(seconds)
        assert how.startswith("the median of up to 5 steps each") and "batch 8" in how
        return seconds, how

    monkeypatch.setattr(prepare_module, "time_precisions", spy)
    settings = resolve_settings(tiny(run_id="probe", precision="auto"))
    data = training_data(settings, prepared)
    try:
        auto = prepare_module.prepare(settings, data, prepared)
        given = prepare_module.prepare(
            resolve_settings(tiny(run_id="probe", precision=auto.precision)), data, prepared
        )
    finally:
        keras.config.set_dtype_policy("float32")
    assert len(measured) == 1 and set(measured[0]) == {"float32", "mixed_bfloat16"}
    assert all(0 < s < 60 for s in measured[0].values())
    assert auto.precision_choice.ms_per_step == pytest.approx(
        {p: s * 1000 for p, s in measured[0].items()}, abs=0.05
    )
    faster = min(measured[0], key=measured[0].get)
    assert auto.precision == faster == given.precision
    assert all(layer.trainable for layer in auto.model.layers)  # as built, nothing frozen
    for a, b in zip(auto.model.variables, given.model.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.slow  # seconds of training each: make test-full runs it
def test_a_resumed_auto_run_keeps_the_precision_it_measured(
    prepared: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Crash(Exception):
        pass

    _bfloat16_cpu(monkeypatch)
    _planted(monkeypatch, {"float32": 0.03, "mixed_bfloat16": 0.02})
    with monkeypatch.context() as crashing:
        crash_after_commit(crashing, 0, Crash)
        with pytest.raises(Crash):
            train(tiny(run_id="auto-resumed", precision="auto"), prepared)
    # The machine now measures the other way: the run goes on as it began.
    given = _planted(monkeypatch, {"float32": 0.02, "mixed_bfloat16": 0.03})
    result = train(tiny(run_id="auto-resumed", precision="auto", resume=True), prepared)
    assert given == [] and result.precision == "mixed_bfloat16"
    record = read_json(Path(result.run_dir) / "config.json")["precision_choice"]
    assert record["ms_per_step"] == pytest.approx({"float32": 30.0, "mixed_bfloat16": 20.0})


def test_transfer_from_a_run_and_stale_split(prepared: Workspace) -> None:
    # Last in the module: it tampers with the shared split.
    # A source whose BatchNorm statistics have settled (6 epochs), as a real source run's have.
    source = Path(train(tiny(run_id="source", epochs=6, lr=0.02), prepared).run_dir)
    result = train(
        tiny(
            run_id="transfer",
            weights=str(source),
            frozen_epochs=1,
            epochs=1,
            unfreeze="4",
            stem="cifar",
        ),
        prepared,
    )
    assert [p.trainable for p in result.phases] == ["head", "4"]
    source_config = read_json(source / "config.json")
    assert (
        read_json(Path(result.run_dir) / "config.json")["preprocessing"]["normalization"]
        == source_config["preprocessing"]["normalization"]
    )
    # The transfer itself, exactly: stages 0 to 3 were frozen throughout (BatchNorm in inference
    # mode), so they hold the source run's weights and statistics bit for bit; the head is new.
    from deepsight_tf.model.backbones import is_head_layer, stage_of

    source_model = network_of(keras.saving.load_model(source / MODEL_FILE, compile=False))
    transferred = network_of(
        keras.saving.load_model(Path(result.run_dir) / MODEL_FILE, compile=False)
    )
    frozen = [layer for layer in transferred.layers if stage_of(layer.name) in (0, 1, 2, 3)]
    assert sum(len(layer.weights) for layer in frozen) > 20
    for layer in frozen:
        for got, want in zip(
            layer.get_weights(), source_model.get_layer(layer.name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(got, want)
    head = [layer for layer in transferred.layers if is_head_layer(layer) and layer.weights]
    assert head and not any(
        np.array_equal(layer.get_weights()[0], source_model.get_layer(layer.name).get_weights()[0])
        for layer in head
    )
    split = prepared.scrub_dir("rgb") / "split.json"
    split.write_text(split.read_text().replace("1", "2", 1))
    with pytest.raises(StaleArtifactError, match="deepsight scrub"):
        train(tiny(run_id="stale"), prepared)
