"""Workspace: atomic writes, manifests that catch tampering, locks, storage errors."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deepsight_tf.core.errors import (
    PrerequisiteError,
    StaleArtifactError,
    StorageError,
    WorkspaceBusyError,
)
from deepsight_tf.core.manifest import Manifest
from deepsight_tf.core.storage import atomic_path, atomic_save_npz, atomic_write_text, sha256_file
from deepsight_tf.core.workspace import Workspace


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_full_disk_is_a_storage_error_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "images.npz"
    atomic_save_npz(target, x=np.arange(3))
    before = sha256_file(target)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(StorageError, match="No space left on device; free some disk space"):
        atomic_save_npz(target, x=np.arange(5))
    assert sha256_file(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.npz"]


def _artifact(ws: Workspace) -> Path:
    folder = ws.data_dir("d")
    atomic_write_text(folder / "out.txt", "payload")
    ws.write_manifest(folder, Manifest(phase="obtain", settings={}, outputs={"out.txt": ""}))
    return folder


def test_manifest_records_hashes_and_verify_passes(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    folder = _artifact(ws)
    manifest = ws.verify(folder, "deepsight obtain")
    assert manifest.outputs == {"out.txt": sha256_file(folder / "out.txt")}
    assert manifest.versions["numpy"] == np.__version__
    assert ws.datasets() == ["d"]


def test_tampered_output_is_refused_with_the_phase_to_rerun(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    folder = _artifact(ws)
    (folder / "out.txt").write_text("tampered")
    with pytest.raises(StaleArtifactError, match=r"out\.txt does not match.*`deepsight obtain`"):
        ws.verify(folder, "deepsight obtain")


def test_missing_artifact_names_the_phase(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    with pytest.raises(PrerequisiteError, match="run `deepsight obtain` first"):
        ws.resolve_dataset(None)
    with pytest.raises(PrerequisiteError, match="run `deepsight scrub` first"):
        ws.verify(ws.scrub_dir("d"), "deepsight scrub")


def test_stale_input_is_refused(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    manifest = Manifest(phase="scrub", settings={}, inputs={"data set": {"sha256": "aaa"}})
    ws.check_inputs(manifest, {"data set": "aaa"}, "scrub", "deepsight scrub")
    with pytest.raises(StaleArtifactError, match="older data set; rerun `deepsight scrub`"):
        ws.check_inputs(manifest, {"data set": "bbb"}, "scrub", "deepsight scrub")


def test_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with ws.lock("data-d"):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    start = time.monotonic()
    with (
        pytest.raises(WorkspaceBusyError, match=r"'data-d' is locked by pid \d+"),
        ws.lock("data-d", timeout_s=0.5),
    ):
        pass
    assert 0.4 < time.monotonic() - start < 3
    with ws.lock("other", timeout_s=0.1):  # other artifacts stay free
        pass
    release.set()
    thread.join()
    with ws.lock("data-d", timeout_s=0.1):
        pass


def test_artifacts_are_readable_by_others(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "report.html", "<html></html>")
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644
