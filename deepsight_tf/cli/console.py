"""The command line's terminal: consoles, error lines and exit codes, progress bars, JSON out."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from deepsight_tf.core.errors import DeepsightError
from deepsight_tf.core.storage import to_jsonable
from deepsight_tf.core.workspace import Workspace

# emoji=False: ":x:" in a path or a file must stay ":x:", never become an emoji.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """The global options of one invocation (set by the app's callback)."""

    workspace: Workspace = Workspace("workspace")
    debug: bool = False
    json: bool = False


state = State()


def handle_errors(func: F) -> F:
    """Turn DeepsightError into one line on stderr and its exit code (traceback with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DeepsightError as exc:
            if state.debug:
                raise
            # The message is text, not markup: a file name or an interval in brackets stays as is.
            err_console.print(
                f"[bold red]error[/] ({exc.kind}): {escape(str(exc))}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if state.debug:
                raise
            err_console.print("[yellow]interrupted[/]; nothing half-written was kept")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr, driven by the library's progress(task, done, total) calls."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    tasks: dict[str, int] = {}
    if not err_console.is_terminal:  # logs and pipes get results, not redraw sequences
        yield lambda task, done, total: None
        return
    with Progress(*columns, console=err_console, transient=True) as bar:

        def update(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total)
            bar.update(tasks[task], completed=done, total=total)

        yield update


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter (CUDA probing) kept off the terminal.

    TF_CPP_MIN_LOG_LEVEL does not silence the messages logged before absl is initialised, so
    stderr is pointed at /dev/null for the import alone; --debug keeps them.
    """
    if state.debug or "tensorflow" in sys.modules:
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf

            tf.get_logger().setLevel("ERROR")  # retracing notices and the like
            tf.config.list_physical_devices("GPU")  # CUDA probing logs "cuInit" here, quietly
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def emit_json(result: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(result), indent=2) + "\n")
