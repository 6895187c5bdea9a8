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


@app.command()
@handle_errors
def scrub(
    dataset: Annotated[str | None, typer.Option(help="Data set (default: the only one).")] = None,
    val_size: Annotated[
        float | None,
        typer.Option(help="Fraction of train held out for validation. Default: ScrubSettings."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split and the sample.")] = None,
    drop_leaks: Annotated[
        bool, typer.Option(help="Drop training images that duplicate a test image.")
    ] = False,
    image_size: Annotated[
        int | None, typer.Option(help="Training size the interpolation study upsamples to.")
    ] = None,
    interp_sample: Annotated[
        int | None, typer.Option(help="Images measured in the interpolation study.")
    ] = None,
    near_threshold: Annotated[
        float | None,
        typer.Option(help="Near-duplicate distance, 1 - aligned structure correlation (0.2)."),
    ] = None,
    neighbours: Annotated[
        int | None, typer.Option(help="Near-duplicate candidates per image and index (3).")
    ] = None,
) -> None:
    """Check images and labels, find duplicates and leaks, split off validation, pick a resize."""
    from deepsight_tf.config import ScrubSettings

    import_tensorflow_quietly()
    from deepsight_tf.scrub import scrub as run_scrub

    given = {
        "val_size": val_size,
        "seed": seed,
        "image_size": image_size,
        "interp_sample": interp_sample,
        "near_threshold": near_threshold,
        "neighbours": neighbours,
    }
    settings = ScrubSettings(
        dataset=dataset,
        drop_leaks=drop_leaks,
        **{key: value for key, value in given.items() if value is not None},
    )
    with progress_bar() as progress:
        result = run_scrub(settings, state.workspace, progress=progress)
    if state.json:
        emit_json(result)
        return
    render_scrub(result)


def render_scrub(result: Any) -> None:
    integrity = result.integrity
    h, w, c = integrity["image_shape"]
    constant = sum(len(integrity[s]["constant_images"]) for s in ("train", "test"))
    console.print(
        f"[bold]{result.dataset}[/] scrubbed in {result.duration_s:.1f} s "
        f"(images.npz sha256 {result.images_sha256[:16]}…)"
    )
    console.print(
        f"[green]integrity[/]: {integrity['train']['images']:,} train and "
        f"{integrity['test']['images']:,} test images are {h}x{w}x{c} uint8, labels in range; "
        f"{constant} constant (one-colour) images"
    )
    dup = result.duplicates
    table = Table(title=f"Duplicates (near: distance <= {dup['threshold']})")
    for column in ("where", "exact pairs", "exact images", "near pairs", "near images"):
        table.add_column(column, justify="left" if column == "where" else "right")
    table.add_column("label conflicts", justify="right")
    for category in ("train", "test", "train-test"):
        exact, near = dup["exact"][category], dup["near"][category]
        conflicts = exact["label_conflicts"] + near["label_conflicts"]
        table.add_row(
            {"train": "within train", "test": "within test"}.get(category, "across train-test"),
            f"{exact['pairs']:,}",
            f"{exact['images']:,}",
            f"{near['pairs']:,}",
            f"{near['images']:,}",
            f"[red]{conflicts:,}[/]" if conflicts else "0",
        )
    console.print(table)
    console.print(f"[dim]{dup['method']}; {dup['candidates_verified']:,} candidate pairs[/]")
    leaks = result.leakage
    n_test = integrity["test"]["images"]
    share = 100 * leaks["test_images_with_train_twin"] / max(n_test, 1)
    console.print(
        f"[yellow]leakage[/]: {leaks['test_images_with_train_twin']:,} test images ({share:.1f}%) "
        f"have a twin in train ({leaks['exact']:,} identical); listed in report.json "
        "leakage.test_indices_with_train_twin"
    )
    split = result.split
    sizes = split["sizes"]
    counts = Table(title=f"Split (val {split['val_size']}, seed {split['seed']})", show_footer=True)
    counts.add_column("class", footer="total")
    for part in split["class_counts"]:
        counts.add_column(part, justify="right", footer=f"{sizes[part]:,}")
    for cls in result.class_names:
        counts.add_row(cls, *(f"{split['class_counts'][p][cls]:,}" for p in split["class_counts"]))
    console.print(counts)
    index = split["index_overlap"]
    overlap = split["duplicate_overlap"]
    console.print(
        f"index overlap train-val {index['train-val']}, unassigned {index['unassigned']}; "
        "duplicate pairs across parts (exact/near): "
        + ", ".join(
            f"{pair} {overlap['exact'][pair]}/{overlap['near'][pair]}" for pair in overlap["exact"]
        )
    )
    study = result.interpolation
    interp = Table(title=f"Upsampling {study.source_size[0]} px to {study.image_size} px")
    for column in ("method", "role", "recon. RMSE", "round-trip RMSE", "HF kept", "overshoot %"):
        interp.add_column(column, justify="left" if column in ("method", "role") else "right")
    for row in study.rows:
        style = "bold green" if row.selected else None
        interp.add_row(
            row.method + (" ✓" if row.selected else ""),
            "candidate" if row.candidate else "context",
            f"{row.reconstruction_rmse:.2f}",
            f"{row.round_trip_rmse:.2f}",
            f"{row.high_freq_retained:.2f}",
            f"{row.overshoot_pct:.2f}",
            style=style,
        )
    if study.rows:
        console.print(interp)
    console.print(
        f"selected interpolation: [bold]{study.selected}[/] ({study.rule}; {study.sample} images)"
    )
    console.print(f"written to {result.folder}: {', '.join(result.files)}")


@app.command()
@handle_errors
def explore(
    dataset: Annotated[
        str | None, typer.Option(help="Data set in the workspace. Default: the only one.")
    ] = None,
    hypotheses: Annotated[
        Path | None,
        typer.Option(
            help='JSON file with "groups" (name to list of classes), "comparisons" (pairs of '
            'groups) and "confusable_pairs" (pairs of classes). Default: the CIFAR-10 '
            "hypotheses when the data set has those classes."
        ),
    ] = None,
    samples_per_class: Annotated[
        int | None,
        typer.Option(help="Images per class in the sample grid (1-64). Default: ExploreSettings."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for the sample grid. Default: ExploreSettings.")
    ] = None,
) -> None:
    """Class balance, pixel statistics, sample grids, and the hypotheses interpret will test."""
    from deepsight_tf.config import ExploreSettings
    from deepsight_tf.explore import explore as run_explore

    given = {"samples_per_class": samples_per_class, "seed": seed}
    settings = ExploreSettings(
        dataset=dataset,
        hypotheses=str(hypotheses) if hypotheses is not None else None,
        **{key: value for key, value in given.items() if value is not None},
    )
    with progress_bar() as progress:
        result = run_explore(settings, state.workspace, progress=progress)
    if state.json:
        emit_json(result)
        return
    render_explore(result)


def render_explore(result: Any) -> None:
    console.print(
        f"[bold]{result.dataset}[/] explored in {result.duration_s:.1f} s "
        f"(images.npz sha256 {result.input_sha256[:16]}…)"
    )
    balance = Table(title="Class balance", show_footer=True)
    balance.add_column("class", footer="total")
    for split in result.balance:
        balance.add_column(split.split, justify="right", footer=f"{split.total:,}")
    for cls in result.class_names:
        balance.add_row(cls, *(f"{split.counts[cls]:,}" for split in result.balance))
    console.print(balance)
    for split in result.balance:
        if split.p_value is None:
            console.print(f"{split.split}: chi-square test undefined (empty split or one class)")
            continue
        console.print(
            f"{split.split}: chi-square {split.chi2:.2f} (dof {split.dof}), p = {split.p_value:.3g}"
            f"; largest over smallest class {split.imbalance_ratio or float('inf'):.2f}"
        )
    px = result.pixel_stats
    pixels = Table(title=f"Pixel statistics ({px.split}, {px.n_images:,} images)")
    for column in ("channel", "mean 0..255", "std 0..255", "mean 0..1", "std 0..1"):
        pixels.add_column(column, justify="left" if column == "channel" else "right")
    for i, channel in enumerate("RGB"):
        pixels.add_row(
            channel,
            f"{px.mean[i]:.3f}",
            f"{px.std[i]:.3f}",
            f"{px.mean_unit[i]:.4f}",
            f"{px.std_unit[i]:.4f}",
        )
    console.print(pixels)
    looks = Table(title="Brightness (mean luma) and RMS contrast per class, train, 0..1")
    for column in ("class", "images", "brightness", "median", "contrast", "median "):
        looks.add_column(column, justify="left" if column == "class" else "right")
    for row in result.appearance:
        b, c = row.brightness, row.contrast
        looks.add_row(
            row.class_name,
            f"{row.n_images:,}",
            f"{b.mean:.3f} ± {b.std:.3f}",
            f"{b.median:.3f}",
            f"{c.mean:.3f} ± {c.std:.3f}",
            f"{c.median:.3f}",
        )
    console.print(looks)
    console.print(
        f"brightest class [bold]{result.brightest_class}[/], darkest [bold]{result.darkest_class}"
        f"[/]; highest contrast [bold]{result.highest_contrast_class}[/], lowest "
        f"[bold]{result.lowest_contrast_class}[/]"
    )
    hyp = result.hypotheses
    if hyp.registered:
        console.print(f"[bold]hypotheses[/] registered from {hyp.source}:")
        for a, b in hyp.comparisons:
            console.print(
                f"  compare {a} ({', '.join(hyp.groups[a])}) with {b} ({', '.join(hyp.groups[b])})",
                highlight=False,
            )
        if hyp.confusable_pairs:
            pairs = ", ".join(f"{a}/{b}" for a, b in hyp.confusable_pairs)
            console.print(f"  confusable pairs to watch: {pairs}", highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning[/]: {warning}", highlight=False)
    console.print(f"figures in {Path(result.folder) / 'figures'}; report.json beside them")


@app.command()
@handle_errors
def train(
    ctx: typer.Context,
    backbone: Annotated[str, typer.Option(help="resnet18 or resnet50.")] = "resnet18",
    weights: Annotated[
        str,
        typer.Option(
            help="imagenet, none, a KerasHub preset folder, a .weights.h5 or a run folder."
        ),
    ] = "none",
    dataset: Annotated[str | None, typer.Option(help="Data set (default: the only one).")] = None,
    run_id: Annotated[str | None, typer.Option(help="Run name (default: backbone-time).")] = None,
    image_size: Annotated[int, typer.Option(help="Input size in pixels.")] = 64,
    stem: Annotated[str | None, typer.Option(help="cifar or imagenet (default by size).")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs with stages unfrozen (phase 2).")] = 4,
    frozen_epochs: Annotated[
        int | None, typer.Option(help="Head-only epochs (default 1 pretrained, 0 scratch).")
    ] = None,
    unfreeze: Annotated[str | None, typer.Option(help="Stages to unfreeze: 3,4 or all.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 128,
    lr: Annotated[float | None, typer.Option(help="One-cycle peak rate of the head.")] = None,
    backbone_lr_mult: Annotated[
        float | None, typer.Option(help="Backbone rate as a multiple of --lr.")
    ] = None,
    optimizer: Annotated[str, typer.Option(help="sgd (Nesterov) or adamw.")] = "sgd",
    weight_decay: Annotated[float, typer.Option(help="Decoupled weight decay.")] = 5e-4,
    augment: Annotated[str, typer.Option(help="none, light, standard or strong.")] = "standard",
    mix: Annotated[str, typer.Option(help="none, cutmix or mixup.")] = "none",
    mix_alpha: Annotated[float, typer.Option(help="Beta(alpha, alpha) for mixing.")] = 1.0,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing epsilon.")] = 0.0,
    class_weights: Annotated[
        str, typer.Option(help="none, balanced, or a recall JSON / metrics.json file.")
    ] = "none",
    focus_pairs: Annotated[
        str | None,
        typer.Option(help="Oversample confusable classes: cat:dog,automobile:truck or @FILE."),
    ] = None,
    precision: Annotated[
        str, typer.Option(help="auto, float32, mixed_float16 or mixed_bfloat16.")
    ] = "auto",
    mva: Annotated[float, typer.Option(help="Minimum Viable Accuracy on the test set.")] = 0.65,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    deterministic: Annotated[bool, typer.Option(help="Deterministic ops (slower).")] = False,
    resume: Annotated[
        bool,
        typer.Option(help="Continue an interrupted run (--run-id) with its stored settings."),
    ] = False,
    checkpoint_minutes: Annotated[
        float, typer.Option(help="Save the training state this often within an epoch.")
    ] = 5.0,
    max_train_images: Annotated[
        int | None, typer.Option(help="Train on a stratified subset (quick runs).")
    ] = None,
    dropout: Annotated[float, typer.Option(help="Dropout rate before the head.")] = 0.2,
    width_multiplier: Annotated[
        float, typer.Option(help="Channel width factor (<1: narrow, from scratch only).")
    ] = 1.0,
    strategy: Annotated[
        str, typer.Option(help="tf.distribute: auto, one, mirrored (GPUs) or multiworker.")
    ] = "auto",
    find_lr: Annotated[
        bool, typer.Option("--find-lr", help="Run the LR range test and suggest a rate.")
    ] = False,
) -> None:
    """Transfer learning: frozen head phase, then stages unfrozen with a OneCycle rate."""
    from deepsight_tf.config import TrainSettings

    import_tensorflow_quietly()
    from deepsight_tf.training import check_gate
    from deepsight_tf.training import train as run_train

    settings = TrainSettings(
        dataset=dataset,
        run_id=run_id,
        backbone=backbone,
        weights=weights,
        stem=stem,
        image_size=image_size,
        width_multiplier=width_multiplier,
        dropout=dropout,
        augment=augment,
        mix=mix,
        mix_alpha=mix_alpha,
        label_smoothing=label_smoothing,
        class_weights=class_weights,
        focus_pairs=focus_pairs,
        batch_size=batch_size,
        frozen_epochs=frozen_epochs,
        epochs=epochs,
        unfreeze=unfreeze,
        optimizer=optimizer,
        lr=lr,
        backbone_lr_mult=backbone_lr_mult,
        weight_decay=weight_decay,
        precision=precision,
        mva=mva,
        seed=seed,
        deterministic=deterministic,
        resume=resume,
        checkpoint_minutes=checkpoint_minutes,
        max_train_images=max_train_images,
        strategy=strategy,
    )
    # With --resume the run's stored settings apply; only flags typed here are compared.
    # (By name: Typer ships its own copy of click, with its own ParameterSource enum.)
    explicit = {
        name
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    }

    def notify(message: str) -> None:
        err_console.print(f"[dim]{message}[/]", highlight=False)

    if find_lr:
        from deepsight_tf.training import find_lr as run_find_lr

        report = run_find_lr(settings, state.workspace)
        if state.json:
            emit_json(report)
        else:
            console.print(
                f"LR range test ({report.phase}, {report.steps} steps): suggested --lr "
                f"[bold]{report.suggestion:.3g}[/] ({report.method}); lowest loss at "
                f"{report.min_loss_lr:.3g}. Curve: {report.figure}"
            )
        return
    with progress_bar() as progress:
        result = run_train(
            settings, state.workspace, progress=progress, notify=notify, explicit=explicit
        )
    if state.json:
        emit_json(result)
    else:
        render_train(result)
    check_gate(result)


def render_train(result: Any) -> None:
    test, val = result.test, result.val
    verdict = "[green]passed[/]" if result.passed else "[red]failed[/]"
    console.print(
        f"run [bold]{result.run_id}[/]: {result.epochs_run} epochs on {result.train_images:,} "
        f"images in {result.duration_s / 60:.1f} min ({result.precision})"
    )
    table = Table(title="Held-out results")
    for column in ("split", "accuracy", "macro-F1", "images"):
        table.add_column(column, justify="right" if column != "split" else "left")
    table.add_row("validation", f"{val['accuracy']:.2%}", f"{val['macro_f1']:.4f}", f"{val['n']:,}")
    table.add_row("test", f"{test['accuracy']:.2%}", f"{test['macro_f1']:.4f}", f"{test['n']:,}")
    console.print(table)
    per_class = Table(title="Test recall per class")
    per_class.add_column("class")
    per_class.add_column("recall", justify="right")
    per_class.add_column("F1", justify="right")
    for name, row in test["per_class"].items():
        per_class.add_row(name, f"{row['recall']:.2%}", f"{row['f1-score']:.3f}")
    console.print(per_class)
    console.print(f"MVA gate {result.mva:.0%}: {verdict}; artifacts in {result.run_dir}")


@app.command()
@handle_errors
def interpret(
    run_id: Annotated[str, typer.Argument(help="Run to interpret (a folder under runs/).")],
    methods: Annotated[
        str, typer.Option(help="CAM methods: gradcam, gradcam++, scorecam, layercam.")
    ] = "gradcam,gradcam++,scorecam,layercam",
    max_images: Annotated[
        int, typer.Option(help="Test images for CAM maps, faithfulness and the sanity check.")
    ] = 100,
    context_images: Annotated[
        int, typer.Option(help="Test images for the occlusion test (0: all).")
    ] = 5000,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples per interval.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Metrics, calibration, Grad-CAM and forensic tests of a trained run, with numbers."""
    from deepsight_tf.config import InterpretSettings

    import_tensorflow_quietly()
    from deepsight_tf.interpret import interpret as run_interpret

    settings = InterpretSettings(
        run_id=run_id,
        methods=methods,
        max_images=max_images,
        context_images=context_images or None,
        n_boot=n_boot,
        seed=seed,
    )
    with progress_bar() as progress:
        result = run_interpret(settings, state.workspace, progress=progress)
    if state.json:
        emit_json(result)
        return
    render_interpret(result)


def _ci(low: float | None, high: float | None, percent: bool = True) -> str:
    if low is None or high is None:
        return ""
    return f" [{low:.1%}, {high:.1%}]" if percent else f" [{low:+.3f}, {high:+.3f}]"


def render_interpret(result: Any) -> None:
    head = result.headline
    console.print(
        f"[bold]{result.run_id}[/] on {result.dataset} test set ({head['n']:,} images): "
        f"accuracy {head['accuracy']:.2%}{_ci(*head['accuracy_ci'][-2:])}, macro-F1 "
        f"{head['macro_f1']:.4f}{_ci(*head['macro_f1_ci'][-2:], percent=False)}"
    )
    pairs = Table(title="Most confused pairs (both directions)")
    for column in ("pair", "a → b", "b → a", "rate"):
        pairs.add_column(column, justify="left" if column == "pair" else "right")
    for p in result.most_confused[:5]:
        pairs.add_row(
            f"{p['a']} / {p['b']}", str(p["a_as_b"]), str(p["b_as_a"]), f"{p['rate']:.2%}"
        )
    console.print(pairs)
    cal = result.calibration
    console.print(
        f"calibration: ECE {cal['ece_before']:.3f} → {cal['ece_after']:.3f} after temperature "
        f"T={cal['temperature']:.2f} (fitted on validation)"
    )
    if result.leakage and result.leakage["in_mask"]["n"]:
        leak = result.leakage
        console.print(
            f"leakage: accuracy {leak['in_mask']['accuracy']:.2%} on {leak['in_mask']['n']} test "
            f"images with a train twin vs {leak['rest']['accuracy']:.2%} on the rest"
        )
    if result.hypotheses:
        table = Table(title="Hypotheses registered before training")
        for column in ("hypothesis", "estimate", "95% CI", "verdict"):
            table.add_column(column)
        for h in result.hypotheses:
            table.add_row(
                h["name"],
                f"{h['estimate']:+.3f}",
                f"[{h['low']:+.3f}, {h['high']:+.3f}]",
                h["verdict"],
            )
        console.print(table)
    elif result.hypotheses_note:
        console.print(f"hypotheses: {result.hypotheses_note}")
    if result.faithfulness:
        table = Table(title="Do the heat maps point at what the model uses? (vs random order)")
        for column in ("method", "deletion AUC", "random", "insertion AUC", "random", "verdict"):
            table.add_column(column)
        for name, m in result.faithfulness["methods"].items():
            table.add_row(
                name,
                f"{m['deletion_auc']:.3f}",
                f"{m['random_deletion_auc']:.3f}",
                f"{m['insertion_auc']:.3f}",
                f"{m['random_insertion_auc']:.3f}",
                m["verdict"],
            )
        console.print(table)
    if result.sanity:
        verdict = "passed" if result.sanity["passed"] else "FLAGGED"
        console.print(
            f"sanity check (randomised top layers): {verdict}; mean Spearman "
            f"{', '.join(f'{v:.2f}' for v in result.sanity['mean_spearman'])}"
        )
    if result.context:
        ctx = result.context
        console.print(
            f"context reliance: classes that keep their accuracy with the centre hidden: "
            f"{', '.join(ctx['holds_without_object']) or 'none'}; relying on context: "
            f"{', '.join(ctx['relies_on_context']) or 'none'}"
        )
    issues = result.label_issues
    console.print(
        f"label issues: {issues['count']} test images flagged ({issues['csv']}); "
        f"hard pairs for --focus-pairs @{issues['focus_pairs_file']}"
    )
    console.print(
        f"{len(result.figures)} figures and report.json in {result.folder} "
        f"({result.duration_s / 60:.1f} min)"
    )


@app.command()
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
    from deepsight_tf.predict import predict as run_predict

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
    render_predict(result)


def render_predict(result: Any) -> None:
    from rich.markup import escape

    table = Table(title=f"Predictions of run {result.run_id} ({result.image_size} px)")
    table.add_column("image", overflow="fold")
    table.add_column("class")
    table.add_column("probability", justify="right")
    table.add_column(f"top {len(result.predictions[0].top)}")
    if result.gradcam_dir:
        table.add_column("Grad-CAM", overflow="fold")
    for item in result.predictions:
        top = ", ".join(f"{t.class_name} {t.probability:.1%}" for t in item.top)
        name, probability = f"[bold]{escape(item.class_name)}[/]", f"{item.probability:.1%}"
        cells = [escape(item.path), name, probability, escape(top)]
        if result.gradcam_dir:
            cells.append(escape(Path(item.gradcam).name))
        table.add_row(*cells)
    console.print(table)
    console.print(
        f"{len(result.predictions):,} images in {result.duration_s:.1f} s"
        + (f"; Grad-CAM overlays in {escape(result.gradcam_dir)}" if result.gradcam_dir else "")
    )
    if result.errors:
        console.print(f"[yellow]{len(result.errors)} inputs could not be read[/]:")
        for error in result.errors:
            console.print(f"  {error.path}: {error.reason}", markup=False, highlight=False)


@app.command()
@handle_errors
def export(
    run: Annotated[str, typer.Argument(help="Run id in the workspace, or a run folder.")],
    export_format: Annotated[
        str, typer.Option("--format", help="savedmodel, keras or onnx.")
    ] = "savedmodel",
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write it. Default: runs/<id>/export/<savedmodel|model.*>."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing export.")] = False,
) -> None:
    """Export the run's model with a JSON sidecar; the export is checked against the model."""
    from deepsight_tf.export import check_format

    check_format(export_format)
    import_tensorflow_quietly()
    from deepsight_tf.export import export_run

    result = export_run(state.workspace, run, export_format, out, force=force)
    if state.json:
        emit_json(result)
        return
    render_export(result)


def render_export(result: Any) -> None:
    console.print(
        f"run [bold]{result.run_id}[/] exported as {result.format} to {result.path} "
        f"({result.size_bytes / 1e6:.1f} MB) in {result.duration_s:.1f} s"
    )
    for name, takes in result.endpoints.items():
        console.print(f"  {name}: {takes}", markup=False, highlight=False)
    if result.max_abs_diff is None:
        console.print("[yellow]not checked[/]: no runtime for this format is installed")
    else:
        colour = "green" if result.max_abs_diff <= 1e-5 else "yellow"
        console.print(
            f"[{colour}]checked[/] on {result.check_images} images: largest probability "
            f"difference from the run's model {result.max_abs_diff:.1e}"
        )
    console.print(f"preprocessing and class names for consumers: {result.sidecar}")


@app.command()
@handle_errors
def report(
    runs: Annotated[
        list[str],
        typer.Argument(help="A run id; two or more to compare them (the first is the baseline)."),
    ],
    n_boot: Annotated[
        int, typer.Option(help="Bootstrap resamples for the intervals the report computes.")
    ] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of those resamples.")] = 0,
) -> None:
    """One self-contained HTML page: runs/<id>/report.html, or reports/compare-<a>-<b>.html."""
    if len(runs) == 1:
        import_tensorflow_quietly()  # the training curves are drawn by plots.training
    from deepsight_tf.report import report as run_report

    result = run_report(state.workspace, runs, n_boot=n_boot, seed=seed)
    if state.json:
        emit_json(result)
        return
    render_report(result)


def render_report(result: Any) -> None:
    from rich.markup import escape

    for head in result.headlines:
        gate = "[green]passed[/]" if head.passed else "[red]failed[/]"
        (a_low, a_high), (f_low, f_high) = head.accuracy_ci, head.macro_f1_ci
        intervals = (
            escape(f"[{a_low:.2%}, {a_high:.2%}]"),
            escape(f"[{f_low:.4f}, {f_high:.4f}]"),
        )
        console.print(
            f"[bold]{escape(head.run_id)}[/]: test accuracy {head.accuracy:.2%} {intervals[0]}, "
            f"macro-F1 {head.macro_f1:.4f} {intervals[1]}; MVA gate {head.mva:.0%} {gate}",
            highlight=False,
        )
    for h in result.hypotheses:
        console.print(
            f"  {h['verdict']}: {escape(h['name'])} {h['estimate']:+.3f} "
            f"[{h['low']:+.3f}, {h['high']:+.3f}]",
            markup=False,
            highlight=False,
        )
    for c in result.comparisons:
        for d in (c.accuracy, c.macro_f1):
            interval = "" if d.low is None else f" [{d.low:+.4f}, {d.high:+.4f}]"
            console.print(
                f"{c.b} vs {c.a}: {d.name} {d.delta:+.4f}{interval} ({d.verdict})",
                markup=False,
                highlight=False,
            )
        moved = [d.name for d in c.recall if d.verdict in ("better", "worse")]
        console.print(f"  recall changed clearly in: {', '.join(moved) or 'no class'}; {c.pairing}")
    for name, note in result.sections.items():
        if note != "shown":
            console.print(f"[yellow]{name}[/]: {escape(note)}")
    console.print(
        f"{result.figures} figures in {escape(result.path)} "
        f"({result.size_bytes / 1e6:.1f} MB, {result.duration_s:.1f} s)"
    )


if __name__ == "__main__":
    app()
