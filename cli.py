"""The deepsight command line: parses flags, calls the library, renders results with rich."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from deepsight_tf.config import ObtainSettings
from deepsight_tf.errors import DeepsightError
from deepsight_tf.workspace import Workspace, to_jsonable

app = typer.Typer(
    help=(
        "Transfer learning on CIFAR-10 (or any image folder) that puts the model and the data "
        "on trial."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


class State:
    workspace: Workspace = Workspace("workspace")
    debug: bool = False
    json: bool = False


state = State()


@app.callback()
def main(
    workspace: Annotated[
        Path,
        typer.Option(envvar="DEEPSIGHT_WORKSPACE", help="Workspace folder for every artifact."),
    ] = Path("workspace"),
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a machine-readable result on stdout.")
    ] = False,
) -> None:
    """Obtain, scrub, explore, train and interpret: each phase reads what the one before wrote."""
    state.workspace = Workspace(workspace)
    state.debug = debug
    state.json = json_out
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def handle_errors(func: F) -> F:
    """Turn DeepsightError into one line on stderr and its exit code (traceback with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DeepsightError as exc:
            if state.debug:
                raise
            err_console.print(
                f"[bold red]error[/] ({exc.kind}): {exc}", highlight=False, soft_wrap=True
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
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def emit_json(result: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(result), indent=2) + "\n")


@app.command()
@handle_errors
def obtain(
    source: Annotated[
        str | None,
        typer.Option(
            help="Local copy: cifar-10-python.tar.gz, cifar-10-batches-py/, an image folder "
            "(train/<class>/, test/<class>/) or an .npz. Default: Keras's CIFAR-10 download."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Data set name in the workspace.")] = None,
    resize: Annotated[
        int | None, typer.Option(help="Resize every image to NxN (for mixed sizes).")
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Refuse unreadable files instead of skipping.")
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Read again even if the stored copy is current.")
    ] = False,
) -> None:
    """Get the data set, verify it and store it once in the workspace."""
    from deepsight_tf.obtain import obtain as run_obtain

    if source is None:
        import_tensorflow_quietly()

    settings = ObtainSettings(source=source, name=name, resize=resize, strict=strict, force=force)
    with progress_bar() as progress:
        result = run_obtain(settings, state.workspace, progress=progress)
    if state.json:
        emit_json(result)
        return
    render_obtain(result)


def render_obtain(result: Any) -> None:
    status = "[green]up to date[/]" if result.up_to_date else f"stored in {result.duration_s:.1f} s"
    console.print(f"[bold]{result.dataset}[/] ({result.kind}) from {result.source}: {status}")
    table = Table(title="Images per class", show_footer=True)
    table.add_column("class", footer="total")
    for split, counts in result.counts.items():
        table.add_column(split, justify="right", footer=f"{sum(counts.values()):,}")
    for cls in result.class_names:
        table.add_row(cls, *(f"{result.counts[s].get(cls, 0):,}" for s in result.counts))
    console.print(table)
    h, w, c = result.image_shape
    console.print(f"image size {h}x{w}x{c} uint8; images.npz sha256 {result.sha256[:16]}…")
    console.print(f"stored at {result.folder}")
    for what, count in result.conversions.items():
        console.print(f"[yellow]converted[/] {count:,} images: {what}")
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} files[/] (listed in report.json):")
        for item in result.skipped[:5]:
            console.print(f"  {item.path}: {item.reason}", highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning[/]: {warning}")


if __name__ == "__main__":
    app()
