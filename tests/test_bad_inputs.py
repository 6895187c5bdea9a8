"""Every hostile input through the command line: exit code, one line, no traceback, no loss.

Each case builds its bad input from scratch in tmp_path, runs the CLI on a copy of a
workspace that already holds a data set, a split and a finished run, and asserts the
documented exit code, exactly one line on stderr (naming what is wrong), no traceback, and
that every file stored before (and every file beside it that deepsight did not write) has the
same SHA-256 after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepsight_tf.cli import app
from deepsight_tf.core.errors import INTERNAL_EXIT_CODE
from deepsight_tf.core.workspace import CHECKPOINTS_DIR, MODEL_FILE, STATE_FILE, Workspace
from deepsight_tf.training.loop import train

from support.separable import tiny
from support.sources import add_tar_member, official_batch, random_images, write_image_folder
from support.workspaces import tree_digest

RUN = "base"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stocked(prepared: Workspace) -> Workspace:
    """A workspace with the separable data set obtained and scrubbed, and one finished run."""
    train(tiny(run_id=RUN, epochs=1), prepared)
    return prepared


@dataclass
class Case:
    """A hostile input: `make(tmp, ws)` builds it and returns the CLI arguments."""

    name: str
    make: Callable[[Path, Path], list[str]]
    exit_code: int
    says: str  # a piece of the one stderr line


def _npz(tmp: Path, name: str = "bad.npz", **arrays: np.ndarray) -> Path:
    path = tmp / name
    np.savez(path, **arrays)
    return path


def _arrays(classes: int = 3, names: list[str] | None = None) -> dict[str, np.ndarray]:
    y = np.arange(12) % classes
    out = {
        "x_train": random_images(12),
        "y_train": y,
        "x_test": random_images(6, seed=1),
        "y_test": y[:6],
    }
    if names is not None:
        out["class_names"] = np.asarray(names)
    return out


def huge_labels(tmp: Path, ws: Path) -> list[str]:
    """A few bytes whose label 2**40 would size 10**12 class names."""
    arrays = _arrays()
    arrays["y_train"] = np.full(12, 2**40, dtype=np.int64)
    return ["obtain", "--source", str(_npz(tmp, **arrays)), "--name", "huge"]


def npy_named_npz(tmp: Path, ws: Path) -> list[str]:
    path = tmp / "arrays.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros(3))
    return ["obtain", "--source", str(path), "--name", "npy"]


def repeated_class_names(tmp: Path, ws: Path) -> list[str]:
    path = _npz(tmp, **_arrays(names=["cat", "dog", "cat"]))
    return ["obtain", "--source", str(path), "--name", "twice"]


def one_class(tmp: Path, ws: Path) -> list[str]:
    return ["obtain", "--source", str(_npz(tmp, **_arrays(classes=1))), "--name", "one"]


def float_labels(tmp: Path, ws: Path) -> list[str]:
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"].astype(np.float32)
    return ["obtain", "--source", str(_npz(tmp, **arrays)), "--name", "floats"]


def object_array_npz(tmp: Path, ws: Path) -> list[str]:
    arrays = _arrays()
    arrays["class_names"] = np.asarray([{"a": 1}, "dog", "ship"], dtype=object)
    return ["obtain", "--source", str(_npz(tmp, **arrays)), "--name", "objects"]


def empty_file_npz(tmp: Path, ws: Path) -> list[str]:
    (tmp / "empty.npz").write_bytes(b"")
    return ["obtain", "--source", str(tmp / "empty.npz"), "--name", "empty"]


def zip_that_is_not_npz(tmp: Path, ws: Path) -> list[str]:
    with zipfile.ZipFile(tmp / "notes.npz", "w") as archive:
        archive.writestr("readme.txt", "hello")
    return ["obtain", "--source", str(tmp / "notes.npz"), "--name", "zipped"]


def evil_pickle_in_archive(tmp: Path, ws: Path) -> list[str]:
    """A batch whose pickle calls os.system: refused, naming the archive and the member."""
    evil = b"cos\nsystem\n(S'touch /tmp/deepsight-pwned'\ntR."
    meta = official_batch(random_images(1, 32), [0]).replace(b"batch_label", b"label_names")
    with tarfile.open(tmp / "cifar.tar.gz", "w:gz") as archive:
        add_tar_member(archive, "cifar-10-batches-py/batches.meta", meta)
        add_tar_member(archive, "cifar-10-batches-py/data_batch_1", evil)
        add_tar_member(archive, "cifar-10-batches-py/test_batch", evil)
    return ["obtain", "--source", str(tmp / "cifar.tar.gz"), "--name", "evil"]


def truncated_batch(tmp: Path, ws: Path) -> list[str]:
    folder = tmp / "cifar-10-batches-py"
    folder.mkdir()
    meta = {b"label_names": [b"cat", b"dog"]}
    import pickle

    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=3))
    whole = official_batch(random_images(4, 32), [0, 1, 0, 1])
    (folder / "data_batch_1").write_bytes(whole[: len(whole) // 2])
    (folder / "test_batch").write_bytes(whole)
    return ["obtain", "--source", str(folder), "--name", "cut"]


def bomb_strict(tmp: Path, ws: Path) -> list[str]:
    root = write_image_folder(tmp / "imgs")
    # A 5000 x 5000 PNG of one colour: 75 MB of pixels from a file of a few KB; with PIL's
    # limit lowered to 10 megapixels (see the test), it is the decompression bomb PIL refuses.
    Image.new("RGB", (5000, 5000)).save(root / "train/cat/bomb.png", optimize=True)
    return ["obtain", "--source", str(root), "--name", "bomb", "--strict"]


def train_flag(*flags: str) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, ws: Path) -> list[str]:
        return [
            "train",
            "--backbone",
            "resnet18",
            "--image-size",
            "16",
            "--width-multiplier",
            "0.0625",
            *flags,
        ]

    return make


def config_file(text: str, command: str = "train") -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, ws: Path) -> list[str]:
        (tmp / "recipe.toml").write_text(text)
        return [command, "--config", str(tmp / "recipe.toml")]

    return make


def runs_not_a_folder(tmp: Path, ws: Path) -> list[str]:
    shutil.rmtree(ws / "runs")
    (ws / "runs").write_text("a file where the runs folder belongs")
    return train_flag("--run-id", "fresh", "--epochs", "1", "--batch-size", "8")(tmp, ws)


def corrupt_state_on_resume(tmp: Path, ws: Path) -> list[str]:
    state = ws / "runs" / RUN / CHECKPOINTS_DIR / STATE_FILE
    state.write_text('{"format": 2, "commits": [')
    (ws / "runs" / RUN / "manifest.json").unlink()  # an unfinished run, as a kill leaves it
    return ["train", "--run-id", RUN, "--resume"]


def focus_pairs_file(tmp: Path, ws: Path) -> list[str]:
    secret = tmp / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n" + "user:x:1:1::/home/user:/bin/sh\n" * 50)
    return train_flag("--run-id", "focus", "--focus-pairs", f"@{secret}")(tmp, ws)


def drop_train_of_another_data_set(tmp: Path, ws: Path) -> list[str]:
    issues = tmp / "train_label_issues.csv"
    issues.write_text("index,given\n3,cat\n900000,dog\n")
    return train_flag("--run-id", "drop", "--drop-train", str(issues))(tmp, ws)


def drop_train_passwd(tmp: Path, ws: Path) -> list[str]:
    secret = tmp / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    return train_flag("--run-id", "drop", "--drop-train", str(secret))(tmp, ws)


def lambda_model(tmp: Path, ws: Path) -> list[str]:
    """model.keras replaced by one with a Lambda layer, its manifest re-signed (as an attacker
    with write access could): only safe_mode stops it, before interpret writes anything."""
    from support.planted import lambda_model_file

    run_dir = ws / "runs" / RUN
    lambda_model_file(run_dir / MODEL_FILE)
    workspace = Workspace(ws)
    workspace.write_manifest(run_dir, workspace.read_manifest(run_dir, "deepsight train"))
    return ["interpret", RUN, "--max-images", "2", "--context-images", "3", "--n-boot", "100"]


def export_over_data(tmp: Path, ws: Path) -> list[str]:
    return ["export", RUN, "--format", "savedmodel", "--out", str(ws / "data"), "--force"]


def export_over_a_stranger(tmp: Path, ws: Path) -> list[str]:
    stranger = tmp / "notes.keras"
    stranger.write_text("not an export")
    return ["export", RUN, "--format", "keras", "--out", str(stranger), "--force"]


def bad_hypotheses(tmp: Path, ws: Path) -> list[str]:
    path = tmp / "h.json"
    path.write_text('{"groups": {"warm": ["red", "violet"]}}')
    return ["explore", "--hypotheses", str(path)]


# --- flags that mean "continue" or "use what exists": what they name must be there --------
def resume_a_typo(tmp: Path, ws: Path) -> list[str]:
    """--resume of a run id with no run: refused, listing the run that can be resumed."""
    (ws / "runs" / RUN / "manifest.json").unlink()  # base is now unfinished: resumable
    return ["train", "--run-id", "bsae", "--resume"]


def plan(ws: Path, name: str, run_id: str, status: str = "done") -> None:
    """experiments/<name>/plan.json whose baseline arm is run `run_id`."""
    folder = ws / "experiments" / name
    folder.mkdir(parents=True)
    arm = {"name": "baseline", "run_id": run_id, "changes": {}, "status": status}
    (folder / "plan.json").write_text(json.dumps({"name": name, "arms": [arm], "base": {}}))


def experiment_rerun_without_resume(tmp: Path, ws: Path) -> list[str]:
    plan(ws, "seed-ideas", RUN)
    return ["experiment", "seed-ideas", "--arms", "baseline"]


def experiment_resume_a_typo(tmp: Path, ws: Path) -> list[str]:
    plan(ws, "seed-ideas", RUN)
    return ["experiment", "seed-idea", "--arms", "baseline", "--resume"]


def experiment_over_a_foreign_run(tmp: Path, ws: Path) -> list[str]:
    """An arm's run id held by a run trained by hand: never taken as the arm's result."""
    shutil.copytree(ws / "runs" / RUN, ws / "runs" / "mine-baseline")
    return ["experiment", "mine", "--arms", "baseline"]


def issues_from_a_typo(tmp: Path, ws: Path) -> list[str]:
    return ["experiment", "c", "--arms", "baseline,clean-labels", "--issues-from", "bsae"]


def weights_of_a_missing_run(tmp: Path, ws: Path) -> list[str]:
    return train_flag("--run-id", "t", "--weights", str(ws / "runs" / "bsae"))(tmp, ws)


CONTINUE_CASES = [
    Case("train --resume of a missing run", resume_a_typo, 4, "unfinished runs: base"),
    Case(
        "train --resume without --run-id",
        lambda tmp, ws: ["train", "--resume"],
        7,
        "--resume needs the --run-id",
    ),
    Case(
        "train --resume and --resume-or-start",
        lambda tmp, ws: ["train", "--run-id", RUN, "--resume", "--resume-or-start"],
        7,
        "give one",
    ),
    Case("experiment rerun without --resume", experiment_rerun_without_resume, 7, "--resume"),
    Case("experiment --resume of a missing one", experiment_resume_a_typo, 4, ": seed-ideas)"),
    Case("experiment arm over a foreign run", experiment_over_a_foreign_run, 7, "did not train"),
    Case("--issues-from a missing run", issues_from_a_typo, 4, "no run 'bsae'"),
    Case(
        "--issues-from without the clean-labels arm",
        lambda tmp, ws: ["experiment", "c", "--arms", "baseline", "--issues-from", RUN],
        7,
        "only the clean-labels arm",
    ),
    Case("--weights a missing run folder", weights_of_a_missing_run, 7, "no such file or folder"),
    Case("report A B, B missing", lambda tmp, ws: ["report", RUN, "bsae"], 4, "no run 'bsae'"),
    Case("interpret a missing run", lambda tmp, ws: ["interpret", "bsae"], 4, "no run 'bsae'"),
]


# --- every file a user hands in goes through one reader: each failure one line, its name --
def hostile(kind: str, tmp: Path) -> Path:
    """A file (or what stands where a file belongs) that no deepsight input can be."""
    if kind == "/dev/zero":
        return Path("/dev/zero")
    path = tmp / f"hostile-{kind.replace(' ', '-').replace(',', '')}"
    if kind == "nested 200,000 deep":
        path.write_text("[" * 200_000 + "]" * 200_000)  # past the parser's recursion limit
    elif kind == "nested 100 deep":
        path.write_text('{"a": ' * 100 + "1" + "}" * 100)  # parses; no input nests so deep
    elif kind == "a 5,000-digit number":
        path.write_text('{"red": ' + "9" * 5000 + "}")
    elif kind == "not UTF-8":
        path.write_bytes(b"index,given\n\xff\xfe\x00,\x81\n")
    elif kind == "1 GiB, sparse":
        with open(path, "wb") as handle:
            handle.truncate(1 << 30)
    elif kind == "a folder":
        path.mkdir()
    return path


FILE_FLAGS = {  # flag: (the command line that reads the file, exit code of bad content)
    "--hypotheses": (lambda path: ["explore", "--hypotheses", str(path)], 7),
    "--class-weights": (lambda path: train_flag("--class-weights", str(path))(Path(), Path()), 7),
    "--focus-pairs": (lambda path: train_flag("--focus-pairs", f"@{path}")(Path(), Path()), 7),
    "--drop-train": (lambda path: train_flag("--drop-train", str(path))(Path(), Path()), 3),
}
JSON_KINDS = ("nested 200,000 deep", "nested 100 deep", "a 5,000-digit number")
FILE_KINDS = ("not UTF-8", "1 GiB, sparse", "a folder", "/dev/zero")


def file_case(flag: str, kind: str) -> Case:
    command, code = FILE_FLAGS[flag]

    def make(tmp: Path, ws: Path) -> list[str]:
        return command(hostile(kind, tmp))

    # Each line names the file; where the text is read but makes no pairs, it quotes them.
    says = "hostile-" if kind != "/dev/zero" else "/dev/zero"
    if flag == "--focus-pairs" and kind == "nested 200,000 deep":
        says = "'[[[["
    return Case(f"{flag} {kind}", make, code, says)


READER_CASES = [
    *(file_case(flag, kind) for flag in ("--hypotheses", "--class-weights") for kind in JSON_KINDS),
    *(file_case(flag, kind) for flag in FILE_FLAGS for kind in FILE_KINDS),
    file_case("--focus-pairs", "nested 200,000 deep"),
    file_case("--drop-train", "nested 200,000 deep"),  # a 400,000-character CSV field
]

CASES = [
    Case("npz labels 2**40, no class names", huge_labels, 3, "labels reach 1099511627776"),
    Case(".npy named .npz", npy_named_npz, 3, "a single .npy array"),
    Case("npz class names repeated", repeated_class_names, 3, "'cat' is given twice"),
    Case("npz of one class", one_class, 3, "needs at least 2 classes"),
    Case("npz float labels", float_labels, 3, "integer labels"),
    Case("npz object array", object_array_npz, 3, "unreadable .npz"),
    Case("empty file named .npz", empty_file_npz, 3, "unreadable .npz"),
    Case("zip that is no npz", zip_that_is_not_npz, 3, "missing arrays"),
    Case("evil pickle in an archive", evil_pickle_in_archive, 3, "cifar.tar.gz, member"),
    Case("truncated batch pickle", truncated_batch, 3, "data_batch_1: truncated"),
    Case("decompression bomb, --strict", bomb_strict, 3, "too large to decode safely"),
    Case("--lr -1", train_flag("--lr", "-1"), 7, "--lr -1: must be > 0"),
    Case("--lr nan", train_flag("--lr", "nan"), 7, "--lr nan: give a finite number"),
    Case("--max-train-images 0", train_flag("--max-train-images", "0"), 7, "must be >= 1"),
    Case("--max-train-images -3", train_flag("--max-train-images", "-3"), 7, "must be >= 1"),
    Case("--run-id ..", train_flag("--run-id", ".."), 7, "not a path"),
    Case("--run-id a/b", train_flag("--run-id", "a/b"), 7, "not a path"),
    Case("--unfreeze 9", train_flag("--unfreeze", "9", "--run-id", "u9"), 7, "stages 1 to 4"),
    Case(
        "schedule of 1 step",
        train_flag(
            "--run-id", "short", "--max-train-images", "30", "--batch-size", "16", "--epochs", "1"
        ),
        7,
        "would have 1 optimizer step (30 training images at batch 16",
    ),
    Case("--checkpoint-minutes -1", train_flag("--checkpoint-minutes", "-1"), 7, "must be >= 0"),
    Case("--weights missing", train_flag("--weights", "/nowhere/w.h5"), 7, "no such file"),
    Case("--class-weights missing", train_flag("--class-weights", "/nowhere.json"), 7, "--class"),
    Case("--focus-pairs @/etc/passwd", focus_pairs_file, 7, "'root:x:0:0:root:/root:/bin/bash'"),
    Case("--drop-train of another data set", drop_train_of_another_data_set, 3, "index 900000"),
    Case("--drop-train /etc/passwd", drop_train_passwd, 3, "no 'index' column"),
    Case("--drop-train missing", train_flag("--drop-train", "/nowhere.csv"), 7, "no such file"),
    Case("runs/ not a folder", runs_not_a_folder, 10, "could not write"),
    Case("--config not TOML", config_file("[train\nlr = 1"), 7, "recipe.toml: not TOML"),
    Case("--config, no table", config_file("lr = 0.1"), 7, "'lr' is not a command's table"),
    Case("--config, unknown key", config_file("[train]\nrate = 0.1"), 7, "no setting 'rate'"),
    Case("--config, a string for a number", config_file('[train]\nlr = "fast"'), 7, "a number"),
    Case("--config, a bool for an int", config_file("[train]\nepochs = true"), 7, "whole number"),
    Case("--config, bad choice", config_file('[train]\nbackbone = "vgg"'), 7, "choose one of"),
    Case("--config missing", lambda tmp, ws: ["scrub", "--config", "/nowhere.toml"], 7, "no such"),
    Case("corrupt state.json on --resume", corrupt_state_on_resume, 5, "is unreadable"),
    Case("interpret /etc", lambda tmp, ws: ["interpret", "/etc"], 7, "not a path"),
    Case("interpret a Lambda model", lambda_model, 5, "cannot be loaded"),
    Case("export --force over data/", export_over_data, 7, "not a deepsight savedmodel export"),
    Case("export --force over a stranger", export_over_a_stranger, 7, "not a deepsight keras"),
    Case("report ../base", lambda tmp, ws: ["report", "../base"], 7, "not a path"),
    Case("hypotheses name an unknown class", bad_hypotheses, 7, "violet"),
    Case("scrub --val-size 1.5", lambda tmp, ws: ["scrub", "--val-size", "1.5"], 7, "must be"),
    *CONTINUE_CASES,
    *READER_CASES,
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_with_its_exit_code_and_loses_nothing(
    case: Case, stocked: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(stocked.root, ws)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("a file deepsight did not write")
    monkeypatch.setattr("PIL.Image.MAX_IMAGE_PIXELS", 10_000_000)
    args = case.make(tmp_path, ws)
    before = {**tree_digest(ws), **{f"outside/{k}": v for k, v in tree_digest(outside).items()}}
    result = CliRunner().invoke(app, ["--workspace", str(ws), *args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == case.exit_code, result.output
    assert len(lines) == 1, result.stderr
    assert case.says in lines[0], lines[0]
    assert "Traceback" not in result.output
    after = {**tree_digest(ws), **{f"outside/{k}": v for k, v in tree_digest(outside).items()}}
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    made_by_case = {"runs"} if case.make is runs_not_a_folder else set()
    if case.make is resume_a_typo:
        made_by_case = {f"runs/{RUN}/manifest.json"}
    assert changed <= made_by_case, sorted(changed)
    assert not Path("/tmp/deepsight-pwned").exists()


@pytest.mark.slow  # seconds of training each: make test-full runs it
def test_a_rejected_or_crashed_run_does_not_block_its_id(stocked: Workspace, tmp_path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(stocked.root, ws)
    base = ["--workspace", str(ws), "train", "--backbone", "resnet18", "--image-size", "16"]
    base += ["--width-multiplier", "0.0625"]
    refused = CliRunner().invoke(app, [*base, "--run-id", "again", "--unfreeze", "9"])
    assert refused.exit_code == 7 and not (ws / "runs" / "again").exists()
    # A crash before the first commit leaves config.json and nothing else of value.
    (ws / "runs" / "again").mkdir(parents=True)
    (ws / "runs" / "again" / "config.json").write_text("{}")
    flags = ["--run-id", "again", "--epochs", "1", "--batch-size", "8", "--augment", "none"]
    done = CliRunner().invoke(app, [*base, *flags, "--mva", "0"])
    assert done.exit_code == 0, done.output
    assert (ws / "runs" / "again" / MODEL_FILE).is_file()


@pytest.mark.slow  # seconds of training each: make test-full runs it
def test_resume_or_start_starts_a_missing_run_then_leaves_it_as_it_is(
    stocked: Workspace, tmp_path: Path
) -> None:
    """The explicit form of "continue if present" (what make all passes): a new run the
    first time, the complete run reported and nothing rewritten the second."""
    ws = tmp_path / "ws"
    shutil.copytree(stocked.root, ws)
    args = ["--workspace", str(ws), *train_flag("--run-id", "again")(tmp_path, ws)]
    flags = ["--epochs", "1", "--batch-size", "8", "--augment", "none", "--mva", "0"]
    first = CliRunner().invoke(app, [*args, *flags, "--resume-or-start"])
    assert first.exit_code == 0, first.output
    stored = tree_digest(ws / "runs" / "again")
    assert MODEL_FILE in stored
    second = CliRunner().invoke(app, [*args, "--resume-or-start"])
    assert second.exit_code == 0, second.output
    assert "run again is already complete; nothing to resume" in second.stderr
    assert tree_digest(ws / "runs" / "again") == stored


def test_image_folder_oddities_are_read_or_listed(tmp_path: Path) -> None:
    """Hidden class folders, looping links and non-files are listed as skipped with their
    reason; 16-bit PNGs are scaled to 8 bits (not clipped) and counted as converted."""
    root = write_image_folder(tmp_path / "imgs")
    hidden = root / "train" / ".ipynb_checkpoints"
    hidden.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(hidden / "x.png")
    os.symlink("loop.png", root / "train" / "cat" / "loop.png")
    (root / "train" / "cat" / "nested").mkdir()
    wide = np.full((8, 8), 31646, dtype=np.uint16)  # 48% of full scale
    Image.fromarray(wide).save(root / "train" / "dog" / "wide.png")
    ws = tmp_path / "ws"
    result = CliRunner().invoke(
        app, ["--workspace", str(ws), "--json", "obtain", "--source", str(root)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    reasons = {item["path"]: item["reason"] for item in report["skipped"]}
    assert "not a class" in reasons["train/.ipynb_checkpoints"]
    assert reasons["train/cat/loop.png"] == "broken or looping symbolic link"
    assert "folder inside a class folder" in reasons["train/cat/nested"]
    assert report["conversions"] == {"I;16 to RGB (16-bit levels scaled to 8)": 1}
    data = np.load(ws / "data" / "imgs" / "images.npz")
    index = list(data["train_paths"]).index("train/dog/wide.png")
    assert (data["x_train"][index] == round(31646 / 257)).all()


# --- nothing but the error on stderr, whatever path a command takes ------------------------
# Each command's error path in a fresh Python, as a user's shell runs it: TensorFlow's C++
# start-up lines are written when tensorflow is first imported, so only a new process shows
# them (in-process CliRunner calls find it imported). The environment has no
# TF_CPP_MIN_LOG_LEVEL: the command must quiet TensorFlow itself.
ERROR_PATHS = [  # (command line, exit code): one path of every command, each past its imports
    (["obtain", "--source", "/nowhere"], 3),
    (["scrub", "--dataset", "nope"], 4),
    (["explore", "--hypotheses", "{deep}"], 7),
    (["train", "--run-id", "bsae", "--resume"], 4),
    (["train", "--find-lr", "--dataset", "nope"], 4),
    (["experiment", "seed-idea", "--resume"], 4),
    (["interpret", "bsae"], 4),
    (["predict", "bsae", "{deep}"], 4),
    (["export", RUN, "--format", "keras", "--out", "/proc/x.keras"], 10),
    (["report", RUN, RUN], 7),
    (["report", RUN, "bsae"], 4),
    (["train", "--epoch", "3"], 2),  # a typo in a flag: Click's usage error, one line too
]


def cli_process(ws: Path, args: list[str], **popen: object) -> subprocess.Popen:
    """`python -m deepsight_tf --workspace ws ARGS` in a fresh Python, this checkout first."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "deepsight_tf", "--workspace", str(ws), *args]
    return subprocess.Popen(  # type: ignore[call-overload]
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


# The paths the issue found TensorFlow's lines on, and a usage error: `make test` runs these.
LEAKED = [ERROR_PATHS[8], ERROR_PATHS[9], ERROR_PATHS[-1]]


def assert_one_line_each(stocked: Workspace, tmp_path: Path, paths: list) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(stocked.root, ws)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    runs = [[str(deep) if a == "{deep}" else a for a in args] for args, _ in paths]
    done: list[tuple[int, str]] = []
    for start in range(0, len(runs), 3):  # three at a time: each imports TensorFlow
        batch = [cli_process(ws, args) for args in runs[start : start + 3]]
        done += [(p.wait(timeout=300), p.stderr.read()) for p in batch]  # type: ignore[union-attr]
    for (args, code), (returncode, stderr) in zip(paths, done, strict=True):
        lines = stderr.splitlines()
        assert (returncode, len(lines)) == (code, 1), (args, stderr)
        assert lines[0].startswith("error ("), (args, stderr)


def test_export_report_and_usage_errors_in_a_fresh_process_are_one_line_on_stderr(
    stocked: Workspace, tmp_path: Path
) -> None:
    assert_one_line_each(stocked, tmp_path, LEAKED)


@pytest.mark.slow  # 60 s: a fresh Python (TensorFlow imported anew) for each of 12 commands
def test_every_command_error_path_in_a_fresh_process_is_one_line_on_stderr(
    stocked: Workspace, tmp_path: Path
) -> None:
    assert_one_line_each(stocked, tmp_path, ERROR_PATHS)


def test_unforeseen_exception_is_one_line_with_exit_70_and_a_traceback_with_debug(
    stocked: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception no code foresaw (here a RecursionError planted in explore) is a bug or a
    failure such as running out of memory: one line, exit 70; --debug shows the traceback."""

    def explode(*args: object, **kwargs: object) -> None:
        raise RecursionError("maximum recursion depth exceeded\nwhile planting")

    monkeypatch.setattr("deepsight_tf.data.explore.explore", explode)
    args = ["--workspace", str(stocked.root), "explore"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == INTERNAL_EXIT_CODE
    assert done.stderr.splitlines() == [
        "error (unexpected): RecursionError: maximum recursion depth exceeded\\nwhile planting; "
        "rerun with --debug for the traceback"
    ]
    debug = CliRunner().invoke(app, ["--debug", *args])
    assert isinstance(debug.exception, RecursionError)


def test_line_breaks_escapes_and_surrogates_in_a_message_stay_on_one_line(
    stocked: Workspace, tmp_path: Path
) -> None:
    """A class name from a user's file, quoted in the error, cannot break the line, move the
    cursor or fail to encode."""
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"confusable_pairs": [["red", "vio\nlet\u001b[2J\u202e\ud800"]]}))
    done = CliRunner().invoke(
        app, ["--workspace", str(stocked.root), "explore", "--hypotheses", str(path)]
    )
    assert done.exit_code == 7
    assert len(done.stderr.splitlines()) == 1
    assert "'vio\\nlet\\x1b[2J\\u202e\\ud800'" in done.stderr


# --- a stop is quick: a container manager sends SIGKILL 10 s after SIGTERM ------------------
@pytest.mark.slow  # seconds of training each: make test-full runs it
def test_sigterm_exits_within_2_seconds_of_the_commit(stocked: Workspace, tmp_path: Path) -> None:
    """The real command in a fresh process: SIGTERM after the second epoch's row; the commit
    (state.json written) to the process's end is under 2 s, exit code 143. (TensorFlow's
    teardown alone took about 3 s of it here, 7 s on CIFAR-10.)"""
    ws = tmp_path / "ws"
    shutil.copytree(stocked.root, ws)
    flags = ["--epochs", "40", "--batch-size", "8", "--augment", "none", "--mva", "0"]
    flags += ["--checkpoint-minutes", "0", "--no-estimate", "--run-id", "term"]
    process = cli_process(ws, train_flag(*flags)(tmp_path, ws))
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("phase 1 epoch 2 "):
            break
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    returncode = process.wait(timeout=60)
    ended = time.time()
    committed = (ws / "runs" / "term" / CHECKPOINTS_DIR / STATE_FILE).stat().st_mtime
    assert returncode == 143, rest
    assert "continue with: deepsight" in rest and "train --run-id term --resume" in rest
    assert ended - committed < 2.0, f"{ended - committed:.2f} s from the commit to the exit"
