"""The report phase: one self-contained HTML page for a run, and a page that compares runs."""

from __future__ import annotations

import base64
import html
import math
import string
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.errors import ConfigError, PrerequisiteError, StaleArtifactError
from deepsight_tf.workspace import (
    MANIFEST,
    Manifest,
    Workspace,
    atomic_write_text,
    now_iso,
    read_json,
)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
TEMPLATE_FILE = "report.html"
CSS_FILE = "report.css"
REPORT_FILE = "report.html"  # in runs/<id>/
REPORTS_DIR = "reports"  # in the workspace, for comparisons
HISTORY_FIGURE = "figures/training_history.png"  # in runs/<id>/, drawn by the report
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOP_CHANGES = 8  # confusion cells listed as got better / got worse
TOP_LOSSES = 16  # as many as interpret's top-loss figure shows
SECTIONS = ("data", "training", "results", "interpretation")
# Compare verdicts from the interval of B - A (evaluation.verdict_from_ci's words, renamed).
CHANGE_WORDS = {"supported": "better", "contradicted": "worse", "inconclusive": "no clear change"}


# Results ----------------------------------------------------------------------------------
@dataclass
class Headline:
    """One run's test metrics with intervals, its gate, and where the intervals came from."""

    run_id: str
    accuracy: float
    accuracy_ci: list[float]
    macro_f1: float
    macro_f1_ci: list[float]
    ci_level: float
    n: int
    mva: float
    passed: bool
    source: str  # "interpret" (its report.json) or "report" (bootstrapped here)


@dataclass
class Delta:
    """B - A for one metric, with a paired bootstrap interval when both scored the same images."""

    name: str
    a: float
    b: float
    delta: float
    low: float | None
    high: float | None
    verdict: str  # better, worse, no clear change, or "not paired"


@dataclass
class ConfusionChange:
    """One off-diagonal cell of the confusion matrix in both runs (counts of test images)."""

    true: str
    predicted: str
    a: int
    b: int
    delta: int


@dataclass
class RunComparison:
    """Run B against run A on the test set."""

    a: str
    b: str
    paired: bool
    pairing: str  # why the intervals are paired, or why they are not
    n: int
    accuracy: Delta
    macro_f1: Delta
    recall: list[Delta]
    worse: list[ConfusionChange]  # cells that grew, largest first
    better: list[ConfusionChange]  # cells that shrank, largest first
    duration_a: float | None
    duration_b: float | None


@dataclass
class ReportResult:
    kind: str  # "run" or "compare"
    run_ids: list[str]
    path: str
    size_bytes: int
    figures: int
    sections: dict[str, str]  # section: "shown", or what to run to fill it
    headlines: list[Headline]
    hypotheses: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[RunComparison] = field(default_factory=list)
    duration_s: float = 0.0


# Artifacts read -------------------------------------------------------------------------
@dataclass
class RunArtifacts:
    """A finished run folder (verified) and its interpret report when there is a current one."""

    run_id: str
    run_dir: Path
    manifest: Manifest
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    predictions: dict[str, np.ndarray]
    interpret: dict[str, Any] | None
    interpret_manifest: Manifest | None

    @property
    def class_names(self) -> list[str]:
        return list(self.metrics["class_names"])

    @property
    def dataset(self) -> str:
        return str(self.metrics["dataset"])


@dataclass
class UpstreamArtifacts:
    """What obtain, scrub and explore wrote for the run's data set (None: the phase has not run)."""

    dataset: str
    obtain: dict[str, Any] | None = None
    obtain_manifest: Manifest | None = None
    scrub: dict[str, Any] | None = None
    scrub_manifest: Manifest | None = None
    explore: dict[str, Any] | None = None
    explore_manifest: Manifest | None = None
    scrub_dir: Path | None = None
    explore_dir: Path | None = None
    notes: dict[str, str] = field(default_factory=dict)


def interpret_hint(run_id: str) -> str:
    return f"deepsight interpret {run_id}"


def check_run_id(run_id: str) -> None:
    # A run id names a folder under runs/; a path would let the report read or write elsewhere.
    if not run_id or Path(run_id).name != run_id or run_id in (".", ".."):
        raise ConfigError(f"run {run_id!r}: give the name of a folder under runs/, not a path")


def load_run_artifacts(workspace: Workspace, run_id: str) -> RunArtifacts:
    """The run (refused when missing or tampered) and its interpret report (None when not run)."""
    from deepsight_tf.interpret import INTERPRET_DIR
    from deepsight_tf.interpret import REPORT_FILE as INTERPRET_REPORT
    from deepsight_tf.training import (
        CONFIG_FILE,
        HISTORY_FILE,
        METRICS_FILE,
        PREDICTIONS_FILE,
        load_run,
        read_history,
    )

    check_run_id(run_id)
    run_dir, manifest = load_run(workspace, run_id)
    with np.load(run_dir / PREDICTIONS_FILE, allow_pickle=False) as npz:
        predictions = {k: npz[k] for k in npz.files}
    interpret = interpret_manifest = None
    folder = run_dir / INTERPRET_DIR
    if (folder / MANIFEST).is_file():
        hint = interpret_hint(run_id)
        interpret_manifest = workspace.verify(folder, hint)
        workspace.check_inputs(
            interpret_manifest,
            {"predictions": manifest.outputs[PREDICTIONS_FILE]},
            f"runs/{run_id}/{INTERPRET_DIR}",
            hint,
        )
        interpret = read_json(folder / INTERPRET_REPORT)
    return RunArtifacts(
        run_id=run_id,
        run_dir=run_dir,
        manifest=manifest,
        config=read_json(run_dir / CONFIG_FILE),
        metrics=read_json(run_dir / METRICS_FILE),
        history=read_history(run_dir / HISTORY_FILE),
        predictions=predictions,
        interpret=interpret,
        interpret_manifest=interpret_manifest,
    )


def load_upstream(workspace: Workspace, run: RunArtifacts) -> UpstreamArtifacts:
    """Obtain's, scrub's and explore's reports, checked to be the ones the run was trained on."""
    from deepsight_tf.explore import REPORT_FILE as EXPLORE_REPORT
    from deepsight_tf.explore import verified_explore_dir
    from deepsight_tf.obtain import REPORT_FILE as OBTAIN_REPORT
    from deepsight_tf.scrub import DATA_INPUT, SPLIT_FILE, load_scrub_report

    up = UpstreamArtifacts(dataset=run.dataset)
    data_dir = workspace.data_dir(run.dataset)
    if not (data_dir / MANIFEST).is_file():
        up.notes["obtain"] = f"data set {run.dataset} is no longer stored: deepsight obtain"
        return up
    up.obtain_manifest = workspace.verify(data_dir, "deepsight obtain")
    up.obtain = read_json(data_dir / OBTAIN_REPORT)
    images_sha = up.obtain_manifest.outputs.get("images.npz")
    if run.manifest.inputs.get(DATA_INPUT, {}).get("sha256") != images_sha:
        raise StaleArtifactError(
            f"run {run.run_id} was trained on another copy of data set {run.dataset}; "
            "rerun `deepsight train`"
        )
    try:
        up.scrub = load_scrub_report(workspace, run.dataset)
        up.scrub_dir = workspace.scrub_dir(run.dataset)
        up.scrub_manifest = workspace.read_manifest(up.scrub_dir, "deepsight scrub")
        split_sha = run.manifest.inputs.get("split", {}).get("sha256")
        if split_sha != up.scrub_manifest.outputs.get(SPLIT_FILE):
            raise StaleArtifactError(
                f"run {run.run_id} was trained on an older split of {run.dataset}; "
                "rerun `deepsight train`"
            )
    except PrerequisiteError:
        up.notes["scrub"] = "not run yet: deepsight scrub"
    try:
        folder = verified_explore_dir(workspace, run.dataset)
        up.explore = read_json(folder / EXPLORE_REPORT)
        up.explore_dir = folder
        up.explore_manifest = workspace.read_manifest(folder, "deepsight explore")
    except PrerequisiteError:
        up.notes["explore"] = "not run yet: deepsight explore"
    return up


# Numbers --------------------------------------------------------------------------------
def scored_summary(run: RunArtifacts, n_boot: int, seed: int) -> dict[str, Any]:
    """Test metrics with intervals: interpret's when it ran, else bootstrapped here the same way."""
    from deepsight_tf import evaluation

    if run.interpret is not None:
        head = run.interpret["headline"]
        return {
            **head,
            "ci_level": head.get("ci_level", 1 - evaluation.DEFAULT_ALPHA),
            "most_confused": run.interpret["most_confused"],
            "source": "interpret",
        }
    labels, probs = run.predictions["test_labels"], run.predictions["test_probs"]
    names = run.class_names
    summary = evaluation.classification_summary(labels, probs, names, n_boot=n_boot, seed=seed)
    recalls = evaluation.per_class_recall(labels, probs, names, n_boot=n_boot, seed=seed)
    pairs = evaluation.most_confused_pairs(np.asarray(summary["confusion"]), names, top=10)
    return {
        **summary,
        "per_class_recall": [asdict(r) for r in recalls],
        "most_confused": [asdict(p) for p in pairs],
        "source": "report",
    }


def make_headline(run: RunArtifacts, summary: dict[str, Any]) -> Headline:
    return Headline(
        run_id=run.run_id,
        accuracy=float(summary["accuracy"]),
        accuracy_ci=[float(v) for v in summary["accuracy_ci"][-2:]],
        macro_f1=float(summary["macro_f1"]),
        macro_f1_ci=[float(v) for v in summary["macro_f1_ci"][-2:]],
        ci_level=float(summary["ci_level"]),
        n=int(summary["n"]),
        mva=float(run.metrics["mva"]),
        passed=bool(run.metrics["passed"]),
        source=summary["source"],
    )


def _change(low: float | None, high: float | None) -> str:
    from deepsight_tf.evaluation import verdict_from_ci

    if low is None or high is None:
        return "not paired"
    return CHANGE_WORDS[verdict_from_ci(low, high)]


def compare_predictions(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    class_names: Sequence[str],
    *,
    paired: bool = True,
    labels_b: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """B - A in accuracy, macro-F1 and each class's recall, and the confusion cells that moved.

    With `paired` both runs scored the same test images (in the same order): the intervals come
    from resampling those images once for both runs (a paired bootstrap), which removes the
    variation the two share. Otherwise (`labels_b` gives B's labels) only the differences of the
    point estimates are given.
    """
    from sklearn.metrics import confusion_matrix, f1_score

    from deepsight_tf.evaluation import _batched_macro_f1, bootstrap_ci

    labels_a = np.asarray(labels)
    labels_b = labels_a if labels_b is None else np.asarray(labels_b)
    if paired and not np.array_equal(labels_a, labels_b):
        raise ValueError("paired comparison needs the same test labels in the same order")
    k, ids = len(class_names), list(range(len(class_names)))
    pred_a, pred_b = np.asarray(probs_a).argmax(1), np.asarray(probs_b).argmax(1)
    hits_a, hits_b = pred_a == labels_a, pred_b == labels_b
    boot = {"n_boot": n_boot, "seed": seed}

    def delta(name: str, a: float, b: float, ci: tuple[float, float, float] | None) -> Delta:
        low, high = (ci[1], ci[2]) if ci is not None else (None, None)
        return Delta(name, a, b, b - a, low, high, _change(low, high))

    f1_a = float(f1_score(labels_a, pred_a, labels=ids, average="macro", zero_division=0))
    f1_b = float(f1_score(labels_b, pred_b, labels=ids, average="macro", zero_division=0))
    accuracy_ci = f1_ci = None
    if paired:
        accuracy_ci = bootstrap_ci(
            lambda x, y: y.mean(axis=-1) - x.mean(axis=-1), hits_a, hits_b, **boot
        )
        f1_ci = bootstrap_ci(
            lambda y, a, b: _batched_macro_f1(y, b, k) - _batched_macro_f1(y, a, k),
            labels_a,
            pred_a,
            pred_b,
            **boot,
        )
    recall = []
    for c, name in enumerate(class_names):
        in_a, in_b = labels_a == c, labels_b == c
        if not in_a.any() or not in_b.any():
            continue
        ci = None
        if paired:
            ci = bootstrap_ci(
                lambda x, y: y.mean(axis=-1) - x.mean(axis=-1),
                hits_a[in_a],
                hits_b[in_b],
                n_boot=n_boot,
                seed=seed + 1 + c,
            )
        recall.append(delta(name, float(hits_a[in_a].mean()), float(hits_b[in_b].mean()), ci))
    conf_a = confusion_matrix(labels_a, pred_a, labels=ids)
    conf_b = confusion_matrix(labels_b, pred_b, labels=ids)
    moved = conf_b - conf_a
    cells = [
        ConfusionChange(class_names[i], class_names[j], int(conf_a[i, j]), int(conf_b[i, j]), d)
        for (i, j), d in np.ndenumerate(moved)
        if i != j and d != 0
    ]
    return {
        "n": len(labels_a),
        "accuracy": delta("accuracy", float(hits_a.mean()), float(hits_b.mean()), accuracy_ci),
        "macro_f1": delta("macro-F1", f1_a, f1_b, f1_ci),
        "recall": recall,
        "worse": sorted((c for c in cells if c.delta > 0), key=lambda c: -c.delta)[:TOP_CHANGES],
        "better": sorted((c for c in cells if c.delta < 0), key=lambda c: c.delta)[:TOP_CHANGES],
    }


def same_test_set(a: RunArtifacts, b: RunArtifacts) -> tuple[bool, str]:
    """Whether a paired comparison is valid: the same stored data set and the same test images."""
    from deepsight_tf.scrub import DATA_INPUT

    sha_a = a.manifest.inputs.get(DATA_INPUT, {}).get("sha256")
    sha_b = b.manifest.inputs.get(DATA_INPUT, {}).get("sha256")
    if a.class_names != b.class_names:
        return False, "the runs have different classes"
    if sha_a is None or sha_a != sha_b:
        return False, "the runs were trained on different copies of the data set"
    for key in ("test_indices", "test_labels"):
        if not np.array_equal(a.predictions[key], b.predictions[key]):
            return False, "the runs scored different test images"
    n = len(a.predictions["test_labels"])
    return True, f"paired bootstrap over the {n:,} test images both runs scored"


# HTML -----------------------------------------------------------------------------------
class Html(str):
    """Markup built in this module from escaped parts; every other string is escaped as text."""


def esc(value: Any) -> Html:
    if isinstance(value, Html):
        return value
    return Html(html.escape(str(value), quote=True))


def join(parts: Iterable[Any], sep: str = "\n") -> Html:
    return Html(sep.join(esc(p) for p in parts))


def element(tag: str, content: Any = "", **attrs: Any) -> Html:
    """<tag attrs>content</tag>; attribute names use '_' for '-' (a trailing '_' is dropped)."""
    attributes = "".join(
        f' {name.rstrip("_").replace("_", "-")}="{html.escape(str(value), quote=True)}"'
        for name, value in attrs.items()
        if value is not None and value is not False
    )
    body = join(content, "") if isinstance(content, list) else esc(content)
    return Html(f"<{tag}{attributes}>{body}</{tag}>")


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt(value: Any, spec: str) -> str:
    return "n/a" if is_missing(value) else format(value, spec)


def fmt_ci(ci: Sequence[Any] | None, spec: str) -> str:
    if ci is None or len(ci) < 2 or is_missing(ci[-2]) or is_missing(ci[-1]):
        return "n/a"
    return f"[{format(ci[-2], spec)}, {format(ci[-1], spec)}]"


def value_span(key: str, value: float, text: str) -> Html:
    """A number as shown, with the exact value in data-value (tests compare the two)."""
    return element("span", text, class_="value", data_key=key, data_value=repr(float(value)))


def badge(word: str) -> Html:
    return element("span", word, class_=f"badge {word.replace(' ', '-')}")


def paragraph(*parts: Any, css: str | None = None) -> Html:
    return element("p", list(parts), class_=css)


def missing(note: str) -> Html:
    return element("p", note, class_="missing")


def table(
    caption: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    table_id: str | None = None,
    numeric: Iterable[int] = (),
    footer: Sequence[Any] | None = None,
    css: str | None = None,
    highlight: Iterable[int] = (),
    cell_styles: dict[tuple[int, int], tuple[str | None, str | None]] | None = None,
    row_headers: Iterable[int] = (0,),
) -> Html:
    """A real <table>: caption, header row, <th scope=row> cells, numbers right-aligned."""
    numeric, highlight, row_headers = set(numeric), set(highlight), set(row_headers)
    cell_styles = cell_styles or {}

    def cells(row: Sequence[Any], r: int | None) -> Html:
        out = []
        for c, value in enumerate(row):
            align = "num" if c in numeric else None
            css_class, style = (
                cell_styles.get((r, c), (None, None)) if r is not None else (None, None)
            )
            classes = " ".join(x for x in (align, css_class) if x) or None
            if c in row_headers:
                out.append(element("th", value, scope="row", class_=classes, style=style))
            else:
                out.append(element("td", value, class_=classes, style=style))
        return join(out, "")

    head = element(
        "tr",
        [
            element("th", h, scope="col", class_="num" if i in numeric else None)
            for i, h in enumerate(headers)
        ],
    )
    body = [
        element("tr", cells(row, r), class_="highlight" if r in highlight else None)
        for r, row in enumerate(rows)
    ]
    parts = [element("caption", caption), element("thead", head), element("tbody", body)]
    if footer is not None:
        parts.append(element("tfoot", element("tr", cells(footer, None))))
    return element("div", element("table", parts, id=table_id, class_=css), class_="table-wrap")


def kv_table(caption: str, pairs: Sequence[tuple[str, Any]], table_id: str | None = None) -> Html:
    """Settings two to a row, so that a long list stays short on a laptop screen."""
    half = (len(pairs) + 1) // 2
    rows = []
    for i in range(half):
        right = pairs[half + i] if half + i < len(pairs) else ("", "")
        rows.append([*pairs[i], *right])
    headers = ["setting", "value", "setting", "value"]
    return table(caption, headers, rows, table_id=table_id, css="kv", row_headers=(0, 2))


def png_data_uri(path: Path) -> str | None:
    """The PNG as a data: URI (None when the file is missing or not a PNG)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.startswith(PNG_SIGNATURE):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(path: Path, caption: str, alt: str) -> Html:
    uri = png_data_uri(path)
    if uri is None:
        return missing(f"figure {Path(path).name} is missing; rerun the phase that draws it")
    image = Html(f'<img src="{esc(uri)}" alt="{esc(alt)}" loading="eager">')
    return element("figure", [image, element("figcaption", caption)])


def section(section_id: str, title: str, parts: Sequence[Any]) -> Html:
    return element("section", [element("h2", title), *parts], id=section_id)


def render_page(
    title: str,
    kicker: str,
    headline: Html,
    nav: Sequence[tuple[str, str]],
    body: Sequence[Html],
    footer: Html,
) -> str:
    """Fill assets/report.html with the page's parts and inline assets/report.css."""
    template = string.Template((ASSETS_DIR / TEMPLATE_FILE).read_text(encoding="utf-8"))
    css = (ASSETS_DIR / CSS_FILE).read_text(encoding="utf-8")
    links = join((element("a", label, href=f"#{anchor}") for anchor, label in nav), "\n")
    return template.substitute(
        title=esc(title),
        kicker=esc(kicker),
        version=esc(_version()),
        css=css,
        headline=headline,
        nav=links,
        sections=join(body),
        footer=footer,
    )


def _version() -> str:
    try:
        return metadata.version("deepsight")
    except metadata.PackageNotFoundError:
        return "unknown"


# Captions: what to look for in each figure --------------------------------------------
CAPTIONS = {
    "duplicates": "Duplicate pairs side by side with their distance, label conflicts and "
    "train-test pairs first. Look for pairs that are not the same photo (false matches) and for "
    "pairs whose two labels differ.",
    "duplicates_borderline": "Near duplicates closest to the distance threshold: if these still "
    "look like one photo, the threshold is strict enough; if they do not, it is too loose.",
    "interpolation": "One image upsampled to the training size by each method. The selected "
    "method should keep edges sharp without halos (ringing).",
    "class_balance": "Images per class and split. Equal bars mean a balanced data set; a short "
    "bar is a class the model sees less often and will tend to under-predict.",
    "samples": "Random training images per class. Look for wrong labels, images that are not "
    "of the class at all, and a typical background that could become a shortcut.",
    "class_means": "The mean image of each class. A distinct colour or layout here (sky behind "
    "airplanes, water behind ships) is a shortcut the model can learn without the object.",
    "brightness_contrast": "Brightness and contrast per class. Classes that differ here can be "
    "told apart by global statistics, without looking at shapes.",
    "training_history": "Loss, macro-F1 and learning rate per epoch, training against validation. "
    "Look for validation loss rising while training loss falls (over-fitting), a gap that keeps "
    "widening, and jumps at the start of a phase.",
    "per_class_recall": "Recall per class with its 95% interval. Classes whose intervals overlap "
    "are not shown to differ; the lowest bars are where more data or focus would help.",
    "confusion_matrix": "Confusion matrix coloured by row (the true class): the diagonal is "
    "recall. Bright cells off the diagonal are the mistakes the model makes most.",
    "most_confused": "The most frequent mistakes (true class → predicted). Pairs that share "
    "shape or background are expected; others point to label noise or a shortcut.",
    "reliability": "Reliability diagram before and after temperature scaling. Bars on the "
    "diagonal mean a confidence can be read as a probability; bars below it mean over-confidence.",
    "hypotheses": "Each hypothesis registered before training, with its estimate and 95% "
    "interval: an interval clear of zero decides the verdict, one across zero leaves it open.",
    "deletion_insertion": "Deletion (lower is better) and insertion (higher is better) curves of "
    "each heat-map method against a random order. A method no better than random does not show "
    "what the model uses.",
    "sanity_check": "Heat maps as the top layers are randomised one after another. Maps that "
    "stay the same do not depend on what the model learned and should not be trusted.",
    "context_reliance": "Accuracy per class with the centre hidden against the border hidden "
    "(same area). A class that keeps its accuracy without the centre relies on context.",
    "top_losses": "The most confidently wrong test images. Look for wrong labels, ambiguous "
    "images and objects that are tiny or cut off.",
    "label_issues": "Test images whose given label the model doubts most (cleanlab). Some are "
    "truly mislabelled; those inflate the error rate rather than reveal a model weakness.",
}


def cam_caption(stem: str, method: str, class_names: Sequence[str]) -> str:
    name = stem.removeprefix("cam_")
    if name == "top_losses":
        return (
            f"{method} maps on the most confidently wrong test images: did the model look at "
            "the object, at the background, or at something else in the frame?"
        )
    if name.startswith("pair_"):
        pair = name.removeprefix("pair_").replace("_", " and ", 1)
        return (
            f"{method} maps on images of {pair} mistaken for each other: look for the part of "
            "the object (or of the background) that the two classes share."
        )
    for cls in class_names:
        for kind in ("correct", "wrong"):
            if name == f"{cls}_{kind}":
                what = "correctly classified" if kind == "correct" else "misclassified"
                look = (
                    "the heat should sit on the object, not on the background"
                    if kind == "correct"
                    else "where the model looked when it went wrong"
                )
                return f"{method} maps on {what} {cls} images: {look}."
    return f"{method} maps ({name})."


# The run page ---------------------------------------------------------------------------
def _pct_points(value: float) -> str:
    return f"{100 * value:+.1f} points"


def headline_html(head: Headline, hypotheses: list[dict[str, Any]], note: str) -> Html:
    level = f"{head.ci_level:.0%}"
    cards = [
        element(
            "div",
            [
                element("div", "Test accuracy", class_="label"),
                element("div", value_span("test-accuracy", head.accuracy, f"{head.accuracy:.2%}")),
                element("div", f"{level} CI {fmt_ci(head.accuracy_ci, '.2%')}", class_="ci"),
            ],
            class_="metric-card",
        ),
        element(
            "div",
            [
                element("div", "Test macro-F1", class_="label"),
                element("div", value_span("test-macro-f1", head.macro_f1, f"{head.macro_f1:.4f}")),
                element("div", f"{level} CI {fmt_ci(head.macro_f1_ci, '.4f')}", class_="ci"),
            ],
            class_="metric-card",
        ),
        element(
            "div",
            [
                element("div", f"MVA gate: test accuracy ≥ {head.mva:.0%}", class_="label"),
                element("div", badge("passed" if head.passed else "failed")),
                element("div", gate_sentence(head), class_="ci"),
            ],
            class_="metric-card",
        ),
    ]
    lines: list[Html] = []
    for h in hypotheses:
        lines.append(
            element(
                "li",
                [
                    badge(h["verdict"]),
                    " ",
                    h["name"],
                    f": {h['estimate']:+.3f} {fmt_ci([h['low'], h['high']], '+.3f')}",
                ],
            )
        )
    if not lines:
        lines.append(element("li", [badge("not run"), " ", note]))
    source = (
        "intervals from interpret's bootstrap"
        if head.source == "interpret"
        else "intervals bootstrapped by this report"
    )
    return join(
        [
            element("div", cards, class_="headline"),
            element("h3", "Hypotheses registered before training"),
            element("ul", lines, class_="verdicts", id="verdicts"),
            paragraph(f"{head.n:,} test images; {source}.", css="note"),
        ]
    )


def gate_sentence(head: Headline) -> str:
    low, high = head.accuracy_ci
    margin = head.accuracy - head.mva
    word = "above" if margin >= 0 else "below"
    if low >= head.mva:
        interval = "the whole interval clears the gate"
    elif high < head.mva:
        interval = "the whole interval is below the gate"
    else:
        interval = "the interval straddles the gate"
    return f"{_pct_points(abs(margin)).lstrip('+')} {word}; {interval}"


def data_section(up: UpstreamArtifacts, class_names: list[str]) -> Html:
    parts: list[Any] = []
    if up.obtain is None:
        return section("data", "Data", [missing(up.notes.get("obtain", "not available"))])
    o = up.obtain
    h, w, c = o["image_shape"]
    sha = up.obtain_manifest.outputs.get("images.npz", "") if up.obtain_manifest else ""
    parts.append(
        paragraph(
            f"Data set {o['dataset']} ({o['kind']}) read from ",
            element("code", o["source"]),
            f": {h}×{w}×{c} uint8 images in {len(class_names)} classes; images.npz SHA-256 ",
            element("code", sha[:16] + "…"),
            f"; obtained {up.obtain_manifest.finished if up.obtain_manifest else 'n/a'}.",
        )
    )
    skipped, conversions = o.get("skipped", []), o.get("conversions", {})
    problems = [f"{len(skipped):,} unreadable files skipped"] + [
        f"{n:,} converted: {what}" for what, n in conversions.items()
    ]
    parts.append(paragraph("Input problems: " + "; ".join(problems) + "."))
    splits = list(o["counts"])
    rows = [[cls, *(f"{o['counts'][s].get(cls, 0):,}" for s in splits)] for cls in class_names]
    headers = ["class", *(f"stored {s}" for s in splits)]
    footer: list[Any] = ["total", *(f"{sum(o['counts'][s].values()):,}" for s in splits)]
    scrub = up.scrub
    if scrub is not None:
        parts_counts = scrub["split"]["class_counts"]
        headers += [f"split {p}" for p in parts_counts]
        for row, cls in zip(rows, class_names, strict=True):
            row.extend(f"{parts_counts[p].get(cls, 0):,}" for p in parts_counts)
        footer += [f"{scrub['split']['sizes'][p]:,}" for p in parts_counts]
    parts.append(element("h3", "Counts"))
    parts.append(
        table(
            "Images per class: as stored, and in scrub's split",
            headers,
            rows,
            table_id="counts",
            numeric=range(1, len(headers)),
            footer=footer,
        )
    )
    if up.explore is not None:
        parts.extend(balance_parts(up))
    else:
        parts.append(missing(up.notes.get("explore", "not available")))
    if scrub is not None:
        parts.extend(scrub_parts(up))
    else:
        parts.append(missing(up.notes.get("scrub", "not available")))
    return section("data", "Data", parts)


def balance_parts(up: UpstreamArtifacts) -> list[Any]:
    e = up.explore or {}
    rows = []
    for b in e["balance"]:
        rows.append(
            [
                b["split"],
                f"{b['total']:,}",
                fmt(b.get("chi2"), ".2f"),
                str(b.get("dof", "n/a")),
                fmt(b.get("p_value"), ".3g"),
                fmt(b.get("imbalance_ratio"), ".2f"),
            ]
        )
    px = e["pixel_stats"]
    pixel_rows = [[ch, f"{px['mean'][i]:.2f}", f"{px['std'][i]:.2f}"] for i, ch in enumerate("RGB")]
    parts: list[Any] = [
        element("h3", "Class balance"),
        table(
            "Chi-square test of uniform class counts per split",
            ["split", "images", "chi-square", "dof", "p-value", "largest / smallest"],
            rows,
            table_id="balance",
            numeric=range(1, 6),
        ),
        table(
            f"Pixel statistics of {px['split']} ({px['n_images']:,} images), 0..255",
            ["channel", "mean", "std"],
            pixel_rows,
            table_id="pixels",
            numeric=(1, 2),
        ),
        paragraph(
            f"Brightest class {e['brightest_class']}, darkest {e['darkest_class']}; highest "
            f"contrast {e['highest_contrast_class']}, lowest {e['lowest_contrast_class']}."
        ),
    ]
    for rel in e.get("figures", []):
        stem = Path(rel).stem
        parts.append(
            figure(Path(up.explore_dir or "") / rel, CAPTIONS.get(stem, stem), f"explore: {stem}")
        )
    return parts


def scrub_parts(up: UpstreamArtifacts) -> list[Any]:
    s = up.scrub or {}
    scrub_dir = Path(up.scrub_dir or "")
    dup = s["duplicates"]
    rows = []
    names = {"train": "within train", "test": "within test", "train-test": "across train-test"}
    for category, label in names.items():
        exact, near = dup["exact"][category], dup["near"][category]
        rows.append(
            [
                label,
                f"{exact['pairs']:,}",
                f"{exact['images']:,}",
                f"{near['pairs']:,}",
                f"{near['images']:,}",
                f"{exact['label_conflicts'] + near['label_conflicts']:,}",
            ]
        )
    leaks = s["leakage"]
    n_test = s["integrity"]["test"]["images"]
    share = leaks["test_images_with_train_twin"] / max(n_test, 1)
    study = s["interpolation"]
    interp_rows = [
        [
            r["method"] + (" (selected)" if r["selected"] else ""),
            "candidate" if r["candidate"] else "context",
            f"{r['reconstruction_rmse']:.2f}",
            f"{r['round_trip_rmse']:.2f}",
            f"{r['high_freq_retained']:.2f}",
            f"{r['overshoot_pct']:.2f}",
        ]
        for r in study["rows"]
    ]
    overlap = s["split"]["duplicate_overlap"]
    parts: list[Any] = [
        element("h3", "Duplicates and leakage"),
        table(
            f"Exact and near duplicates (near: distance ≤ {dup['threshold']})",
            [
                "where",
                "exact pairs",
                "exact images",
                "near pairs",
                "near images",
                "label conflicts",
            ],
            rows,
            table_id="duplicates",
            numeric=range(1, 6),
        ),
        paragraph(
            f"Leakage: {leaks['test_images_with_train_twin']:,} test images ({share:.1%}) have a "
            f"twin in train ({leaks['exact']:,} identical). The validation split keeps duplicate "
            f"groups on one side: near-duplicate pairs across train and validation "
            f"{overlap['near'].get('train-val', 0)}, exact {overlap['exact'].get('train-val', 0)}."
        ),
        paragraph(dup["method"], css="note"),
    ]
    figures = [f for f in s.get("files", []) if f.endswith(".png")]
    for rel in figures:
        stem = Path(rel).stem
        if stem != "interpolation":
            parts.append(figure(scrub_dir / rel, CAPTIONS.get(stem, stem), f"scrub: {stem}"))
    parts += [
        element("h3", "Interpolation"),
    ]
    if interp_rows:  # none when the images are already at the training size
        parts.append(
            table(
                f"Upsampling {study['source_size'][0]} px to {study['image_size']} px "
                f"({study['sample']} images; RMSE on 0..255)",
                ["method", "role", "recon. RMSE", "round-trip RMSE", "HF kept", "overshoot %"],
                interp_rows,
                table_id="interpolation",
                numeric=range(2, 6),
                highlight=[i for i, r in enumerate(study["rows"]) if r["selected"]],
            )
        )
    parts.append(paragraph(f"Selected: {study['selected']} ({study['rule']})."))
    for rel in figures:
        if Path(rel).stem == "interpolation":
            parts.append(figure(scrub_dir / rel, CAPTIONS["interpolation"], "scrub: interpolation"))
    return parts


SETTINGS_SHOWN = (
    "backbone",
    "weights",
    "stem",
    "image_size",
    "width_multiplier",
    "batch_size",
    "frozen_epochs",
    "epochs",
    "unfreeze",
    "optimizer",
    "lr",
    "backbone_lr_mult",
    "weight_decay",
    "pct_start",
    "dropout",
    "augment",
    "mix",
    "mix_alpha",
    "label_smoothing",
    "class_weights",
    "focus_pairs",
    "max_train_images",
    "mva",
    "seed",
)


def run_phases(run: RunArtifacts) -> list[Any]:
    """The run's training phases as training.py planned them (at the replica-scaled rate)."""
    from deepsight_tf.config import TrainSettings
    from deepsight_tf.training import plan_phases

    known = TrainSettings.__dataclass_fields__
    settings = TrainSettings(**{k: v for k, v in run.config["settings"].items() if k in known})
    lr = run.config.get("distribution", {}).get("lr", settings.lr)
    return plan_phases(replace(settings, lr=lr))


def training_section(run: RunArtifacts, history_figure: Path | None) -> Html:
    settings = run.config["settings"]
    pairs = [(k, _plain(settings[k])) for k in SETTINGS_SHOWN if k in settings]
    pairs += [
        ("precision", run.config.get("precision", "n/a")),
        ("interpolation", run.config.get("interpolation", "n/a")),
        ("normalization", _normalization(run.config.get("normalization"))),
    ]
    if "distribution" in run.config:
        d = run.config["distribution"]
        pairs.append(("distribution", ", ".join(f"{k} {_plain(v)}" for k, v in d.items())))
    phases = run_phases(run)
    history = run.history
    first = 1
    phase_rows = []
    for p in phases:
        rows = [r for r in history if r.get("phase") == p.index]
        seconds = sum(float(r.get("seconds", 0.0)) for r in rows)
        last = first + p.epochs - 1
        phase_rows.append(
            [
                str(p.index),
                p.name,
                f"{first}–{last}" if last > first else str(first),
                f"{p.peak_lr:g}",
                f"×{p.backbone_lr_mult:g}",
                f"{len(rows)}/{p.epochs}",
                f"{seconds / 60:.1f}",
            ]
        )
        first = last + 1
    best = run.metrics.get("best_epoch")
    columns = [
        c
        for c in (
            "epoch",
            "phase",
            "lr_end",
            "loss",
            "val_loss",
            "accuracy",
            "val_accuracy",
            "macro_f1",
            "val_macro_f1",
            "seconds",
        )
        if any(c in r for r in history)
    ]
    specs = {"lr_end": ".3g", "seconds": ".1f", "epoch": "d", "phase": "d"}
    history_rows = [[fmt(r.get(c), specs.get(c, ".4f")) for c in columns] for r in history]
    duration = run.metrics.get("duration_s") or run.manifest.duration_s
    epoch_seconds = sum(float(r.get("seconds", 0.0)) for r in history)
    parts: list[Any] = [
        paragraph(
            f"Run {run.run_id}: {len(history)} epochs in {fmt((duration or 0) / 60, '.1f')} min "
            f"in all ({epoch_seconds / 60:.1f} min in epochs, the rest scoring and saving); "
            f"best epoch by validation macro-F1: {best if best is not None else 'n/a'}; "
            f"started {run.manifest.started}, finished {run.manifest.finished}."
        ),
        element("h3", "Configuration"),
        kv_table("Settings the run was trained with (config.json)", pairs, table_id="config"),
        element("h3", "Phases"),
        table(
            "Training phases, each with its own one-cycle schedule",
            ["phase", "what trains", "epochs", "peak lr", "backbone lr", "epochs run", "minutes"],
            phase_rows,
            table_id="phases",
            numeric=(0, 3, 4, 5, 6),
        ),
        element("h3", "Curves"),
    ]
    if history_figure is not None:
        starts = ", ".join(f"phase {r[0]} is epochs {r[2]}" for r in phase_rows)
        caption = f"{CAPTIONS['training_history']} Phases: {starts}."
        parts.append(figure(history_figure, caption, "training history"))
    if history_rows:
        parts.append(
            table(
                "Per-epoch history (history.csv); the best epoch is in bold",
                columns,
                history_rows,
                table_id="history",
                numeric=range(len(columns)),
                highlight=[i for i, r in enumerate(history) if r.get("epoch") == best],
            )
        )
    else:
        parts.append(missing("history.csv has no epochs"))
    return section("training", "Training", parts)


def _plain(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    return str(value)


def _normalization(norm: dict[str, Any] | None) -> str:
    if not norm:
        return "n/a"
    mean = ", ".join(f"{v:.1f}" for v in norm.get("mean", []))
    std = ", ".join(f"{v:.1f}" for v in norm.get("std", []))
    return f"mean ({mean}), std ({std}), from {norm.get('source', 'n/a')}"


def results_section(run: RunArtifacts, summary: dict[str, Any], head: Headline) -> Html:
    names = run.class_names
    val = run.metrics.get("val", {})
    level = f"{head.ci_level:.0%}"
    metric_rows = [
        [
            "test",
            f"{head.accuracy:.2%}",
            fmt_ci(head.accuracy_ci, ".2%"),
            f"{head.macro_f1:.4f}",
            fmt_ci(head.macro_f1_ci, ".4f"),
            f"{head.n:,}",
        ]
    ]
    if val:
        metric_rows.append(
            [
                "validation",
                f"{val['accuracy']:.2%}",
                "",
                f"{val['macro_f1']:.4f}",
                "",
                f"{val['n']:,}",
            ]
        )
    gate_rows = [
        [
            "test accuracy (the gate)",
            f"{head.accuracy:.2%}",
            f"{head.mva:.0%}",
            _pct_points(head.accuracy - head.mva),
            "passed" if head.passed else "failed",
        ],
        [
            "test macro-F1 (for reference)",
            f"{head.macro_f1:.4f}",
            f"{head.mva:.2f}",
            f"{head.macro_f1 - head.mva:+.4f}",
            "above" if head.macro_f1 >= head.mva else "below",
        ],
    ]
    recalls = {r["name"]: r for r in summary.get("per_class_recall", [])}
    class_rows = []
    for name in names:
        row = summary["per_class"][name]
        r = recalls.get(name, {})
        class_rows.append(
            [
                name,
                f"{row['precision']:.3f}",
                f"{row['recall']:.3f}",
                fmt_ci([r.get("low"), r.get("high")], ".3f") if r else "n/a",
                f"{row['f1']:.3f}",
                f"{int(row['support']):,}",
            ]
        )
    confusion = np.asarray(summary["confusion"], dtype=np.int64)
    support = confusion.sum(axis=1, keepdims=True)
    rates = np.divide(confusion, support, out=np.zeros(confusion.shape), where=support > 0)
    styles = {}
    for (i, j), rate in np.ndenumerate(rates):
        # Shade by the row's rate so that rare and frequent classes read alike.
        alpha = min(1.0, float(rate)) * (0.85 if i == j else 1.6)
        colour = f"background-color: rgba(0, 114, 178, {min(alpha, 0.85):.2f})"
        if alpha > 0.5:
            colour += "; color: #fff"
        styles[(i, j + 1)] = ("diagonal" if i == j else None, colour)
    conf_rows = [[names[i], *(f"{v:,}" for v in confusion[i])] for i in range(len(names))]
    pairs_rows = [
        [f"{p['a']} / {p['b']}", f"{p['a_as_b']:,}", f"{p['b_as_a']:,}", f"{p['rate']:.2%}"]
        for p in summary.get("most_confused", [])[:10]
    ]
    parts: list[Any] = [
        table(
            f"Accuracy and macro-F1 ({level} bootstrap intervals on test)",
            ["split", "accuracy", "CI", "macro-F1", "CI", "images"],
            metric_rows,
            table_id="metrics",
            numeric=range(1, 6),
        ),
        table(
            f"Minimum Viable Accuracy gate: test accuracy ≥ {head.mva:.0%}",
            ["measure", "value", "gate", "margin", "verdict"],
            gate_rows,
            table_id="gate",
            numeric=(1, 2, 3),
        ),
        element("h3", "Per class"),
        table(
            f"Per-class test metrics (recall with its {level} interval)",
            ["class", "precision", "recall", "recall CI", "F1", "support"],
            class_rows,
            table_id="per-class",
            numeric=range(1, 6),
        ),
    ]
    interpret_dir = run.run_dir / "interpret" / "figures"
    if run.interpret is not None:
        parts.append(
            figure(
                interpret_dir / "per_class_recall.png",
                CAPTIONS["per_class_recall"],
                "per-class recall",
            )
        )
    parts += [
        element("h3", "Confusion"),
        table(
            "Confusion matrix on test: rows are the true class, columns the predicted one "
            "(shade: share of the row)",
            ["true \\ predicted", *names],
            conf_rows,
            table_id="confusion",
            numeric=range(1, len(names) + 1),
            css="confusion",
            cell_styles=styles,
        ),
    ]
    if run.interpret is not None:
        parts.append(
            figure(
                interpret_dir / "confusion_matrix.png",
                CAPTIONS["confusion_matrix"],
                "confusion matrix",
            )
        )
    parts += [
        table(
            "Most confused pairs (both directions; rate over the two classes' images)",
            ["pair", "a → b", "b → a", "rate"],
            pairs_rows,
            table_id="confused-pairs",
            numeric=(1, 2, 3),
        ),
    ]
    if run.interpret is not None:
        parts.append(
            figure(interpret_dir / "most_confused.png", CAPTIONS["most_confused"], "most confused")
        )
    parts.append(element("h3", "Calibration"))
    if run.interpret is None:
        parts.append(missing(f"calibration: not run yet: {interpret_hint(run.run_id)}"))
    else:
        cal = run.interpret["calibration"]
        parts += [
            table(
                f"Calibration on test; temperature T = {cal['temperature']:.3f} fitted on "
                f"{cal['n_val']:,} validation images",
                ["measure", "before", "after scaling"],
                [
                    [
                        f"expected calibration error ({cal['bins']} bins)",
                        f"{cal['ece_before']:.4f}",
                        f"{cal['ece_after']:.4f}",
                    ],
                    [
                        "negative log-likelihood",
                        f"{cal['nll_before']:.4f}",
                        f"{cal['nll_after']:.4f}",
                    ],
                ],
                table_id="calibration",
                numeric=(1, 2),
            ),
            figure(interpret_dir / "reliability.png", CAPTIONS["reliability"], "reliability"),
        ]
        leak = run.interpret.get("leakage")
        if leak and leak["in_mask"]["n"]:
            parts.append(
                paragraph(
                    f"Leakage check: accuracy {leak['in_mask']['accuracy']:.2%} on the "
                    f"{leak['in_mask']['n']:,} test images with a near duplicate in train, "
                    f"{leak['rest']['accuracy']:.2%} on the other {leak['rest']['n']:,}; gap "
                    f"{_pct_points(leak['gap'])} {fmt_ci(leak['gap_ci'], '+.2%')}."
                )
            )
    return section("results", "Results", parts)


def interpretation_section(run: RunArtifacts) -> Html:
    rep = run.interpret
    if rep is None:
        return section(
            "interpretation",
            "Interpretation",
            [missing(f"not run yet: {interpret_hint(run.run_id)}")],
        )
    names = run.class_names
    folder = run.run_dir / "interpret" / "figures"
    stems = {Path(f).stem for f in rep.get("figures", [])}
    method = (run.interpret_manifest.settings if run.interpret_manifest else {}).get(
        "methods", "gradcam"
    )
    first = str(method).split(",")[0]

    def fig(stem: str, alt: str) -> list[Any]:
        return [figure(folder / f"{stem}.png", CAPTIONS[stem], alt)] if stem in stems else []

    parts: list[Any] = [element("h3", "Hypotheses")]
    if rep["hypotheses"]:
        rows = [
            [
                h["name"],
                f"{h['estimate']:+.3f}",
                fmt_ci([h["low"], h["high"]], "+.3f"),
                f"{h['n']:,}",
                badge(h["verdict"]),
            ]
            for h in rep["hypotheses"]
        ]
        parts.append(
            table(
                "Hypotheses registered by explore before training, tested on the test set",
                ["hypothesis", "estimate", "95% CI", "images", "verdict"],
                rows,
                table_id="hypotheses",
                numeric=(1, 2, 3),
            )
        )
        parts += fig("hypotheses", "hypotheses")
    else:
        parts.append(missing(f"no hypotheses tested: {rep.get('hypotheses_note', '')}"))

    parts.append(element("h3", "Do the heat maps show what the model uses?"))
    faith = rep.get("faithfulness")
    if faith:
        rows = [
            [
                name,
                f"{m['deletion_auc']:.3f}",
                f"{m['random_deletion_auc']:.3f}",
                f"{m['deletion_gain']:+.3f} {fmt_ci(m['deletion_gain_ci'], '+.3f')}",
                f"{m['insertion_auc']:.3f}",
                f"{m['random_insertion_auc']:.3f}",
                f"{m['insertion_gain']:+.3f} {fmt_ci(m['insertion_gain_ci'], '+.3f')}",
                f"{m['n_images']:,}",
                badge(m["verdict"]),
            ]
            for name, m in faith["methods"].items()
        ]
        parts.append(
            table(
                "Faithfulness: deletion and insertion AUC against a random order (gain > 0 is "
                "better than random)",
                [
                    "method",
                    "deletion AUC",
                    "random",
                    "deletion gain [CI]",
                    "insertion AUC",
                    "random",
                    "insertion gain [CI]",
                    "images",
                    "verdict",
                ],
                rows,
                table_id="faithfulness",
                numeric=range(1, 8),
            )
        )
        parts += fig("deletion_insertion", "deletion and insertion curves")
    sanity = rep.get("sanity")
    if sanity:
        steps = ", ".join(
            f"{g}: {fmt(s, '.2f')}"
            for g, s in zip(sanity["groups"], sanity["mean_spearman"], strict=False)
        )
        parts.append(
            paragraph(
                "Sanity check (cascading randomisation of ",
                f"{sanity['method']} at {sanity['layer_name']}): ",
                badge("passed" if sanity["passed"] else "flagged"),
                f" mean Spearman correlation with the original maps after each step: {steps} "
                f"(flagged above {sanity['threshold']}).",
            )
        )
        parts += fig("sanity_check", "sanity check")

    ctx = rep.get("context")
    parts.append(element("h3", "Context reliance"))
    if ctx:
        energy = ctx.get("cam_energy", {})
        energy_of = dict(zip(energy.get("class_names", []), energy.get("mean", []), strict=False))
        rows = []
        for c in [*ctx["classes"], ctx["overall"]]:
            rows.append(
                [
                    c["name"],
                    f"{c['n']:,}",
                    f"{c['clean']:.1%}",
                    f"{c['centre_occluded']:.1%}",
                    f"{c['border_occluded']:.1%}",
                    f"{c['context_gap']:+.1%} {fmt_ci(c['context_gap_ci'], '+.1%')}",
                    "yes" if c["holds_without_object"] else "no",
                    fmt(energy_of.get(c["name"]), ".2f"),
                ]
            )
        parts.append(
            table(
                f"Accuracy with the centre or the border hidden (same area; chance "
                f"{ctx['chance']:.0%}); CAM centre share against "
                f"{fmt(energy.get('uniform'), '.2f')} for a uniform map",
                [
                    "class",
                    "images",
                    "clean",
                    "centre hidden",
                    "border hidden",
                    "context gap [CI]",
                    "holds without object",
                    "CAM centre share",
                ],
                rows,
                table_id="context",
                numeric=range(1, 8),
                highlight=[len(rows) - 1],
            )
        )
        parts.append(
            paragraph(
                "Relying on context: "
                f"{', '.join(ctx['relies_on_context']) or 'none'}; relying on the object: "
                f"{', '.join(ctx['relies_on_object']) or 'none'}."
            )
        )
        parts += fig("context_reliance", "context reliance")

    parts.append(element("h3", "Grad-CAM"))
    order = [f"cam_{n}_{k}" for n in names for k in ("correct", "wrong")]
    order += sorted(s for s in stems if s.startswith("cam_") and s not in order)
    grids = [
        figure(folder / f"{stem}.png", cam_caption(stem, first, names), stem.replace("_", " "))
        for stem in order
        if stem in stems
    ]
    parts.append(element("div", grids, class_="gallery") if grids else missing("no CAM grids"))

    issues = rep["label_issues"]
    focus_file = run.run_dir / "interpret" / Path(issues["focus_pairs_file"]).name
    parts.append(element("h3", "Label issues"))
    issue_rows = [
        [
            str(i["rank"] + 1),
            str(i["index"]),
            i.get("path") or "—",
            i["given_label"],
            i["suggested_label"],
            f"{i['suggested_probability']:.3f}",
            f"{i['score']:.3f}",
        ]
        for i in issues.get("top", [])
    ]
    parts.append(
        paragraph(
            f"cleanlab flags {issues['count']:,} test images whose label the model doubts; all "
            "are in ",
            element("code", Path(issues["csv"]).name),
            "; the hardest pairs are written for ",
            element("code", f"deepsight train --focus-pairs @{focus_file}"),
            ".",
        )
    )
    if issue_rows:
        parts.append(
            table(
                "The most doubtful labels (score: the model's probability of the given label)",
                ["rank", "test index", "file", "given", "suggested", "p(suggested)", "score"],
                issue_rows,
                table_id="label-issues",
                numeric=(0, 1, 5, 6),
            )
        )
    parts += fig("label_issues", "label issues")

    parts.append(element("h3", "Top losses"))
    from deepsight_tf.evaluation import top_losses

    losses = top_losses(run.predictions["test_labels"], run.predictions["test_probs"], k=TOP_LOSSES)
    loss_rows = [
        [
            str(int(i)),
            names[int(t)],
            names[int(p)],
            f"{pp:.3f}",
            f"{tp:.4f}",
            f"{loss:.2f}",
        ]
        for i, t, p, pp, tp, loss in zip(
            losses.indices,
            losses.labels,
            losses.predicted,
            losses.probability,
            losses.true_probability,
            losses.loss,
            strict=True,
        )
    ]
    parts.append(
        table(
            "The most confidently wrong test images (loss = -log p(true class))",
            ["test index", "true", "predicted", "p(predicted)", "p(true)", "loss"],
            loss_rows,
            table_id="top-losses",
            numeric=(0, 3, 4, 5),
        )
    )
    parts += fig("top_losses", "top losses")
    return section("interpretation", "Interpretation", parts)


def provenance(items: Sequence[tuple[str, str, str]]) -> Html:
    rows = [
        [what, element("code", path), element("code", sha[:16] + "…")] for what, path, sha in items
    ]
    return join(
        [
            table(
                "Made from (SHA-256 from the manifests)",
                ["input", "file", "SHA-256"],
                rows,
                table_id="provenance",
            ),
            paragraph(
                f"Written {now_iso()} by deepsight {_version()}. One file: figures are "
                "embedded, nothing is fetched."
            ),
        ]
    )


def draw_history(run: RunArtifacts) -> Path | None:
    """Training curves drawn by plots.training, beside the run (None when there are no epochs)."""
    if not run.history:
        return None
    from deepsight_tf.plots import save_figure
    from deepsight_tf.plots.training import plot_history

    columns: dict[str, list[float]] = {}
    for row in run.history:
        for key, value in row.items():
            if isinstance(value, (int, float)):
                columns.setdefault(key, []).append(float(value))
    return save_figure(
        plot_history(columns, metrics=("loss", "macro_f1", "lr_end")), run.run_dir / HISTORY_FIGURE
    )


def run_report(workspace: Workspace, run_id: str, n_boot: int, seed: int) -> ReportResult:
    start = time.perf_counter()
    run = load_run_artifacts(workspace, run_id)
    up = load_upstream(workspace, run)
    summary = scored_summary(run, n_boot, seed)
    head = make_headline(run, summary)
    hypotheses = run.interpret["hypotheses"] if run.interpret else []
    if run.interpret is not None:
        note = run.interpret.get("hypotheses_note", "")
    elif up.explore is not None and any(
        up.explore["hypotheses"].get(k) for k in ("comparisons", "confusable_pairs")
    ):
        note = f"registered by explore, not tested yet: {interpret_hint(run_id)}"
    else:
        note = f"not run yet: {interpret_hint(run_id)}"
    path = run.run_dir / REPORT_FILE
    with workspace.lock(f"run-{run_id}-report"):
        history_figure = draw_history(run)
        sections = [
            data_section(up, run.class_names),
            training_section(run, history_figure),
            results_section(run, summary, head),
            interpretation_section(run),
        ]
        sources = [("run", f"runs/{run_id}/{k}", v) for k, v in run.manifest.outputs.items()]
        for phase, manifest, rel in (
            ("obtain", up.obtain_manifest, f"data/{run.dataset}"),
            ("scrub", up.scrub_manifest, f"scrub/{run.dataset}"),
            ("explore", up.explore_manifest, f"explore/{run.dataset}"),
            ("interpret", run.interpret_manifest, f"runs/{run_id}/interpret"),
        ):
            if manifest is not None:
                sources += [
                    (phase, f"{rel}/{k}", v)
                    for k, v in manifest.outputs.items()
                    if k.endswith((".json", ".npz", ".csv"))
                ]
        page = render_page(
            title=f"Run {run_id} on {run.dataset}",
            kicker="deepsight report",
            headline=headline_html(head, hypotheses, note),
            nav=[(s, s.capitalize()) for s in SECTIONS],
            body=sections,
            footer=provenance(sources),
        )
        atomic_write_text(path, page)
    notes = {
        "data": up.notes.get("obtain")
        or up.notes.get("scrub")
        or up.notes.get("explore")
        or "shown",
        "training": "shown",
        "results": "shown",
        "interpretation": "shown" if run.interpret else f"not run yet: {interpret_hint(run_id)}",
    }
    return ReportResult(
        kind="run",
        run_ids=[run_id],
        path=str(path),
        size_bytes=path.stat().st_size,
        figures=page.count("<img "),
        sections=notes,
        headlines=[head],
        hypotheses=[
            {k: h[k] for k in ("name", "estimate", "low", "high", "verdict")} for h in hypotheses
        ],
        duration_s=round(time.perf_counter() - start, 2),
    )


# The comparison page --------------------------------------------------------------------
def compare_report(
    workspace: Workspace, run_ids: Sequence[str], n_boot: int, seed: int
) -> ReportResult:
    start = time.perf_counter()
    runs = [load_run_artifacts(workspace, r) for r in run_ids]
    summaries = [scored_summary(r, n_boot, seed) for r in runs]
    heads = [make_headline(r, s) for r, s in zip(runs, summaries, strict=True)]
    base = runs[0]
    comparisons = []
    for other in runs[1:]:
        paired, why = same_test_set(base, other)
        if base.class_names != other.class_names:
            raise ConfigError(
                f"runs {base.run_id} and {other.run_id} have different classes; compare runs "
                "of one data set"
            )
        found = compare_predictions(
            base.predictions["test_labels"],
            base.predictions["test_probs"],
            other.predictions["test_probs"],
            base.class_names,
            paired=paired,
            labels_b=other.predictions["test_labels"],
            n_boot=n_boot,
            seed=seed,
        )
        comparisons.append(
            RunComparison(
                a=base.run_id,
                b=other.run_id,
                paired=paired,
                pairing=why if paired else f"not paired: {why}; differences without intervals",
                duration_a=base.metrics.get("duration_s"),
                duration_b=other.metrics.get("duration_s"),
                **found,
            )
        )
    folder = workspace.root / REPORTS_DIR
    path = folder / f"compare-{'-'.join(run_ids)}.html"
    page = render_page(
        title="Compare " + " vs ".join(run_ids),
        kicker="deepsight comparison",
        headline=compare_headline(heads, comparisons),
        nav=[
            ("runs", "Runs"),
            ("differences", "Differences"),
            ("per-class", "Per class"),
            ("confusions", "Confusions"),
            ("training", "Training"),
        ],
        body=compare_sections(runs, heads, comparisons),
        footer=provenance(
            [
                (f"run {r.run_id}", f"runs/{r.run_id}/{k}", v)
                for r in runs
                for k, v in r.manifest.outputs.items()
                if k.endswith((".json", ".npz"))
            ]
        ),
    )
    with workspace.lock("reports"):
        atomic_write_text(path, page)
    return ReportResult(
        kind="compare",
        run_ids=list(run_ids),
        path=str(path),
        size_bytes=path.stat().st_size,
        figures=page.count("<img "),
        sections={"runs": "shown", "differences": "shown"},
        headlines=heads,
        comparisons=comparisons,
        duration_s=round(time.perf_counter() - start, 2),
    )


def _delta_text(d: Delta, percent: bool) -> str:
    if percent:
        text = _pct_points(d.delta)
        if d.low is not None:
            text += f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        return text
    return f"{d.delta:+.4f}" + (f" {fmt_ci([d.low, d.high], '+.4f')}" if d.low is not None else "")


def compare_headline(heads: Sequence[Headline], comparisons: Sequence[RunComparison]) -> Html:
    cards = []
    for h in heads:
        cards.append(
            element(
                "div",
                [
                    element("div", f"run {h.run_id}: test accuracy / macro-F1", class_="label"),
                    element(
                        "div",
                        [
                            value_span(f"accuracy-{h.run_id}", h.accuracy, f"{h.accuracy:.2%}"),
                            " / ",
                            value_span(f"macro-f1-{h.run_id}", h.macro_f1, f"{h.macro_f1:.4f}"),
                        ],
                    ),
                    element(
                        "div",
                        f"accuracy {fmt_ci(h.accuracy_ci, '.2%')}, macro-F1 "
                        f"{fmt_ci(h.macro_f1_ci, '.4f')}",
                        class_="ci",
                    ),
                    element(
                        "div", [badge("passed" if h.passed else "failed"), f" MVA {h.mva:.0%}"]
                    ),
                ],
                class_="metric-card",
            )
        )
    lines = []
    for c in comparisons:
        for d, percent in ((c.accuracy, True), (c.macro_f1, False)):
            lines.append(
                element(
                    "li",
                    [badge(d.verdict), f" {c.b} vs {c.a}: {d.name} {_delta_text(d, percent)}"],
                )
            )
    return join(
        [
            element("div", cards, class_="headline"),
            element("ul", lines, class_="verdicts", id="verdicts"),
            paragraph("; ".join(f"{c.b} vs {c.a}: {c.pairing}" for c in comparisons), css="note"),
        ]
    )


def compare_sections(
    runs: Sequence[RunArtifacts], heads: Sequence[Headline], comparisons: Sequence[RunComparison]
) -> list[Html]:
    run_rows = []
    for r, h in zip(runs, heads, strict=True):
        s = r.config["settings"]
        run_rows.append(
            [
                r.run_id,
                f"{s.get('backbone')} ({s.get('weights')})",
                f"{s.get('image_size')} px",
                f"{s.get('augment')}, mix {s.get('mix')}",
                f"{h.accuracy:.2%} {fmt_ci(h.accuracy_ci, '.2%')}",
                f"{h.macro_f1:.4f} {fmt_ci(h.macro_f1_ci, '.4f')}",
                "passed" if h.passed else "failed",
            ]
        )
    out = [
        section(
            "runs",
            "Runs",
            [
                table(
                    "The runs compared (intervals: 95% bootstrap on each run's test set)",
                    ["run", "backbone", "input", "augmentation", "accuracy", "macro-F1", "gate"],
                    run_rows,
                    table_id="runs",
                    numeric=(4, 5),
                )
            ],
        )
    ]
    diff_parts, class_parts, conf_parts = [], [], []
    for c in comparisons:
        label = f"{c.b} − {c.a}"
        diff_parts.append(
            table(
                f"{label} on {c.n:,} test images ({c.pairing})",
                ["metric", c.a, c.b, "difference", "95% CI", "verdict"],
                [
                    [
                        d.name,
                        f"{d.a:.4f}",
                        f"{d.b:.4f}",
                        f"{d.delta:+.4f}",
                        fmt_ci([d.low, d.high], "+.4f"),
                        badge(d.verdict),
                    ]
                    for d in (c.accuracy, c.macro_f1)
                ],
                table_id=f"diff-{c.b}",
                numeric=range(1, 5),
            )
        )
        class_parts.append(
            table(
                f"Recall per class, {label} (paired within each class)",
                ["class", c.a, c.b, "difference", "95% CI", "verdict"],
                [
                    [
                        d.name,
                        f"{d.a:.3f}",
                        f"{d.b:.3f}",
                        f"{d.delta:+.3f}",
                        fmt_ci([d.low, d.high], "+.3f"),
                        badge(d.verdict),
                    ]
                    for d in c.recall
                ],
                table_id=f"recall-{c.b}",
                numeric=range(1, 5),
            )
        )
        for word, cells in (("worse", c.worse), ("better", c.better)):
            rows = [
                [f"{x.true} → {x.predicted}", f"{x.a:,}", f"{x.b:,}", f"{x.delta:+,}"]
                for x in cells
            ]
            conf_parts.append(
                table(
                    f"Confusions that got {word} in {c.b} (test images, true → predicted)",
                    ["confusion", c.a, c.b, "change"],
                    rows,
                    table_id=f"{word}-{c.b}",
                    numeric=(1, 2, 3),
                )
                if rows
                else paragraph(f"No confusion got {word} in {c.b}.")
            )
    time_rows = []
    base_duration = runs[0].metrics.get("duration_s")
    for r in runs:
        seconds = sum(float(x.get("seconds", 0.0)) for x in r.history)
        duration = r.metrics.get("duration_s")
        epochs = len(r.history)
        time_rows.append(
            [
                r.run_id,
                fmt(duration / 60 if duration is not None else None, ".1f"),
                fmt(duration / base_duration if duration and base_duration else None, ".2f"),
                str(epochs),
                fmt(seconds / epochs if epochs else None, ".1f"),
                str(r.metrics.get("best_epoch", "n/a")),
            ]
        )
    keys = [
        k for k in SETTINGS_SHOWN if len({_plain(r.config["settings"].get(k)) for r in runs}) > 1
    ]
    setting_rows = [[k, *(_plain(r.config["settings"].get(k)) for r in runs)] for k in keys]
    training_parts = [
        table(
            "Training time",
            ["run", "minutes in all", f"× {runs[0].run_id}", "epochs", "s per epoch", "best epoch"],
            time_rows,
            table_id="time",
            numeric=range(1, 6),
        ),
        table(
            "Settings that differ",
            ["setting", *(r.run_id for r in runs)],
            setting_rows,
            table_id="settings-diff",
        )
        if setting_rows
        else paragraph("The runs were trained with the same settings."),
    ]
    side = [
        figure(
            r.run_dir / "interpret" / "figures" / "confusion_matrix.png",
            f"Run {r.run_id}: {CAPTIONS['confusion_matrix']}",
            f"confusion matrix of {r.run_id}",
        )
        for r in runs
        if r.interpret is not None
    ]
    confusion_parts = [*conf_parts]
    if side:
        confusion_parts.append(element("div", side, class_="side-by-side"))
    out += [
        section("differences", "Differences", diff_parts),
        section("per-class", "Per class", class_parts),
        section("confusions", "Confusions", confusion_parts),
        section("training", "Training", training_parts),
    ]
    return out


# Entry point ----------------------------------------------------------------------------
def report(
    workspace: Workspace, run_ids: Sequence[str], n_boot: int = 2000, seed: int = 0
) -> ReportResult:
    """runs/<id>/report.html for one run; reports/compare-<a>-<b>.html for two or more."""
    if not run_ids:
        raise ConfigError("name a run: deepsight report RUN (or RUN_A RUN_B to compare)")
    if len(set(run_ids)) != len(run_ids):
        raise ConfigError(f"runs {list(run_ids)}: each run once")
    if n_boot < 100:
        raise ConfigError(f"--n-boot {n_boot}: use at least 100 resamples")
    for run_id in run_ids:
        check_run_id(run_id)
    if len(run_ids) == 1:
        return run_report(workspace, run_ids[0], n_boot, seed)
    return compare_report(workspace, run_ids, n_boot, seed)
