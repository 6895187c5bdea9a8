"""Workspaces in tests: a copy to write in, and a digest that proves nothing changed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from deepsight_tf.core.workspace import Workspace


def copy_workspace(workspace: Workspace, root: Path) -> Workspace:
    """A copy of `workspace` at root/ws, for a test module to write in while others read the
    original (manifests hold paths relative to the workspace, so the copy verifies)."""
    copy = Workspace(root / "ws")
    shutil.copytree(workspace.root, copy.root, ignore=shutil.ignore_patterns(".locks"))
    return copy


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root with its SHA-256: to prove a failed command changed nothing."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".locks" not in p.parts
    }
