"""The DeepsightError hierarchy: each kind of failure has its own exit code."""

from __future__ import annotations

from collections.abc import Sequence

# An exception that is no DeepsightError escaped a command: a bug, or a failure nothing
# foresaw (out of memory, an I/O error); sysexits.h's EX_SOFTWARE.
INTERNAL_EXIT_CODE = 70


class DeepsightError(Exception):
    """A failure the user can act on; the CLI prints it as one line and exits with `exit_code`."""

    exit_code = 1
    kind = "error"


class DataError(DeepsightError, ValueError):
    """The input data is broken or not in a format deepsight reads (also a ValueError, so a
    Python caller that passes bad arrays can catch it as one)."""

    exit_code = 3
    kind = "bad input data"


class PrerequisiteError(DeepsightError):
    """An artifact that an earlier phase writes is missing."""

    exit_code = 4
    kind = "missing prerequisite"


class StaleArtifactError(DeepsightError):
    """An artifact no longer matches its manifest (tampered, half-written or outdated)."""

    exit_code = 5
    kind = "stale or tampered artifact"


class OfflineError(DeepsightError):
    """Something had to be downloaded and the network could not be reached."""

    exit_code = 6
    kind = "offline"


class ConfigError(DeepsightError):
    """A setting or flag has a value deepsight cannot use."""

    exit_code = 7
    kind = "configuration"


class GateFailedError(DeepsightError):
    """A quality gate (the Minimum Viable Accuracy) was not met."""

    exit_code = 8
    kind = "gate failed"


class WorkspaceBusyError(DeepsightError):
    """Another deepsight command holds the lock on the same workspace artifact."""

    exit_code = 9
    kind = "workspace busy"


class StorageError(DeepsightError):
    """Writing to the workspace failed (disk full, permissions); earlier artifacts are kept."""

    exit_code = 10
    kind = "storage"


class TrainingInterrupted(DeepsightError):
    """Ctrl-C or SIGTERM during training: the state was saved; the message says how to resume.

    The exit code is the shell's for the signal: 130 for SIGINT (the default), 143 for SIGTERM.
    """

    exit_code = 130
    kind = "interrupted"

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def short_list(names: Sequence[str], limit: int = 12, empty: str = "none") -> str:
    """Names as a comma list for a one-line message, cut after `limit` (100 classes, 80 runs)."""
    if not names:
        return empty
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")
