"""The documentation: a front page of the right size, a reference made from the settings, results
as data, and no private run codes or commit hashes. `make docs` builds the site itself."""

from __future__ import annotations

import csv
import importlib.util
import re
from dataclasses import fields
from pathlib import Path
from types import ModuleType

import pytest

from deepsight_tf.core.settings import (
    ExperimentSettings,
    ExploreSettings,
    InterpretSettings,
    ObtainSettings,
    ScrubSettings,
    TrainSettings,
    flag_name,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
COMMAND_SETTINGS = {
    "obtain": [ObtainSettings],
    "scrub": [ScrubSettings],
    "explore": [ExploreSettings],
    "train": [TrainSettings],
    "experiment": [ExperimentSettings, TrainSettings],
    "interpret": [InterpretSettings],
}
RUNS_COLUMNS = [
    "what",
    "command",
    "cpu",
    "steps",
    "wall_s",
    "accuracy",
    "accuracy_low",
    "accuracy_high",
    "macro_f1",
    "macro_f1_low",
    "macro_f1_high",
    "date",
]


@pytest.fixture(scope="module")
def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def command_sections(reference: str) -> dict[str, str]:
    parts = re.split(r"^## ", reference, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0]: part for part in parts}


def test_the_reference_lists_every_option_of_every_command_in_its_panel(hooks) -> None:
    sections = command_sections(hooks.reference_markdown())
    assert {"Global options", *COMMAND_SETTINGS, "predict", "export", "report"} <= set(sections)
    assert "Exit codes" in sections
    for command, classes in COMMAND_SETTINGS.items():
        panels = {
            title: body
            for title, body in (
                part.split("\n", 1)
                for part in re.split(r"^### ", sections[command], flags=re.MULTILINE)[1:]
            )
        }
        for cls in classes:
            for f in fields(cls):
                excluded = command == "experiment" and cls is TrainSettings and "resume" in f.name
                if not f.metadata["cli"] or excluded or f.name == "run_id":
                    continue
                body = panels[f"{command}: {f.metadata['panel']}"]
                assert f"| `{flag_name(f.name)}`" in body, (command, f.name)
    train = sections["train"]
    assert "| `--val-size`" not in train  # scrub's, not train's
    assert re.search(r"\| `--lr` \|  \| &gt; 0 \| One-cycle peak rate", train)
    assert "| `--resume` / `--no-resume` | `--no-resume` |" in train
    assert "| `--backbone` | `airbench94` | `resnet18`, `resnet50`," in train
    recipe_default = r"\| `--image-size` \|  \|.*Default: 32 for airbench94, airbench93 and"
    assert re.search(recipe_default, train)
    assert "| 7 | configuration |" in sections["Exit codes"]


def test_a_csv_renders_with_its_intervals_folded_and_a_new_row_needs_nothing_else(
    hooks, tmp_path: Path
) -> None:
    table = tmp_path / "runs.csv"
    table.write_text(
        "what,command,wall_s,accuracy,accuracy_low,accuracy_high\n"
        "a run,deepsight train --tta flip|x,2070,86.06,85.37,86.76\n"
    )
    page = "Intro.\n\n<!-- csv: runs.csv -->\n\nInline `<!-- csv: other.csv -->` stays.\n"
    rendered = hooks.render_csv_markers(page, tmp_path)
    assert "| what | command | wall | accuracy |" in rendered
    assert "| a run | `deepsight train --tta flip\\|x` | 34.5 min | 86.06 [85.37, 86.76] |" in (
        rendered
    )
    assert "1 rows" in rendered and "`<!-- csv: other.csv -->`" in rendered
    with table.open("a") as f:
        f.write("another run,,45,79.01,,\n")
    rendered = hooks.render_csv_markers(page, tmp_path)
    assert "| another run |  | 45 s | 79.01 |" in rendered and "2 rows" in rendered
    (tmp_path / "issues.csv").write_text("index\n1\n")
    assert hooks.unplaced_csvs(page, tmp_path) == ["issues.csv"]
    with pytest.raises(ValueError, match=r"missing\.csv"):
        hooks.render_csv_markers("<!-- csv: missing.csv -->", tmp_path)


def test_the_results_page_shows_every_csv_and_the_runs_are_well_formed(hooks) -> None:
    page = (DOCS / "results.md").read_text()
    assert hooks.unplaced_csvs(page) == []
    with (DOCS / "results" / "runs.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert set(RUNS_COLUMNS) <= set(reader.fieldnames or [])
        rows = list(reader)
    assert len(rows) >= 20
    for row in rows:
        assert row["what"] and row["accuracy"] and re.fullmatch(r"\d{4}-\d\d-\d\d", row["date"])
        for metric in ("accuracy", "macro_f1"):
            low, high = row[f"{metric}_low"], row[f"{metric}_high"]
            assert bool(low) == bool(high), (row["what"], metric)
            if low and row[metric]:
                assert float(low) <= float(row[metric]) <= float(high), row["what"]
        assert 0 < float(row["accuracy"]) <= 100 and (
            not row["macro_f1"] or float(row["macro_f1"]) <= 1
        )


def test_the_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    head = "\n".join(lines[:60])
    assert "pip install" in head and "make all" in head and "make test" in head
    text = "\n".join(lines)
    assert "```python" in text and "make docs" in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).is_file(), page


# Private run names (f48, s48, b30, b10w, b256, ...) and commit hashes mean nothing to a reader.
RUN_CODE = re.compile(r"\b[a-z](?:10[a-z]?|30|48|64|256)\b")
COMMIT = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b")


@pytest.mark.parametrize(
    "path",
    ["README.md", "Makefile", *(str(p.relative_to(ROOT)) for p in sorted(DOCS.rglob("*.md")))]
    + [str(p.relative_to(ROOT)) for p in sorted((DOCS / "results").glob("*.csv"))],
)
def test_prose_names_runs_by_what_they_are(path: str) -> None:
    text = (ROOT / path).read_text()
    assert not RUN_CODE.findall(text), RUN_CODE.findall(text)
    assert not COMMIT.findall(text), COMMIT.findall(text)
