"""deepsight report on a tiny real chain: the page's numbers equal the JSON, and it stands alone."""

from __future__ import annotations

import base64
import html
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deepsight_tf.cli import app
from deepsight_tf.core.errors import ConfigError, StaleArtifactError
from deepsight_tf.core.storage import read_json
from deepsight_tf.core.workspace import Workspace
from deepsight_tf.diagnose.bootstrap import batched_macro_f1, bootstrap_ci
from deepsight_tf.diagnose.comparison import compare_predictions
from deepsight_tf.diagnose.evaluation import classification_summary, per_class_recall
from deepsight_tf.reporting import report
from deepsight_tf.reporting.html import Html, element, table
from deepsight_tf.training.history import read_history

from support.chain import N_BOOT, WARM, Chain, Interpreted, build_report_chain


@pytest.fixture(scope="module")
def chain(interpreted: Interpreted, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    return build_report_chain(interpreted, tmp_path_factory.mktemp("report"))


# Reading the page back -------------------------------------------------------------------
class Page(HTMLParser):
    """The parts of a page the tests check: tables by id, images, links, values, sections."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.values: dict[str, tuple[float, str]] = {}
        self.sections: list[str] = []
        self.captions: list[str] = []
        self.tags: set[str] = set()
        self.verdicts: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._value: tuple[str, float, list[str]] | None = None
        self._caption: list[str] | None = None
        self._in_verdicts = False
        self._li: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "table":
            self._table = a.get("id", f"table-{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a)
        elif tag in ("a", "link"):
            self.links.append(a.get("href", ""))
        elif tag == "span" and "data-value" in a:
            self._value = (a["data-key"], float(a["data-value"]), [])
        elif tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag == "figcaption":
            self._caption = []
        elif tag == "ul" and a.get("id") == "verdicts":
            self._in_verdicts = True
        elif tag == "li" and self._in_verdicts:
            self._li = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "span" and self._value is not None:
            key, value, text = self._value
            self.values[key] = (value, "".join(text))
            self._value = None
        elif tag == "figcaption" and self._caption is not None:
            self.captions.append("".join(self._caption).strip())
            self._caption = None
        elif tag == "li" and self._li is not None:
            self.verdicts.append("".join(self._li).strip())
            self._li = None
        elif tag == "ul":
            self._in_verdicts = False

    def handle_data(self, data: str) -> None:
        for sink in (self._cell, self._caption, self._li):
            if sink is not None:
                sink.append(data)
        if self._value is not None:
            self._value[2].append(data)

    def body(self, table_id: str) -> list[list[str]]:
        """Rows below the header (and above a footer, which the tests read separately)."""
        return self.tables[table_id][1:]


def read_page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def ci(low: float, high: float, spec: str) -> str:
    return f"[{low:{spec}}, {high:{spec}}]"


# The page stands alone ---------------------------------------------------------------------
@pytest.mark.parametrize("which", ["run_page", "plain_page", "compare_page"])
def test_page_is_one_file_that_fetches_nothing(chain: Chain, which: str) -> None:
    text = getattr(chain, which).read_text(encoding="utf-8")
    page = Page(text)
    for image in page.images:
        assert image["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(image["src"].split(",", 1)[1]).startswith(b"\x89PNG")
        assert image["alt"]
    assert all(href.startswith("#") for href in page.links), page.links
    assert "http://" not in text and "https://" not in text
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    assert "default-src 'none'" in text  # the page itself forbids every fetch
    assert "@media print" in text  # assets/report.css is inlined
    assert len(page.captions) == len(page.images)
    assert all(len(caption) > 40 for caption in page.captions)


def test_run_page_embeds_every_figure_of_every_phase(chain: Chain) -> None:
    page = read_page(chain.run_page)
    ws = chain.workspace
    interpret_figures = read_json(ws.run_dir("a") / "interpret" / "report.json")["figures"]
    explore_figures = read_json(ws.explore_dir("rgb") / "report.json")["figures"]
    scrub_figures = [
        f for f in read_json(ws.scrub_dir("rgb") / "report.json")["files"] if f.endswith(".png")
    ]
    # One per artifact, the run's own two (its first batch, its schedule) and the training
    # curves the report draws.
    run_figures = [k for k in ws.verify(ws.run_dir("a"), "train").outputs if k.endswith(".png")]
    assert len(run_figures) == 2
    expected = len(explore_figures) + len(scrub_figures) + 2 + 1 + len(interpret_figures)
    assert len(page.images) == expected == chain.results["a"].figures
    assert (ws.run_dir("a") / "figures" / "training_history.png").is_file()


def test_sections_come_in_osemn_order(chain: Chain) -> None:
    assert read_page(chain.run_page).sections == ["data", "training", "results", "interpretation"]


# The numbers equal the JSON ----------------------------------------------------------------
def test_headline_equals_interpret_report(chain: Chain) -> None:
    page = read_page(chain.run_page)
    head = read_json(chain.workspace.run_dir("a") / "interpret" / "report.json")["headline"]
    value, text = page.values["test-accuracy"]
    assert value == head["accuracy"] and text == f"{head['accuracy']:.2%}"
    value, text = page.values["test-macro-f1"]
    assert value == head["macro_f1"] and text == f"{head['macro_f1']:.4f}"
    metrics = page.body("metrics")[0]
    assert metrics[:3] == ["test", f"{head['accuracy']:.2%}", ci(*head["accuracy_ci"], ".2%")]
    assert metrics[3:5] == [f"{head['macro_f1']:.4f}", ci(*head["macro_f1_ci"], ".4f")]
    stored = read_json(chain.workspace.run_dir("a") / "metrics.json")
    gate = page.body("gate")[0]
    assert gate[2] == f"{stored['mva']:.0%}"
    assert gate[4] == ("passed" if stored["passed"] else "failed")


def test_one_headline_line_per_hypothesis_verdict(chain: Chain) -> None:
    page = read_page(chain.run_page)
    tested = read_json(chain.workspace.run_dir("a") / "interpret" / "report.json")["hypotheses"]
    assert len(page.verdicts) == len(tested) == 2
    for line, h in zip(page.verdicts, tested, strict=True):
        assert line.startswith(h["verdict"])
        assert h["name"] in line and f"{h['estimate']:+.3f}" in line
    rows = page.body("hypotheses")
    assert [r[0] for r in rows] == [h["name"] for h in tested]
    assert [r[-1] for r in rows] == [h["verdict"] for h in tested]
    assert WARM in rows[0][0]  # shown as text ...
    assert "&lt;warm &amp; &quot;red&quot;&gt;" in chain.run_page.read_text()  # ... escaped


def test_per_class_and_confusion_tables_equal_the_json(chain: Chain) -> None:
    page = read_page(chain.run_page)
    head = read_json(chain.workspace.run_dir("a") / "interpret" / "report.json")["headline"]
    names = list(head["per_class"])
    recalls = {r["name"]: r for r in head["per_class_recall"]}
    for row, name in zip(page.body("per-class"), names, strict=True):
        expected = head["per_class"][name]
        assert row == [
            name,
            f"{expected['precision']:.3f}",
            f"{expected['recall']:.3f}",
            ci(recalls[name]["low"], recalls[name]["high"], ".3f"),
            f"{expected['f1']:.3f}",
            f"{expected['support']:,}",
        ]
    confusion = [[int(v.replace(",", "")) for v in row[1:]] for row in page.body("confusion")]
    assert confusion == head["confusion"]


def test_data_and_training_tables_equal_the_artifacts(chain: Chain) -> None:
    page = read_page(chain.run_page)
    ws = chain.workspace
    counts = read_json(ws.data_dir("rgb") / "report.json")["counts"]
    scrubbed = read_json(ws.scrub_dir("rgb") / "report.json")
    split = scrubbed["split"]
    # The threshold's calibration, as scrub stated it, is on the page.
    statement = scrubbed["duplicates"]["calibration"]["statement"]
    assert statement[1:] in html.unescape(chain.run_page.read_text(encoding="utf-8"))
    rows = page.tables["counts"][1:-1]
    for row in rows:
        cls = row[0]
        assert row[1:3] == [f"{counts['train'][cls]:,}", f"{counts['test'][cls]:,}"]
        assert row[3:] == [f"{split['class_counts'][p][cls]:,}" for p in split["class_counts"]]
    history = read_history(ws.run_dir("a") / "history.csv")
    table_rows = page.body("history")
    assert len(table_rows) == len(history) == 3
    header = page.tables["history"][0]
    for row, epoch in zip(table_rows, history, strict=True):
        assert row[header.index("val_macro_f1")] == f"{epoch['val_macro_f1']:.4f}"
        assert row[header.index("lr_end")] == f"{epoch['lr_end']:.3g}"
    config = read_json(ws.run_dir("a") / "config.json")["settings"]
    settings = dict(pair for row in page.body("config") for pair in (row[:2], row[2:]))
    assert settings["backbone"] == config["backbone"]
    assert settings["lr"] == f"{config['lr']:g}"


def test_top_losses_are_the_most_confidently_wrong(chain: Chain) -> None:
    page = read_page(chain.run_page)
    npz = np.load(chain.workspace.run_dir("a") / "predictions.npz")
    probs, labels = npz["test_probs"], npz["test_labels"]
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    rows = page.body("top-losses")
    assert len(rows) == min(16, len(wrong))
    losses = [float(r[-1]) for r in rows]
    assert losses == sorted(losses, reverse=True)
    for row in rows:
        i = int(row[0])
        assert i in wrong
        # An underflowed probability of 0 reads as log(smallest float64) = 708.40, not inf.
        true_probability = max(float(probs[i, labels[i]]), np.finfo(np.float64).tiny)
        assert row[-1] == f"{-np.log(true_probability):.2f}"


def test_the_weight_averages_candidates_are_rows_of_the_metrics_table(chain: Chain) -> None:
    ema = read_json(chain.workspace.run_dir("b") / "metrics.json")["ema"]
    rows = {r[0]: r for r in read_page(chain.plain_page).body("metrics")}
    for name, label in (("average", "weight average"), ("best_epoch", "best epoch")):
        kept = " (kept)" if ema["kept"] == name else ""
        title = f"test, {label}{kept}; validation macro-F1 {ema['val_macro_f1'][name]:.4f}"
        scores = ema["test"][name]
        assert rows[title][1] == f"{scores['accuracy']:.2%}"
        assert rows[title][3] == f"{scores['macro_f1']:.4f}"


def test_run_without_interpret_says_so_and_bootstraps_its_own_intervals(chain: Chain) -> None:
    page = read_page(chain.plain_page)
    text = chain.plain_page.read_text()
    assert "not run yet: deepsight interpret b" in text
    assert chain.results["b"].sections["interpretation"] == "not run yet: deepsight interpret b"
    npz = np.load(chain.workspace.run_dir("b") / "predictions.npz")
    names = read_json(chain.workspace.run_dir("b") / "metrics.json")["class_names"]
    summary = classification_summary(npz["test_labels"], npz["test_probs"], names, n_boot=N_BOOT)
    assert page.values["test-accuracy"][0] == summary["accuracy"]
    assert page.body("metrics")[0][2] == ci(*summary["accuracy_ci"], ".2%")
    recalls = per_class_recall(npz["test_labels"], npz["test_probs"], names, n_boot=N_BOOT)
    assert [r[3] for r in page.body("per-class")] == [ci(r.low, r.high, ".3f") for r in recalls]
    assert len(page.verdicts) == 1 and "not tested yet: deepsight interpret b" in page.verdicts[0]


# The comparison ----------------------------------------------------------------------------
def test_compare_page_pairs_the_shared_test_images(chain: Chain) -> None:
    assert chain.compare_page == chain.workspace.root / "reports" / "compare-a-b.html"
    page = read_page(chain.compare_page)
    a = np.load(chain.workspace.run_dir("a") / "predictions.npz")
    b = np.load(chain.workspace.run_dir("b") / "predictions.npz")
    labels = a["test_labels"]
    hits_a, hits_b = a["test_probs"].argmax(1) == labels, b["test_probs"].argmax(1) == labels
    point, low, high = bootstrap_ci(
        lambda x, y: y.mean(axis=-1) - x.mean(axis=-1), hits_a, hits_b, n_boot=N_BOOT
    )
    assert point == pytest.approx(hits_b.mean() - hits_a.mean())
    row = page.body("diff-b")[0]
    assert row[:5] == [
        "accuracy",
        f"{hits_a.mean():.4f}",
        f"{hits_b.mean():.4f}",
        f"{point:+.4f}",
        ci(low, high, "+.4f"),
    ]
    comparison = chain.results["a-b"].comparisons[0]
    assert comparison.paired and comparison.accuracy.low == low
    recall_rows = page.body("recall-b")
    assert len(recall_rows) == 3
    for row, d in zip(recall_rows, comparison.recall, strict=True):
        assert row[3] == f"{d.delta:+.3f}"
    assert "paired bootstrap over the 30 test images" in chain.compare_page.read_text()
    durations = [read_json(chain.workspace.run_dir(r) / "metrics.json")["duration_s"] for r in "ab"]
    times = page.body("time")
    assert [row[1] for row in times] == [f"{d / 60:.1f}" for d in durations]
    assert times[1][2] == f"{durations[1] / durations[0]:.2f}"


def test_compare_predictions_on_hand_made_predictions() -> None:
    names = ["x", "y", "z"]
    labels = np.repeat([0, 1, 2], 100)
    probs_a = np.eye(3)[labels].copy()
    probs_a[:40] = np.eye(3)[1]  # 40 x called y
    probs_b = np.eye(3)[labels].copy()
    probs_b[:5] = np.eye(3)[1]  # 5 x called y
    probs_b[100:110] = np.eye(3)[2]  # 10 y called z
    found = compare_predictions(labels, probs_a, probs_b, names, n_boot=500)
    assert found["accuracy"].delta == pytest.approx((35 - 10) / 300)
    assert found["accuracy"].verdict == "better"
    x, y, z = found["recall"]
    assert (x.a, x.b, x.verdict) == (0.6, 0.95, "better")
    assert (y.a, y.b, y.verdict) == (1.0, 0.9, "worse")
    assert (z.delta, z.verdict) == (0.0, "no clear change")
    assert [(c.true, c.predicted, c.a, c.b, c.delta) for c in found["better"]] == [
        ("x", "y", 40, 5, -35)
    ]
    assert [(c.true, c.predicted, c.delta) for c in found["worse"]] == [("y", "z", 10)]
    expected = bootstrap_ci(
        lambda t, p, q: batched_macro_f1(t, q, 3) - batched_macro_f1(t, p, 3),
        labels,
        probs_a.argmax(1),
        probs_b.argmax(1),
        n_boot=500,
    )
    assert (found["macro_f1"].delta, found["macro_f1"].low) == pytest.approx(expected[:2])
    unpaired = compare_predictions(labels, probs_a, probs_b, names, paired=False)
    assert unpaired["accuracy"].low is None and unpaired["accuracy"].verdict == "not paired"


# Escaping, errors and the command line -------------------------------------------------------
def test_every_string_from_the_data_is_escaped() -> None:
    hostile = '<img src="http://x/y.png" onerror="alert(1)">'
    rendered = table(hostile, [hostile], [[hostile, Html("<b>ours</b>")]])
    assert "<img" not in rendered and "&lt;img src=&quot;http://x/y.png&quot;" in rendered
    assert "<b>ours</b>" in rendered
    assert element("a", "x", href='"><script>') == '<a href="&quot;&gt;&lt;script&gt;">x</a>'


def test_bad_requests_are_refused(chain: Chain, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="each run once"):
        report(chain.workspace, ["a", "a"])
    with pytest.raises(ConfigError, match="not a path"):
        report(chain.workspace, ["../a"])
    copy = Workspace(tmp_path / "ws")
    shutil.copytree(chain.workspace.root, copy.root)
    interpreted = copy.run_dir("a") / "interpret" / "report.json"
    interpreted.write_text(interpreted.read_text().replace('"accuracy"', '"accuracy" ', 1))
    with pytest.raises(StaleArtifactError, match="deepsight interpret a"):
        report(copy, ["a"], n_boot=N_BOOT)


def test_cli_writes_the_page_and_reports_it(chain: Chain, tmp_path: Path) -> None:
    runner = CliRunner()
    root = str(chain.workspace.root)
    result = runner.invoke(app, ["--workspace", root, "--json", "report", "b", "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["path"] == str(chain.plain_page) and payload["kind"] == "run"
    assert payload["headlines"][0]["accuracy"] == chain.results["b"].headlines[0].accuracy
    result = runner.invoke(app, ["--workspace", root, "report", "a", "b", "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    assert "compare-a-b.html" in result.stdout and "b vs a" in result.stdout
    result = runner.invoke(app, ["--workspace", root, "report", "nope"])
    assert result.exit_code == 4 and "run `deepsight train` first" in result.stderr
