"""The interpret phase: a trained run's metrics, calibration, Grad-CAM and forensic tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.config import InterpretSettings
from deepsight_tf.dataset import IMAGES_FILE, Dataset, load_dataset
from deepsight_tf.errors import ConfigError, PrerequisiteError
from deepsight_tf.sources import Progress
from deepsight_tf.workspace import (
    Manifest,
    Workspace,
    atomic_write_json,
    now_iso,
    read_json,
)

INTERPRET_DIR = "interpret"
REPORT_FILE = "report.json"
LABEL_ISSUES_FILE = "label_issues.csv"
FOCUS_PAIRS_FILE = "focus_pairs.txt"
HARD_PAIRS = 3  # most-confused pairs written for `deepsight train --focus-pairs @FILE`


@dataclass
class InterpretResult:
    run_id: str
    folder: str
    dataset: str
    duration_s: float
    headline: dict[str, Any]
    most_confused: list[dict[str, Any]]
    calibration: dict[str, Any]
    leakage: dict[str, Any] | None
    hypotheses: list[dict[str, Any]]
    hypotheses_note: str
    label_issues: dict[str, Any]
    faithfulness: dict[str, Any] | None
    sanity: dict[str, Any] | None
    context: dict[str, Any] | None
    figures: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def parse_methods(text: str) -> list[str]:
    from deepsight_tf.explain import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(
            f"--methods {text!r}: unknown {unknown}; choose from {', '.join(METHODS)}"
        )
    return methods


def stratified_sample(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Up to n indices with the classes as equal as possible (all when n is None or large)."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for pool in per_class:
            if depth < len(pool) and len(chosen) < n:
                chosen.append(int(pool[depth]))
        depth += 1
    return np.sort(np.asarray(chosen))


def interpret(
    settings: InterpretSettings, workspace: Workspace, progress: Progress | None = None
) -> InterpretResult:
    """Every diagnostic of one run, written to runs/<id>/interpret/ (report.json, figures)."""
    from deepsight_tf.training import CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE, load_run

    if not settings.run_id:
        raise ConfigError("name the run to interpret: deepsight interpret RUN_ID")
    if settings.max_images < 1 or settings.n_boot < 100:
        raise ConfigError("--max-images must be >= 1 and --n-boot >= 100")
    methods = parse_methods(settings.methods)
    run_dir, run_manifest = load_run(workspace, settings.run_id)
    metrics = read_json(run_dir / METRICS_FILE)
    data, data_manifest = load_dataset(workspace, metrics["dataset"])
    workspace.check_inputs(
        run_manifest,
        {"data set": data_manifest.outputs[IMAGES_FILE]},
        f"run {settings.run_id}",
        "deepsight train",
    )
    config = read_json(run_dir / CONFIG_FILE)
    with np.load(run_dir / PREDICTIONS_FILE, allow_pickle=False) as npz:
        predictions = {k: npz[k] for k in npz.files}
    out = run_dir / INTERPRET_DIR
    with workspace.lock(f"run-{settings.run_id}-interpret"):
        started, start = now_iso(), time.perf_counter()
        result = _interpret(settings, workspace, data, config, predictions, methods, out, progress)
        result.duration_s = round(time.perf_counter() - start, 1)
        atomic_write_json(out / REPORT_FILE, result)
        outputs = {REPORT_FILE: "", LABEL_ISSUES_FILE: "", FOCUS_PAIRS_FILE: ""}
        outputs.update({str(Path(f).relative_to(out)): "" for f in result.figures})
        workspace.write_manifest(
            out,
            Manifest(
                phase="interpret",
                settings=asdict(settings),
                seed=settings.seed,
                inputs={
                    "model": {
                        "path": f"runs/{settings.run_id}/model.keras",
                        "sha256": run_manifest.outputs["model.keras"],
                    },
                    "predictions": {
                        "path": f"runs/{settings.run_id}/{PREDICTIONS_FILE}",
                        "sha256": run_manifest.outputs[PREDICTIONS_FILE],
                    },
                    "data set": {
                        "path": f"data/{data.name}/{IMAGES_FILE}",
                        "sha256": data_manifest.outputs[IMAGES_FILE],
                    },
                },
                outputs=outputs,
                started=started,
                finished=now_iso(),
                duration_s=result.duration_s,
            ),
        )
    return result


def _interpret(
    settings: InterpretSettings,
    workspace: Workspace,
    data: Dataset,
    config: dict[str, Any],
    predictions: dict[str, np.ndarray],
    methods: list[str],
    out: Path,
    progress: Progress | None,
) -> InterpretResult:
    from deepsight_tf import evaluation, forensics
    from deepsight_tf.plots import evaluation as eval_plots
    from deepsight_tf.plots import save_figure

    timings: dict[str, float] = {}
    figures: list[str] = []
    names = data.class_names
    labels, probs = predictions["test_labels"], predictions["test_probs"]
    boot = {"n_boot": settings.n_boot, "seed": settings.seed}

    def figure(fig: Any, name: str) -> None:
        figures.append(str(save_figure(fig, out / "figures" / f"{name}.png")))

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        timings[name] = round(time.perf_counter() - start, 2)
        return value

    # Metrics, confusion, top losses ------------------------------------------------------
    summary = timed(
        "metrics", lambda: evaluation.classification_summary(labels, probs, names, **boot)
    )
    confusion = np.asarray(summary["confusion"])
    confused = evaluation.most_confused(confusion, names, top=10)
    pairs = evaluation.most_confused_pairs(confusion, names, top=10)
    recalls = evaluation.per_class_recall(labels, probs, names, **boot)
    losses = evaluation.top_losses(labels, probs, k=16)
    figure(eval_plots.plot_confusion_matrix(confusion, names), "confusion_matrix")
    figure(eval_plots.plot_per_class_recall(recalls), "per_class_recall")
    figure(eval_plots.plot_most_confused(confused), "most_confused")
    figure(eval_plots.plot_top_losses(data.x_test[losses.indices], losses, names), "top_losses")

    # Calibration -------------------------------------------------------------------------
    calibration = timed(
        "calibration",
        lambda: evaluation.calibration_report(
            predictions["val_labels"], predictions["val_probs"], labels, probs
        ),
    )
    figure(
        eval_plots.plot_reliability_diagram(
            calibration.reliability_before,
            calibration.reliability_after,
            ece_before=calibration.ece_before,
            ece_after=calibration.ece_after,
            temperature=calibration.temperature,
        ),
        "reliability",
    )

    # Leakage: test images with a near duplicate in train ---------------------------------
    leakage = None
    try:
        from deepsight_tf.scrub import load_scrub_report

        twins = load_scrub_report(workspace, data.name)["leakage"]["test_indices_with_train_twin"]
        mask = np.zeros(len(labels), dtype=bool)
        mask[np.asarray(twins, dtype=np.int64)] = True
        leakage = evaluation.subset_accuracy_gap(labels, probs, mask, **boot)
    except PrerequisiteError:
        pass

    # Hypotheses registered by explore -----------------------------------------------------
    hypotheses: list[Any] = []
    try:
        from deepsight_tf.explore import load_hypotheses

        registered = load_hypotheses(workspace, data.name)
        note = registered.note or registered.description
        if registered.registered:
            hypotheses = evaluation.test_hypotheses(labels, probs, names, registered, **boot)
            figure(eval_plots.plot_hypotheses(hypotheses), "hypotheses")
    except PrerequisiteError as exc:
        note = f"no hypotheses: {exc}"

    # Label issues and hard examples -------------------------------------------------------
    issues = timed(
        "label_issues",
        lambda: forensics.find_label_issues(labels, probs, names, paths=data.test_paths),
    )
    forensics.write_label_issues_csv(out / LABEL_ISSUES_FILE, issues)
    shown = issues[:16]
    if shown:
        figure(
            eval_plots.plot_label_issues(data.x_test[[i.index for i in shown]], shown),
            "label_issues",
        )
    hard_pairs = [(p.a, p.b) for p in pairs[:HARD_PAIRS]]
    hard = forensics.hard_examples(labels, probs, names, hard_pairs, paths=data.test_paths)
    forensics.write_focus_pairs(out / FOCUS_PAIRS_FILE, hard_pairs)

    explained = _explain(
        settings,
        out.parent,
        data,
        config,
        labels,
        probs,
        losses,
        pairs,
        methods,
        figure,
        timed,
        progress,
    )
    headline = {
        "accuracy": summary["accuracy"],
        "accuracy_ci": summary["accuracy_ci"],
        "macro_f1": summary["macro_f1"],
        "macro_f1_ci": summary["macro_f1_ci"],
        "n": summary["n"],
        "per_class": summary["per_class"],
        "per_class_recall": recalls,
        "confusion": confusion,
    }
    return InterpretResult(
        run_id=settings.run_id,
        folder=str(out),
        dataset=data.name,
        duration_s=0.0,
        headline=headline,
        most_confused=[asdict(p) for p in pairs],
        calibration=asdict(calibration),
        leakage=leakage,
        hypotheses=[asdict(h) for h in hypotheses],
        hypotheses_note=note,
        label_issues={
            "count": len(issues),
            "csv": str(out / LABEL_ISSUES_FILE),
            "top": [asdict(i) for i in issues[:20]],
            "hard_examples": len(hard),
            "focus_pairs_file": str(out / FOCUS_PAIRS_FILE),
        },
        faithfulness=explained["faithfulness"],
        sanity=explained["sanity"],
        context=explained["context"],
        figures=figures,
        timings=timings,
    )


def _explain(
    settings: InterpretSettings,
    run_dir: Path,
    data: Dataset,
    config: dict[str, Any],
    labels: np.ndarray,
    probs: np.ndarray,
    losses: Any,
    pairs: list[Any],
    methods: list[str],
    figure: Callable[[Any, str], None],
    timed: Callable[[str, Callable[[], Any]], Any],
    progress: Progress | None,
) -> dict[str, Any]:
    """Grad-CAM family, faithfulness against random, the sanity check and context reliance."""
    import keras

    import deepsight_tf.metrics
    import deepsight_tf.optim  # noqa: F401
    from deepsight_tf import explain, occlusion
    from deepsight_tf.backbones import Normalization, get_backbone_spec
    from deepsight_tf.pipeline import preprocess
    from deepsight_tf.plots import explain as explain_plots

    run_settings = config["settings"]
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True, compile=False)
    normalize = Normalization(**config["normalization"])
    size, interpolation = run_settings["image_size"], config["interpolation"]

    def prepare(images: np.ndarray) -> np.ndarray:
        return np.asarray(preprocess(images, size, normalize, interpolation))

    layer = get_backbone_spec(run_settings["backbone"]).last_conv_layer
    predicted = probs.argmax(axis=1)
    sample = stratified_sample(labels, settings.max_images, settings.seed)
    images = prepare(data.x_test[sample])
    cams = timed(
        "cams",
        lambda: explain.compute_cams_by_method(
            model, images, predicted[sample], layer_name=layer, methods=methods, progress=progress
        ),
    )
    faith = timed(
        "faithfulness",
        lambda: explain.faithfulness(
            model,
            images,
            predicted[sample],
            cams,
            random_grid=explain.feature_grid(model, layer),
            n_boot=settings.n_boot,
            seed=settings.seed,
        ),
    )
    figure(explain_plots.plot_deletion_insertion(faith), "deletion_insertion")
    k = min(settings.sanity_images, len(sample))
    sanity = timed(
        "sanity",
        lambda: explain.sanity_check(
            model, images[:k], predicted[sample][:k], layer_name=layer, seed=settings.seed
        ),
    )
    figure(explain_plots.plot_sanity_check(sanity, data.x_test[sample][:k]), "sanity_check")
    context_idx = stratified_sample(labels, settings.context_images, settings.seed)
    context = timed(
        "context",
        lambda: occlusion.context_reliance(
            model,
            data.x_test[context_idx],
            labels[context_idx],
            prepare,
            data.class_names,
            n_boot=settings.n_boot,
            seed=settings.seed,
        ),
    )
    first = methods[0]
    energy = occlusion.centre_energy_by_class(
        cams[first], labels[sample], data.class_names, n_boot=settings.n_boot, seed=settings.seed
    )
    figure(explain_plots.plot_context_reliance(context, energy), "context_reliance")

    # Grids: per class (correct and wrong), top losses, most-confused pairs ------------------
    correct = predicted[sample] == labels[sample]
    for c, name in enumerate(data.class_names):
        for kind, keep in (("correct", correct), ("wrong", ~correct)):
            chosen = np.flatnonzero((labels[sample] == c) & keep)[: settings.grid_per_class]
            if len(chosen):
                titles = [f"{name} → {data.class_names[predicted[sample][i]]}" for i in chosen]
                figure(
                    explain_plots.plot_cam_grid(
                        data.x_test[sample][chosen],
                        cams[first][chosen],
                        titles,
                        suptitle=f"{first}: {name}, {kind}",
                    ),
                    f"cam_{name}_{kind}",
                )
    extra = {"top_losses": np.asarray(losses.indices)}
    for pair in pairs[:HARD_PAIRS]:
        a, b = data.class_names.index(pair.a), data.class_names.index(pair.b)
        swapped = ((labels == a) & (predicted == b)) | ((labels == b) & (predicted == a))
        extra[f"pair_{pair.a}_{pair.b}"] = np.flatnonzero(swapped)[:8]
    for name, indices in extra.items():
        if len(indices):
            maps = explain.compute_cams(
                model,
                prepare(data.x_test[indices]),
                predicted[indices],
                layer_name=layer,
                method=first,
            )
            titles = [
                f"{data.class_names[labels[i]]} → {data.class_names[predicted[i]]}" for i in indices
            ]
            figure(
                explain_plots.plot_cam_grid(data.x_test[indices], maps, titles, suptitle=name),
                f"cam_{name}",
            )
    return {
        "faithfulness": faith.to_dict(),
        "sanity": sanity.to_dict(),
        "context": {**context.to_dict(), "cam_energy": energy.to_dict()},
    }
