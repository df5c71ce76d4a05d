"""The report as a document (sections of paragraphs, tables and figures) and its two
renderings: self-contained HTML (figures as base64 PNG data URIs, inline CSS, no script,
no external resource) and Markdown (figures referred to report.html)."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

MISSING = "—"


@dataclass(frozen=True)
class Paragraph:
    text: str
    note: bool = False  # a note about missing or partial results, shown highlighted


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    png: bytes
    alt: str
    caption: str = ""


Item = Paragraph | Table | Image


@dataclass(frozen=True)
class Section:
    title: str
    items: tuple[Item, ...]
    level: int = 2
    anchor: str = ""

    @property
    def id(self) -> str:
        return self.anchor or re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def number(value: float | None, digits: int = 4) -> str:
    """A value for a table cell; the missing mark for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{digits}g}"


def plus_minus(mean: float, stderr: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return MISSING
    if math.isnan(stderr):
        return number(mean, digits)
    return f"{mean:.{digits}g} ± {stderr:.2g}"


CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ccc; }
h2 { border-bottom: 1px solid #ddd; margin-top: 2.5rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f2f2f2; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; }
p.note { background: #fff6db; border-left: 4px solid #e0b000; padding: 0.4rem 0.7rem; }
td.holds { color: #176b2c; font-weight: bold; }
td.does-not-hold { color: #a11a1a; font-weight: bold; }
td.inconclusive, td.not-configured { color: #7a5a00; font-weight: bold; }
nav ul { columns: 2; }
"""
_WORD_CELLS = {"holds", "does not hold", "inconclusive", "not configured"}


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for cell in row:
            css = f' class="{cell.replace(" ", "-")}"' if cell in _WORD_CELLS else ""
            cells.append(f"<td{css}>{html.escape(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_item(item: Item) -> str:
    if isinstance(item, Paragraph):
        css = ' class="note"' if item.note else ""
        return f"<p{css}>{html.escape(item.text)}</p>"
    if isinstance(item, Table):
        return _html_table(item)
    data = base64.b64encode(item.png).decode("ascii")
    caption = f"<figcaption>{html.escape(item.caption)}</figcaption>" if item.caption else ""
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(item.alt)}">'
        f"{caption}</figure>"
    )


def to_html(*, title: str, sections: Sequence[Section]) -> str:
    nav = "".join(
        f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections if s.level == 2
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty data: favicon keeps the browser from requesting /favicon.ico.
        '<link rel="icon" href="data:,">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<nav><ul>{nav}</ul></nav>",
    ]
    for section in sections:
        level = min(max(section.level, 2), 4)
        parts.append(f'<h{level} id="{section.id}">{html.escape(section.title)}</h{level}>')
        parts.extend(_html_item(item) for item in section.items)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_item(item: Item) -> str:
    if isinstance(item, Paragraph):
        return f"> {item.text}" if item.note else item.text
    if isinstance(item, Table):
        head = "| " + " | ".join(_md_cell(c) for c in item.columns) + " |"
        rule = "|" + "---|" * len(item.columns)
        rows = ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in item.rows]
        return "\n".join([head, rule, *rows])
    return f"*Figure: {item.alt} (see report.html).*"


def to_markdown(*, title: str, preamble: Sequence[str], sections: Sequence[Section]) -> str:
    """`preamble` lines come first (the verdict lines), then the title and sections."""
    parts = [*preamble, "", f"# {title}"]
    for section in sections:
        parts.append(f"\n{'#' * min(max(section.level, 2), 4)} {section.title}\n")
        parts.extend(f"{_md_item(item)}\n" for item in section.items)
    return "\n".join(parts).rstrip() + "\n"
