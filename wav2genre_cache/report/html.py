"""report.html: comparison.md as one self-contained page (tables, notes and every figure inline)
that a person can open in a browser or send by mail, with no folder of PNGs beside it."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from wav2genre_cache._io import atomic_write_text

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<file>[^)]+)\)$")
_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
line-height:1.45;color:#222}table{border-collapse:collapse;font-size:.85em;margin:1em 0}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f3f3f3}
td:nth-child(-n+4),th:nth-child(-n+4){text-align:left}img{max-width:100%;margin:1em 0}
code{background:#f3f3f3;padding:0 .2em}"""


def write_html(markdown: str, run_dir: Path) -> Path:
    """Write RUN_DIR/report.html from comparison.md's text, its figures read from RUN_DIR."""
    body = "\n".join(_blocks(markdown.splitlines(), run_dir))
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>wav2genre model comparison</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
    return atomic_write_text(run_dir / "report.html", page)


def _blocks(lines: list[str], run_dir: Path):
    """The HTML of each block of the Markdown comparison.md writes: headings, tables, images
    and paragraphs (nothing else appears in it)."""
    table: list[str] = []
    for line in [*lines, ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            yield _table(table)
            table = []
        image = _IMAGE.match(line)
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            yield f"<h{level}>{_inline(line[level:].strip())}</h{level}>"
        elif image:
            yield _image(run_dir / Path(image["file"]).name, image["alt"])
        elif line.strip():
            yield f"<p>{_inline(line)}</p>"


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    head, body = cells[0], [r for r in cells[1:] if not set("".join(r)) <= set("-: ")]
    out = [
        '<div style="overflow-x:auto"><table>',
        "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>",
    ]
    out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body]
    return "\n".join([*out, "</table></div>"])


def _image(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p>({html.escape(path.name)} is missing)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _inline(text: str) -> str:
    """Escaped text with Markdown's `code` and **bold**."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
