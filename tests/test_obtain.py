"""deepsight obtain: storing, no-op reruns, every bad input, and concurrent runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepsight_tf.cli import app
from deepsight_tf.core.errors import DataError, OfflineError, StaleArtifactError
from deepsight_tf.core.settings import ObtainSettings
from deepsight_tf.core.storage import read_json
from deepsight_tf.core.workspace import Workspace
from deepsight_tf.data.dataset import load_dataset
from deepsight_tf.data.obtain import SCHEMA as OBTAIN_SCHEMA
from deepsight_tf.data.obtain import ObtainResult, obtain

from support.sources import CLASS_NAMES, write_archive, write_batches, write_image_folder, write_npz
from support.workspaces import tree_digest

ROOT = Path(__file__).resolve().parents[1]


def run(runner: CliRunner, workspace: Path, *args: str, json: bool = False):
    head = ["--workspace", str(workspace), *(["--json"] if json else [])]
    return runner.invoke(app, [*head, "obtain", *args])


def test_obtain_stores_the_data_set_with_provenance(tmp_path: Path, workspace: Path) -> None:
    expected = write_batches(tmp_path / "cifar-10-batches-py")
    result = obtain(
        ObtainSettings(source=str(tmp_path / "cifar-10-batches-py")), Workspace(workspace)
    )
    assert result.dataset == "cifar-10-batches-py"
    per_class = np.bincount(expected["y_train"], minlength=3)
    assert result.counts["train"] == dict(zip(CLASS_NAMES, per_class.tolist(), strict=True))
    data, manifest = load_dataset(Workspace(workspace))
    np.testing.assert_array_equal(data.x_train, expected["x_train"])
    np.testing.assert_array_equal(data.y_test, expected["y_test"])
    assert data.class_names == CLASS_NAMES
    assert data.test_paths[0] == "test_batch:0"
    assert manifest.outputs["images.npz"] == result.sha256
    assert manifest.inputs["source"]["kind"] == "batches"
    stored = read_json(Workspace(workspace).data_dir(result.dataset) / "report.json")
    assert stored["schema"] == OBTAIN_SCHEMA and ObtainResult.from_dict(stored) == result


def test_second_run_is_a_no_op_and_a_changed_source_is_reread(
    runner: CliRunner, tmp_path: Path, workspace: Path
) -> None:
    root = write_image_folder(tmp_path / "imgs")
    first = run(runner, workspace, "--source", str(root))
    assert first.exit_code == 0, first.output
    assert "stored in" in first.stdout
    before = tree_digest(workspace)
    second = run(runner, workspace, "--source", str(root))
    assert second.exit_code == 0 and "up to date" in second.stdout
    assert tree_digest(workspace) == before
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train/cat/new.png")
    third = run(runner, workspace, "--source", str(root), json=True)
    assert third.exit_code == 0
    assert '"up_to_date": false' in third.stdout and '"cat": 4' in third.stdout


def test_archive_through_the_cli(runner: CliRunner, tmp_path: Path, workspace: Path) -> None:
    write_batches(tmp_path / "b")
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", tmp_path / "b")
    result = run(runner, workspace, "--source", str(archive), "--name", "cifar10")
    assert result.exit_code == 0, result.output
    data, _ = load_dataset(Workspace(workspace), "cifar10")
    assert data.x_train.shape == (8, 32, 32, 3)


def _bad_mixed_sizes(root: Path) -> None:
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "train/cat/odd.png")


def _bad_empty_class(root: Path) -> None:
    (root / "train/empty").mkdir()


def _bad_unknown_test_class(root: Path) -> None:
    (root / "test/horse").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "test/horse/0.png")


def _bad_all_corrupt_class(root: Path) -> None:
    for path in (root / "test/ship").iterdir():
        path.write_bytes(b"garbage")


def _bad_corrupt_strict(root: Path) -> None:
    (root / "train/cat/broken.jpg").write_bytes(b"\xff\xd8 truncated")


@pytest.mark.parametrize(
    ("break_it", "extra", "message"),
    [
        (_bad_mixed_sizes, [], "odd.png: image is 9x9 but most are 8x8"),
        (_bad_empty_class, [], "train/empty: class folder holds no images"),
        (_bad_unknown_test_class, [], "class 'horse' is in test/ but not in train/"),
        (_bad_all_corrupt_class, [], "test/ship: every image in this class folder is unreadable"),
        (_bad_corrupt_strict, ["--strict"], "broken.jpg: corrupt or truncated image"),
    ],
)
def test_bad_input_fails_cleanly_and_keeps_what_was_stored(
    runner: CliRunner,
    tmp_path: Path,
    workspace: Path,
    break_it,
    extra,
    message,
) -> None:
    good = write_image_folder(tmp_path / "good")
    assert run(runner, workspace, "--source", str(good), "--name", "d").exit_code == 0
    before = tree_digest(workspace)
    bad = write_image_folder(tmp_path / "bad")
    break_it(bad)
    result = run(runner, workspace, "--source", str(bad), "--name", "d", *extra)
    assert result.exit_code == DataError.exit_code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert tree_digest(workspace) == before


def test_skipped_files_are_reported_not_fatal(
    runner: CliRunner, tmp_path: Path, workspace: Path
) -> None:
    root = write_image_folder(tmp_path / "imgs")
    _bad_corrupt_strict(root)
    result = run(runner, workspace, "--source", str(root))
    assert result.exit_code == 0
    assert "skipped 1 files" in result.stdout and "train/cat/broken.jpg" in result.stdout
    stored = read_json(Workspace(workspace).data_dir("imgs") / "report.json")
    del stored["schema"]  # written before versions were: read as version 0
    back = ObtainResult.from_dict(stored)
    assert back.schema == 0
    assert [(s.path, type(s).__name__) for s in back.skipped] == [
        ("train/cat/broken.jpg", "SkippedFile")
    ]


def test_missing_source_and_bad_name_have_distinct_codes(
    runner: CliRunner, tmp_path: Path, workspace: Path
) -> None:
    missing = run(runner, workspace, "--source", str(tmp_path / "nope"))
    assert missing.exit_code == DataError.exit_code
    assert "no such file or folder" in missing.stderr
    assert not workspace.exists()  # refused before a lock or a folder was made
    bad_name = run(
        runner, workspace, "--source", str(write_npz(tmp_path / "d.npz")), "--name", "../x"
    )
    assert bad_name.exit_code == 7 and "--name" in bad_name.stderr


def test_offline_download_says_to_use_source(
    runner: CliRunner, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras.utils

    def no_network(**kwargs: object) -> str:
        raise Exception(
            "URL fetch failure on https://example: None -- [Errno -2] Name or service not known"
        )

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    result = run(runner, workspace)
    assert result.exit_code == OfflineError.exit_code
    assert "pass --source PATH" in result.stderr
    assert not (workspace / "data").exists()


def test_tampered_store_is_detected_and_repaired_by_rerunning(
    tmp_path: Path, workspace: Path
) -> None:
    settings = ObtainSettings(source=str(write_npz(tmp_path / "d.npz")))
    obtain(settings, Workspace(workspace))
    store = workspace / "data" / "d" / "images.npz"
    store.write_bytes(store.read_bytes()[:-10])
    with pytest.raises(StaleArtifactError, match="rerun `deepsight obtain`"):
        load_dataset(Workspace(workspace))
    assert obtain(settings, Workspace(workspace)).up_to_date is False
    load_dataset(Workspace(workspace))


def test_two_obtains_at_once_do_not_corrupt_the_store(tmp_path: Path, workspace: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", per_class=150, size=16)
    env = {**os.environ, "DEEPSIGHT_WORKSPACE": str(workspace)}
    cmd = [sys.executable, "-m", "deepsight_tf", "--json", "obtain", "--source", str(root)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    flags = sorted('"up_to_date": true' in out for out, _ in outputs)
    assert flags == [False, True]  # one stored it, the other waited and found it current
    data, _ = load_dataset(Workspace(workspace))
    assert data.x_train.shape == (450, 16, 16, 3)


def test_busy_workspace_refuses_after_the_timeout(tmp_path: Path, workspace: Path) -> None:
    import threading

    ws = Workspace(workspace)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with ws.lock("data-d"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    env_timeout = os.environ.get("DEEPSIGHT_LOCK_TIMEOUT")
    os.environ["DEEPSIGHT_LOCK_TIMEOUT"] = "0.3"
    try:
        result = CliRunner().invoke(
            app,
            [
                "--workspace",
                str(workspace),
                "obtain",
                "--source",
                str(write_npz(tmp_path / "d.npz")),
            ],
        )
    finally:
        release.set()
        thread.join()
        if env_timeout is None:
            os.environ.pop("DEEPSIGHT_LOCK_TIMEOUT")
        else:
            os.environ["DEEPSIGHT_LOCK_TIMEOUT"] = env_timeout
    assert result.exit_code == 9 and "locked by pid" in result.stderr
