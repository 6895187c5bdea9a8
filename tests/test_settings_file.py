"""Recipes as files: `--config FILE` equals the same flags, flags override the file, and a run's
stored settings.toml repeats the run (its config.json equal but for times and its name)."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from deepsight_tf.cli import app
from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.settings import InterpretSettings, ScrubSettings, TrainSettings
from deepsight_tf.core.settings_file import (
    PER_INVOCATION,
    read_settings_file,
    settings_from_file,
    settings_toml,
)
from deepsight_tf.core.workspace import CONFIG_FILE, SETTINGS_FILE, Workspace

from support.separable import separable_workspace

# Times and names that differ between two runs of one recipe; everything else must match.
VOLATILE = {"run_id", "created", "started", "finished", "seconds", "duration_s", "measured"}

TINY_FLAGS = [
    "--backbone", "resnet18", "--image-size", "16", "--width-multiplier", "0.0625",
    "--batch-size", "8", "--epochs", "1",
    "--lr", "0.05", "--augment", "none", "--seed", "3", "--no-estimate", "--precision", "float32",
    "--label-smoothing", "0.1", "--flip", "alternate", "--lookahead",
]  # fmt: skip


def _cli_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls) if f.metadata.get("cli", True))


@pytest.mark.parametrize(
    "settings",
    [
        TrainSettings(),
        TrainSettings(
            backbone="airbench94", image_size=32, lr=1.5, momentum=0.85, lookahead=True,
            label_smoothing=0.2, tta="flip-translate", budget="10m", run_id="x", resume=True,
            weights='/tmp/odd "name"/w.weights.h5',
        ),
        TrainSettings(epochs=3, last_epoch_steps=2),  # a schedule fixed by hand
        InterpretSettings(methods="gradcam", max_images=7, imagenet_evidence=False),
        ScrubSettings(val_size=0.2),
    ],
    ids=["train defaults", "train recipe", "train schedule", "interpret", "scrub"],
)  # fmt: skip
def test_a_settings_file_reads_back_as_the_settings_it_was_written_from(
    settings: Any, tmp_path: Path
) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(settings_toml(settings))
    cls = type(settings)
    values = read_settings_file(path, cls, _cli_names(cls))
    expected = {
        f.name: getattr(settings, f.name)
        for f in fields(settings)
        if f.name not in PER_INVOCATION and f.metadata.get("cli", True)
    }
    assert values == {k: v for k, v in expected.items() if v is not None}
    reset = {f.name: f.default for f in fields(settings) if f.name in PER_INVOCATION}
    assert cls(**values) == replace(settings, **reset)


def test_one_file_holds_every_phase_and_each_reads_its_own_table(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text("[train]\nimage-size = 24\nlr = 1\n\n[scrub]\nval_size = 0.25\n")
    assert read_settings_file(path, TrainSettings, _cli_names(TrainSettings)) == {
        "image_size": 24,
        "lr": 1.0,  # a TOML integer where a rate is wanted
    }
    assert read_settings_file(path, ScrubSettings, _cli_names(ScrubSettings)) == {"val_size": 0.25}
    assert read_settings_file(path, InterpretSettings, _cli_names(InterpretSettings)) == {}
    # experiment names its arms' runs itself: a recipe's run id is left to it, not refused
    path.write_text('[train]\nrun-id = "mine"\nlr = 0.5\n')
    names = _cli_names(TrainSettings) - {"run_id", "resume", "resume_or_start"}
    assert read_settings_file(path, TrainSettings, names) == {"lr": 0.5}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return separable_workspace(tmp_path_factory.mktemp("recipes"))


def _train(ws: Workspace, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), "train", *args])
    assert result.exit_code == 0, result.output
    run_id = args[args.index("--run-id") + 1]
    return json.loads((ws.root / "runs" / run_id / CONFIG_FILE).read_text())


def _steady(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_steady(v) for v in value]
    return value


@pytest.mark.slow  # two runs of training: make test-full runs it
def test_config_equals_the_flags_and_a_runs_settings_file_repeats_it(workspace: Workspace) -> None:
    by_flags = _train(workspace, "--run-id", "flags", *TINY_FLAGS)
    stored = workspace.root / "runs" / "flags" / SETTINGS_FILE
    assert "run-id" not in stored.read_text()  # a recipe, not this run's name
    # as given: what deepsight decides from the weights (rate, frozen phase, stages) is left
    # to decide again, so the file with --weights imagenet gets the pretrained defaults
    assert not {"frozen-epochs", "unfreeze", "stem"} & {
        line.split(" = ")[0] for line in stored.read_text().splitlines()
    }
    repeated = _train(workspace, "--run-id", "again", "--config", str(stored))
    assert _steady(repeated) == _steady(by_flags)
    assert repeated["settings"]["lookahead"] is True

    # A flag typed after --config beats the file: a bad one fails where the file's was fine.
    ws = ["--workspace", str(workspace.root)]
    typed = ["train", "--run-id", "typed", "--config", str(stored), "--lr", "-1"]
    result = CliRunner().invoke(app, [*ws, *typed])
    assert result.exit_code == 7 and "--lr -1" in result.stderr, result.output


def test_the_default_is_the_recipe_written_out_and_the_one_make_all_trains() -> None:
    root = Path(__file__).resolve().parents[1]
    recipe = root / "assets" / "recipes" / "airbench94.toml"
    written = settings_from_file(recipe, TrainSettings, budget="30m")
    assert written == TrainSettings(budget="30m")  # the file cannot drift from the defaults
    assert (written.backbone, written.image_size, written.batch_size, written.tta) == (
        "airbench94",
        32,
        1024,
        "flip-translate",
    )
    makefile = (root / "Makefile").read_text()
    train_line = next(line for line in makefile.splitlines() if "$(DEEPSIGHT) train " in line)
    assert "--config" not in train_line and "--backbone" not in train_line


def test_unset_settings_take_their_backbones_recipe() -> None:
    from deepsight_tf.core.recipes import GENERAL_RECIPE, recipe_for

    resnet = TrainSettings(backbone="resnet18")
    assert {name: getattr(resnet, name) for name in GENERAL_RECIPE} == dict(GENERAL_RECIPE)
    assert resnet.lr is None  # decided with the weights, in training.plan.resolve_settings
    airbench = TrainSettings()
    assert {name: getattr(airbench, name) for name in recipe_for("airbench94")} == recipe_for(
        "airbench94"
    )
    # A value given wins over the recipe, for any backbone; None means "the recipe's".
    assert TrainSettings(image_size=48, batch_size=None).image_size == 48
    assert TrainSettings(batch_size=None).batch_size == 1024
    # The recipe's rate is for training from scratch; from a run's weights the pretrained rule.
    assert TrainSettings().lr == 1.5 and TrainSettings(weights="runs/a").lr is None
    # replace() keeps what the settings hold; an experiment arm that swaps the backbone
    # passes None for the recipe settings it wants the new backbone's values of.
    swapped = replace(airbench, backbone="resnet18", image_size=None, tta=None)
    assert (swapped.image_size, swapped.tta, swapped.batch_size) == (64, "none", 1024)


def test_strings_toml_cannot_hold_raw_are_escaped_or_refused(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    odd = TrainSettings(weights='/tmp/del\x7f"q\\é\u2028.weights.h5', lr=np.float64(0.5))
    path.write_text(settings_toml(odd))
    values = read_settings_file(path, TrainSettings, _cli_names(TrainSettings))
    assert values["weights"] == odd.weights and values["lr"] == 0.5
    with pytest.raises(ConfigError, match=r"--drop-train .*not UTF-8 text"):
        settings_toml(TrainSettings(drop_train="/tmp/\udcff.csv"))
    path.write_text("[train]\nimage-size = 24\nimage_size = 32\n")
    with pytest.raises(ConfigError, match="sets image-size twice"):
        read_settings_file(path, TrainSettings, _cli_names(TrainSettings))
