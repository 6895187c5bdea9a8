"""How the library reports while it works, without printing: callbacks the caller supplies."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]
"""progress(task, completed, total): called as a long task advances (files read, steps run)."""

Notify = Callable[[str], None]
"""notify(message): a one-line note for the user (an estimate, a phase starting, a warning)."""
