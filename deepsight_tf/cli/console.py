"""The command line's terminal: consoles, error lines and exit codes, progress bars, JSON out."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # Typer's own click
from typer.core import TyperGroup

from deepsight_tf.core.errors import INTERNAL_EXIT_CODE, DeepsightError
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


def one_line(text: str) -> str:
    """Text for the one error line: a line break, an escape sequence, a bidi override or a
    lone surrogate (from a file name, a class name, a quoted line of a file) is shown escaped,
    so the message stays one line and prints on any terminal."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


def print_error(kind: str, message: str) -> None:
    """`error (kind): message` on stderr, one line. The message is text, not markup: a file
    name or an interval in brackets stays as is."""
    err_console.print(
        f"[bold red]error[/] ({kind}): {escape(one_line(message))}",
        highlight=False,
        soft_wrap=True,
    )


def handle_errors(func: F) -> F:
    """Turn DeepsightError into one line on stderr and its exit code (traceback with --debug).

    Anything else that escapes a command is a bug or a failure nothing foresaw (out of
    memory, an I/O error): one line too, exit code INTERNAL_EXIT_CODE, and --debug shows the
    traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DeepsightError as exc:
            if state.debug:
                raise
            print_error(exc.kind, str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if state.debug:
                raise
            err_console.print("[yellow]interrupted[/]; nothing half-written was kept")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except Exception as exc:
            if state.debug:
                raise
            print_error(
                "unexpected",
                f"{type(exc).__name__}: {exc}; rerun with --debug for the traceback",
            )
            raise typer.Exit(INTERNAL_EXIT_CODE) from None

    return wrapper  # type: ignore[return-value]


class OneLineUsageErrors(TyperGroup):
    """Click's usage errors (an unknown flag, a value outside a flag's choices, a missing
    argument) as one line on stderr with exit code 2, like every other error, in place of
    Typer's usage block and panel."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as exc:  # `deepsight` alone: Typer printed the help
            sys.exit(exc.exit_code)
        except ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            see = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
            print_error("usage", exc.format_message().rstrip(".") + see)
            sys.exit(exc.exit_code)
        except typer.Abort:
            print_error("usage", "aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


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
    """Import TensorFlow now, before a progress bar draws: its start-up is muted (see
    quiet_tensorflow.py), and a live bar's redraw must not fall into those seconds."""
    import tensorflow  # noqa: F401


def emit_json(result: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(result), indent=2) + "\n")
