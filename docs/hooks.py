"""MkDocs hook: the pages made from the code and the data, so that they cannot drift from them.

- reference.md, every command's arguments and options in the panels of its --help, made from
  the Typer app (whose options the settings dataclasses of deepsight_tf/core/settings.py make:
  each one's default, help, rule and panel), and the exit codes from the error classes.
- In any page, `<!-- csv: NAME.csv -->` becomes the table of docs/results/NAME.csv; the
  results page must place every CSV found there, so a new CSV cannot go unpublished and a new
  row needs nothing but the row.

`mkdocs build --strict` (`make docs`) runs it; tests/test_docs.py checks what it writes.
"""

from __future__ import annotations

import csv
import inspect
import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
RESULTS_DIR = DOCS / "results"
RESULTS_PAGE = "results.md"
REFERENCE_PAGE = "reference.md"
CSV_MARKER = re.compile(r"^<!-- csv: ([\w.-]+\.csv) -->$", re.MULTILINE)  # a line of its own
OPTIONS_PANEL = "Options"  # Typer's panel for a command's own options and --help


# --- the command reference ---------------------------------------------------------------------


def _text(value: str) -> str:
    """Help text as a Markdown table cell: no HTML, no emphasis, no column break, one line."""
    value = " ".join(value.split())
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_|\[\]])", r"\\\1", value)


def _code(value: str) -> str:
    return "`" + value.replace("|", "\\|") + "`"


def _default(param: Any, field: Any) -> str:
    default = field.default if field is not None else param.default
    if default is None or default == "" or param.required:
        return ""  # decided for the user: the help names the rule (a backbone's recipe)
    if getattr(param, "is_flag", False):
        return _code(param.opts[0] if default else (param.secondary_opts or ["off"])[0])
    if isinstance(default, list | tuple):
        return ", ".join(_code(str(v)) for v in default)
    return _code(f"{default:g}" if isinstance(default, float) else str(default))


def _allowed(param: Any, field: Any, ctx: Any) -> str:
    from deepsight_tf.core.settings import rule_text

    if field is not None and rule_text(field.metadata):
        rule = rule_text(field.metadata)
        return _text(rule) if field.metadata.get("choices") is None else _choices(rule.split(", "))
    if param.type_descriptor.is_choice:
        return _choices([str(c) for c in param.type_descriptor.choices])
    if getattr(param, "is_flag", False):
        return ""
    return _text(param.display_type(ctx).strip("<>"))


def _choices(values: list[str]) -> str:
    return ", ".join(_code(v) for v in values)


def _option_row(param: Any, field: Any, ctx: Any) -> str:
    names = " / ".join(_code(o) for o in [*param.opts, *param.secondary_opts])
    help_text = _text(param.help or "")
    if param.envvar:
        help_text += f" Environment: {_code(param.envvar)}."
    return f"| {names} | {_default(param, field)} | {_allowed(param, field, ctx)} | {help_text} |"


def _panels(params: list[Any]) -> dict[str, list[Any]]:
    panels: dict[str, list[Any]] = {OPTIONS_PANEL: []}
    for param in params:
        if param.param_type_name == "option" and not getattr(param, "hidden", False):
            panels.setdefault(param.rich_help_panel or OPTIONS_PANEL, []).append(param)
    return {name: found for name, found in panels.items() if found}


def _command_section(name: str, command: Any, fields: dict[str, Any], parent: Any) -> list[str]:
    import typer

    ctx = typer.Context(command, info_name=name, parent=parent)
    params = [p for p in command.get_params(ctx) if p.name != "help"]
    arguments = [p for p in params if p.param_type_name == "argument"]
    usage = " ".join(["deepsight [GLOBAL OPTIONS]", name, "[OPTIONS]"])
    usage += "".join(f" {p.name.upper()}{'...' if p.nargs != 1 else ''}" for p in arguments)
    doc = inspect.cleandoc(command.help or "")
    lines = [f"## {name}", "", _text(doc), "", "```", usage, "```", ""]
    if command.epilog:
        examples = re.findall(r"\[bold\](.+?)\[/\]", command.epilog)
        lines += ["Examples:", "", "```", *examples, "```", ""]
    if arguments:
        lines += ["| argument | what it is |", "| --- | --- |"]
        lines += [f"| {_code(p.name.upper())} | {_text(p.help or '')} |" for p in arguments]
        lines.append("")
    for panel, options in _panels(params).items():
        lines += [f"### {name}: {panel}", ""]
        lines += ["| option | default | allowed | what it does |", "| --- | --- | --- | --- |"]
        lines += [_option_row(p, fields.get(p.name), ctx) for p in options]
        lines.append("")
    return lines


def _exit_codes() -> list[str]:
    from deepsight_tf.core import errors

    rows = [("0", "success", "The command did what it was asked.")]
    rows.append(("2", "usage", "An unknown flag, or a value outside a flag's listed choices."))
    classes = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.DeepsightError)
    ]
    for cls in sorted(classes, key=lambda c: c.exit_code):
        if cls not in (errors.DeepsightError, errors.TrainingInterrupted):
            doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
            rows.append((str(cls.exit_code), cls.kind, doc))
    rows.append(
        (
            str(errors.INTERNAL_EXIT_CODE),
            "unexpected",
            "An exception no check foresaw (a bug, or running out of memory): one line naming "
            "it; --debug shows the traceback.",
        )
    )
    kind = errors.TrainingInterrupted.kind
    rows.append(("130", kind, "Ctrl-C: train saved its state and says how to resume."))
    rows.append(("143", kind, "SIGTERM (a scheduler, docker stop): the same as Ctrl-C."))
    lines = ["## Exit codes", "", "| code | kind | meaning |", "| --- | --- | --- |"]
    return lines + [f"| {code} | {kind} | {_text(doc)} |" for code, kind, doc in rows] + [""]


def reference_markdown() -> str:
    """The command reference page: global options, each command, the exit codes."""
    import typer

    from deepsight_tf.cli import app

    group = typer.main.get_command(app)
    root = typer.Context(group, info_name="deepsight")
    fields = {
        (info.name or info.callback.__name__).replace("_", "-"): getattr(
            info.callback, "settings_fields", {}
        )
        for info in app.registered_commands
    }
    lines = [
        "# Command reference",
        "",
        "Generated from the code by `docs/hooks.py` when the site is built: each option's",
        "default, help and allowed values come from its setting in",
        "`deepsight_tf/core/settings.py`, grouped in the panels that `deepsight COMMAND --help`",
        "shows. An option left at its empty default decides for itself, as its help says.",
        "",
        "## Global options",
        "",
        "They come before the command: `deepsight --workspace /tmp/ws train ...`.",
        "",
        "| option | default | allowed | what it does |",
        "| --- | --- | --- | --- |",
    ]
    hidden = {"install_completion", "show_completion", "help"}
    lines += [_option_row(p, None, root) for p in group.params if p.name not in hidden]
    lines.append("")
    for name, command in group.commands.items():
        lines += _command_section(name, command, fields.get(name, {}), root)
    return "\n".join(lines + _exit_codes())


# --- results as data ---------------------------------------------------------------------------


def _fold_intervals(header: list[str]) -> list[str]:
    """Columns shown: X_low and X_high go into X's cell as "X [low, high]"."""
    folded = {f"{c}_low" for c in header} | {f"{c}_high" for c in header}
    return [c for c in header if c not in folded]


def _cell(column: str, row: dict[str, str]) -> str:
    value = row[column].strip()
    if not value:
        return ""
    if column == "command":
        return _code(value)
    if column.endswith("_s"):
        seconds = float(value)
        return f"{seconds / 60:.1f} min" if seconds >= 600 else f"{seconds:.0f} s"
    low, high = row.get(f"{column}_low", "").strip(), row.get(f"{column}_high", "").strip()
    interval = f" [{_text(low)}, {_text(high)}]" if low and high else ""
    return _text(value) + interval


def _heading(column: str) -> str:
    return column.removesuffix("_s").replace("_", " ")


def csv_table(path: Path) -> str:
    """A CSV under docs/results/ as a Markdown table, with a link to the file itself."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    shown = _fold_intervals(header)
    lines = [
        "| " + " | ".join(_heading(c) for c in shown) + " |",
        "| " + " | ".join("---" for _ in shown) + " |",
    ]
    lines += ["| " + " | ".join(_cell(c, row) for c in shown) + " |" for row in rows]
    link = f"[{path.name}]({path.parent.name}/{path.name})"
    return "\n".join(lines) + f"\n\n{len(rows)} rows; the data: {link}.\n"


def render_csv_markers(markdown: str, results_dir: Path = RESULTS_DIR) -> str:
    """Each `<!-- csv: NAME.csv -->` replaced by that CSV's table."""

    def table(match: re.Match[str]) -> str:
        path = results_dir / match.group(1)
        if not path.is_file():
            raise ValueError(f"{match.group(0)}: there is no {path}")
        return csv_table(path)

    return CSV_MARKER.sub(table, markdown)


def unplaced_csvs(markdown: str, results_dir: Path = RESULTS_DIR) -> list[str]:
    """CSV files under results_dir that the page does not place."""
    placed = set(CSV_MARKER.findall(markdown))
    return sorted(p.name for p in results_dir.glob("*.csv") if p.name not in placed)


# --- the MkDocs events -------------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    files.append(File.generated(config, REFERENCE_PAGE, content=reference_markdown()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    from mkdocs.exceptions import PluginError

    if page.file.src_uri == RESULTS_PAGE:
        missing = unplaced_csvs(markdown)
        if missing:
            raise PluginError(
                f"docs/{RESULTS_PAGE} does not show {', '.join(missing)}: add a sentence on "
                "what each measures and a `<!-- csv: NAME.csv -->` line where its table goes"
            )
    try:
        return render_csv_markers(markdown)
    except ValueError as exc:
        raise PluginError(f"docs/{page.file.src_uri}: {exc}") from exc
