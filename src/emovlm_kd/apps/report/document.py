"""A report as a list of blocks (headings, text, tables, figures), rendered two ways:

- HTML, self-contained: figures inlined as data URIs, style inline, nothing fetched;
- Markdown, beside the figures written as PNG files.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from emovlm_kd.io import atomic_path, atomic_write_text


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    name: str  # file stem, e.g. "confusion"
    caption: str
    png: bytes


Block = Heading | Text | Table | Figure

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1400px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
p { max-width: 60em; }
"""


CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def to_html(title: str, blocks: list[Block]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No request may leave the page: images are data URIs, nothing else is loaded.
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            header = "".join(f"<th>{html.escape(cell)}</th>" for cell in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in block.rows
            )
            parts.append(f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            data = base64.b64encode(block.png).decode("ascii")
            parts.append(
                f'<figure id="{block.name}"><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def percent(value: float | None, digits: int = 2) -> str:
    """0.7951 -> '79.51%'; None (not defined) -> '—'."""
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def to_text(table: Table) -> str:
    """A table for the terminal: columns padded, the first left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in [table.header, *table.rows]) for i in range(len(table.header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(table.header), "  ".join("-" * w for w in widths), *map(line, table.rows)])


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(title: str, blocks: list[Block], figure_dir: str = "") -> str:
    """Markdown with each figure linked as FIGURE_DIR/<name>.png (beside it when empty)."""
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(map(_markdown_cell, block.header)) + " |")
            lines.append("|" + "|".join(["---"] + ["--:"] * (len(block.header) - 1)) + "|")
            lines += ["| " + " | ".join(map(_markdown_cell, row)) + " |" for row in block.rows]
            lines.append("")
        else:
            path = f"{figure_dir}/{block.name}.png" if figure_dir else f"{block.name}.png"
            lines += [f"![{block.caption}]({path})", "", f"*{block.caption}*", ""]
    return "\n".join(lines)


def write_report(out: Path, stem: str, title: str, blocks: list[Block]) -> list[Path]:
    """OUT/<stem>.html, OUT/<stem>.md and the figures under OUT/plots/; returns the paths."""
    written = []
    for block in blocks:
        if isinstance(block, Figure):
            path = out / "plots" / f"{block.name}.png"
            with atomic_path(path) as tmp:
                tmp.write_bytes(block.png)
            written.append(path)
    for suffix, text in ((".html", to_html(title, blocks)), (".md", to_markdown(title, blocks, "plots"))):
        atomic_write_text(out / f"{stem}{suffix}", text)
        written.append(out / f"{stem}{suffix}")
    return written
