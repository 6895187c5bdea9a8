"""`deepsight train` that kills itself (SIGKILL) at a chosen point of its checkpoint writes.

Usage: python tests/fault_worker.py WHERE N -- <deepsight arguments>
  WHERE = checkpoint: half-way through writing the Nth checkpoint file (a torn temporary file)
  WHERE = state:      after the Nth checkpoint file is complete, before state.json names it
Anything else in the process is the real CLI, so the run is the one a user would start.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    where, n = sys.argv[1], int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1 :]
    import numpy as np

    from deepsight_tf.training import checkpoints

    seen = {"writes": 0}
    if where == "checkpoint":
        real_savez = np.savez

        def torn_savez(handle: Any, **arrays: Any) -> None:
            if any(k.startswith("model.") for k in arrays):
                seen["writes"] += 1
                if seen["writes"] == n:
                    buffer = io.BytesIO()
                    real_savez(buffer, **arrays)
                    handle.write(buffer.getvalue()[: buffer.tell() // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                    die()
            real_savez(handle, **arrays)

        np.savez = torn_savez
    elif where == "state":
        real_write = checkpoints.CheckpointStore._write_state

        def write_state(self: Any, commits: Any, created: Any) -> None:
            seen["writes"] += 1
            if seen["writes"] == n:
                die()
            real_write(self, commits, created)

        checkpoints.CheckpointStore._write_state = write_state  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown kill point {where!r}")
    from deepsight_tf.cli import app

    sys.argv = ["deepsight", *args]
    app()


if __name__ == "__main__":
    main()
