"""TensorFlow's C++ start-up lines kept off stderr, on whatever path a command imports it.

Importing tensorflow writes "All log messages before absl::InitializeLog()...", "oneDNN custom
operations are on...", "Could not find cuda drivers..." (each twice) and, at the first device
query, "failed call to cuInit" straight to file descriptor 2, some of it before
TF_CPP_MIN_LOG_LEVEL applies. So the CLI installs an import hook: the first `import
tensorflow`, whichever module makes it (keras, a phase, a plot), runs with fd 2 pointed at
/dev/null, and its device query with it. Only those seconds are muted; later C++ errors and
fatal messages still reach the terminal. `--debug` installs nothing and sees every line.
deepsight starts no child processes; TF_CPP_MIN_LOG_LEVEL is set in the environment, so any
process started from this one inherits the level.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

TENSORFLOW = "tensorflow"


@contextlib.contextmanager
def stderr_muted() -> Iterator[None]:
    """File descriptor 2 (what C++ writes to) pointed at /dev/null for the block."""
    sys.stderr.flush()  # what Python wrote before the block still reaches the terminal
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _MutedLoader:
    """Runs tensorflow's real loader with stderr muted, then hands the module back to it."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with stderr_muted():
            self.loader.exec_module(module)
            module.get_logger().setLevel("ERROR")  # retracing notices and the like
            module.config.list_physical_devices("GPU")  # CUDA probing logs "cuInit" here
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _QuietImport:
    """A meta-path finder that wraps the loader of `import tensorflow` (it stays installed,
    one string comparison an import; once tensorflow is loaded, nothing asks it again)."""

    def __init__(self) -> None:
        self.finding = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name != TENSORFLOW or self.finding:
            return None
        self.finding = True  # the real finders, after this one, find the real module
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _MutedLoader(spec.loader)  # type: ignore[assignment]
        return spec


def install() -> None:
    """Quiet TensorFlow's C++ logging for this process (no-op once tensorflow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # info and warnings after start-up
    if TENSORFLOW in sys.modules or any(isinstance(f, _QuietImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietImport())
