"""The deepsight command line: parses flags, calls the library, renders results with rich.

Only this package prints and exits. Each command builds its phase's settings (options made
from the settings dataclasses, see options.py), calls the phase, and renders the result or,
with --json, prints it; a DeepsightError becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from deepsight_tf import __version__
from deepsight_tf.cli import quiet_tensorflow, render
from deepsight_tf.cli.console import (
    emit_json,
    err_console,
    handle_errors,
    import_tensorflow_quietly,
    progress_bar,
    state,
)
from deepsight_tf.cli.options import Command, Group, settings_options
from deepsight_tf.cli.training_display import training_display
from deepsight_tf.core.settings import (
    DEFAULT_N_BOOT,
    EXPORT_FORMATS,
    ExperimentSettings,
    ExploreSettings,
    InterpretSettings,
    ObtainSettings,
    ScrubSettings,
    TrainSettings,
)
from deepsight_tf.core.storage import to_jsonable
from deepsight_tf.core.workspace import Workspace

# The shell's codes for a command stopped by SIGINT and by SIGTERM (errors.TrainingInterrupted).
INTERRUPTED_EXIT_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)

app = typer.Typer(
    cls=Group,
    help=(
        "Transfer learning on CIFAR-10 (or any image folder) that puts the model and the data "
        "on trial."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deepsight {__version__}")
        raise typer.Exit()


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
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Obtain, scrub, explore, train and interpret: each phase reads what the one before wrote."""
    state.workspace = Workspace(workspace)
    state.debug = debug
    state.json = json_out
    if not debug:
        quiet_tensorflow.install()  # before any path of any command imports it


def _examples(*lines: str) -> str:
    """A command's epilog: real invocations, one per line."""
    return "Examples:\n\n" + "\n\n".join(f"  [bold]{line}[/]" for line in lines)


@app.command(
    cls=Command,
    epilog=_examples(
        "deepsight obtain --source ../shared/data/cifar10-jpeg --name cifar10",
        "deepsight obtain --source cifar-10-python.tar.gz",
    ),
)
@handle_errors
@settings_options(ObtainSettings)
def obtain(settings: ObtainSettings) -> None:
    """Get the data set, verify it and store it once in the workspace."""
    from deepsight_tf.data.obtain import obtain as run_obtain

    if settings.source is None:
        import_tensorflow_quietly()  # Keras's download
    with progress_bar() as progress:
        result = run_obtain(settings, state.workspace, progress=progress)
    _show(result, render.render_obtain)


@app.command(
    cls=Command, epilog=_examples("deepsight scrub", "deepsight scrub --val-size 0.1 --drop-leaks")
)
@handle_errors
@settings_options(ScrubSettings)
def scrub(settings: ScrubSettings) -> None:
    """Check images and labels, find duplicates and leaks, split off validation, pick a resize."""
    import_tensorflow_quietly()
    from deepsight_tf.data.scrub import scrub as run_scrub

    with progress_bar() as progress:
        result = run_scrub(settings, state.workspace, progress=progress)
    _show(result, render.render_scrub)


@app.command(
    cls=Command, epilog=_examples("deepsight explore", "deepsight explore --hypotheses groups.json")
)
@handle_errors
@settings_options(ExploreSettings)
def explore(settings: ExploreSettings) -> None:
    """Class balance, pixel statistics, sample grids, and the hypotheses interpret will test."""
    from deepsight_tf.data.explore import explore as run_explore

    with progress_bar() as progress:
        result = run_explore(settings, state.workspace, progress=progress)
    _show(result, render.render_explore)


@app.command(
    cls=Command,
    epilog=_examples(
        "deepsight train --budget 30m",
        "deepsight train --backbone efficientnet-lite0 --weights imagenet --budget 30m",
        "deepsight train --backbone resnet18 --weights none --epochs 4",
        "deepsight train --run-id my-run --resume",
    ),
)
@handle_errors
@settings_options(TrainSettings)
def train(
    ctx: typer.Context,
    settings: TrainSettings,
    find_lr: Annotated[
        bool, typer.Option("--find-lr", help="Run the LR range test and suggest a rate.")
    ] = False,
) -> None:
    """Transfer learning: frozen head phase, then stages unfrozen with a OneCycle rate."""
    import_tensorflow_quietly()
    from deepsight_tf.training.loop import check_gate
    from deepsight_tf.training.loop import train as run_train

    # With --resume the run's stored settings apply; only flags typed here (or set by
    # --config) are compared. (By name: Typer ships its own copy of click, with its own
    # ParameterSource enum.)
    explicit = {
        name
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    } | ctx.meta.get("config_fields", set())

    def notify(message: str) -> None:
        err_console.print(f"[dim]{message}[/]", highlight=False, markup=True)

    if find_lr:
        from deepsight_tf.training.lr_finder import find_lr as run_find_lr

        _show(run_find_lr(settings, state.workspace), render.render_lr_finder)
        return
    with training_display(err_console) as monitor:
        result = run_train(
            settings, state.workspace, notify=notify, explicit=explicit, monitor=monitor
        )
    _show(result, render.render_train)
    check_gate(result)


@app.command(
    cls=Command,
    epilog=_examples(
        "deepsight experiment seed-ideas --budget 10m",
        "deepsight experiment quick --arms baseline,cutmix --epochs 2 --baseline-seeds 2",
        "deepsight experiment seed-ideas --budget 10m --resume",
    ),
)
@handle_errors
@settings_options(TrainSettings, exclude=frozenset({"run_id", "resume", "resume_or_start"}))
@settings_options(ExperimentSettings, param="plan")
def experiment(
    name: Annotated[str, typer.Argument(help="Experiment name (a folder under experiments/).")],
    settings: TrainSettings,
    plan: ExperimentSettings,
) -> None:
    """Interventions against a baseline on the same split, seeds and budget, with verdicts."""
    from dataclasses import replace

    import_tensorflow_quietly()
    from deepsight_tf.diagnose.experiment import run_experiment

    def notify(message: str) -> None:
        err_console.print(f"[dim]{message}[/]", highlight=False, markup=True)

    from deepsight_tf.reporting.experiment_page import experiment_page

    plan = replace(plan, name=name)
    with training_display(err_console) as monitor:
        result = run_experiment(plan, settings, state.workspace, notify, lambda arm: monitor)
    result.files.append(experiment_page(state.workspace, name))
    _show(result, render.render_experiment)


@app.command(
    cls=Command,
    epilog=_examples(
        "deepsight interpret make-all",
        "deepsight interpret make-all --methods gradcam,layercam --max-images 200",
    ),
)
@handle_errors
@settings_options(InterpretSettings)
def interpret(
    run_id: Annotated[str, typer.Argument(help="Run to interpret (a folder under runs/).")],
    settings: InterpretSettings,
) -> None:
    """Metrics, calibration, Grad-CAM and forensic tests of a trained run, with numbers."""
    from dataclasses import replace

    import_tensorflow_quietly()
    from deepsight_tf.diagnose.interpret import interpret as run_interpret

    settings = replace(settings, run_id=run_id)
    with progress_bar() as progress:
        result = run_interpret(settings, state.workspace, progress=progress)
    _show(result, render.render_interpret)


@app.command(
    cls=Command,
    epilog=_examples(
        "deepsight predict make-all photo.jpg more_images/ --gradcam overlays/",
        "deepsight --json predict make-all photo.jpg",
    ),
)
@handle_errors
def predict(
    run: Annotated[str, typer.Argument(help="Run id in the workspace, or a run folder.")],
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Image files and folders (walked for png/jpg/jpeg/bmp/webp)."),
    ],
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 64,
    top_k: Annotated[int, typer.Option(help="Most probable classes listed per image.")] = 3,
    gradcam: Annotated[
        Path | None, typer.Option(help="Write a Grad-CAM overlay PNG per image into this folder.")
    ] = None,
) -> None:
    """Class, probability and top-k for new images of any size, preprocessed as in training."""
    import_tensorflow_quietly()
    from deepsight_tf.serve.predict import predict as run_predict

    with progress_bar() as progress:
        result = run_predict(
            state.workspace,
            run,
            inputs,
            batch_size,
            top_k=top_k,
            gradcam_dir=gradcam,
            progress=progress,
        )
    if state.json:
        payload = to_jsonable(result)
        payload.pop("probs")  # every row is in predictions; NaN rows are not JSON
        emit_json(payload)
        return
    render.render_predict(result)


ExportFormat = Literal[EXPORT_FORMATS]  # type: ignore[valid-type]


@app.command(
    cls=Command,
    epilog=_examples(
        "deepsight export make-all --format savedmodel",
        "deepsight export make-all --format keras --out exported.keras",
    ),
)
@handle_errors
def export(
    run: Annotated[str, typer.Argument(help="Run id in the workspace, or a run folder.")],
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="What to write.")
    ] = "savedmodel",
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write it. Default: runs/<id>/export/<savedmodel|model.*>."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace an earlier export (never anything else) at --out.")
    ] = False,
) -> None:
    """Export the run's model with a JSON sidecar; the export is checked against the model."""
    from deepsight_tf.serve.export import check_format

    check_format(export_format)
    import_tensorflow_quietly()
    from deepsight_tf.serve.export import export_run

    result = export_run(state.workspace, run, export_format, out, force=force)
    _show(result, render.render_export)


@app.command(
    cls=Command, epilog=_examples("deepsight report make-all", "deepsight report baseline cutmix")
)
@handle_errors
def report(
    runs: Annotated[
        list[str],
        typer.Argument(help="A run id; two or more to compare them (the first is the baseline)."),
    ],
    n_boot: Annotated[
        int, typer.Option(help="Bootstrap resamples for the intervals the report computes.")
    ] = DEFAULT_N_BOOT,
    seed: Annotated[int, typer.Option(help="Seed of those resamples.")] = 0,
) -> None:
    """One self-contained HTML page: runs/<id>/report.html, or reports/compare-<a>-<b>.html."""
    if len(runs) == 1:
        import_tensorflow_quietly()  # the training curves are drawn by plots.training
    from deepsight_tf.reporting import report as run_report

    _show(run_report(state.workspace, runs, n_boot=n_boot, seed=seed), render.render_report)


def run() -> None:
    """The console script: the app, and after an interruption (Ctrl-C, SIGTERM) an exit
    that skips the interpreter's teardown. Training has committed and fsynced its state and
    printed the line by then; TensorFlow's teardown (its thread pools, tf.data's workers) took
    3 to 7 s more, and a container manager sends SIGKILL 10 s after SIGTERM."""
    try:
        app(prog_name="deepsight")
    except SystemExit as exc:
        if exc.code in INTERRUPTED_EXIT_CODES:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code)  # type: ignore[arg-type]
        raise


def _show(result: object, renderer: object) -> None:
    """The result as JSON with --json, else rendered for a person."""
    if state.json:
        emit_json(result)
    else:
        renderer(result)  # type: ignore[operator]
