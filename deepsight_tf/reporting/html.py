"""The report's HTML toolkit: escaped markup, tables, embedded figures, the page template."""

from __future__ import annotations

import base64
import html
import math
import string
from collections.abc import Iterable, Sequence
from importlib import metadata, resources
from pathlib import Path
from typing import Any

TEMPLATE_FILE = "page.html"  # deepsight_tf/reporting/assets/: the page skeleton
CSS_FILE = "page.css"  # deepsight_tf/reporting/assets/: inlined into every page
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def figure(path: Path, caption: str, alt: str, css: str | None = None) -> Html:
    uri = png_data_uri(path)
    if uri is None:
        return missing(f"figure {Path(path).name} is missing; rerun the phase that draws it")
    image = Html(f'<img src="{esc(uri)}" alt="{esc(alt)}" loading="eager">')
    return element("figure", [image, element("figcaption", caption)], class_=css)


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
    """Fill the page template with the page's parts and inline the CSS."""
    assets = resources.files("deepsight_tf.reporting") / "assets"
    template = string.Template((assets / TEMPLATE_FILE).read_text(encoding="utf-8"))
    css = (assets / CSS_FILE).read_text(encoding="utf-8")
    links = join((element("a", label, href=f"#{anchor}") for anchor, label in nav), "\n")
    return template.substitute(
        title=esc(title),
        kicker=esc(kicker),
        version=esc(version()),
        css=css,
        headline=headline,
        nav=links,
        sections=join(body),
        footer=footer,
    )


def version() -> str:
    try:
        return metadata.version("deepsight")
    except metadata.PackageNotFoundError:
        return "unknown"
