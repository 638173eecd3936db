"""HTML pieces of the study report: escaped text, tables, figures, pages, and the Markdown the run folders hold.

Everything is plain HTML with one inline style sheet: no script, no font or
asset from the network, so a page reads the same opened from disk, offline,
with JavaScript off. :func:`markdown` turns the subset of Markdown that the
project's own reports write (``quality.md``, ``attention.md``: headings,
paragraphs, bullet lists, pipe tables, fenced code, ``**bold**``, inline
code, images) into HTML, with image sources mapped through a callback so the
report can point them at its own copies.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1b1f24; }
header { background: #1f3b57; color: white; padding: 0.8em 1.5em; }
header a { color: white; margin-right: 1.2em; text-decoration: none; font-weight: 600; }
header a.here { text-decoration: underline; }
main { padding: 0.5em 1.5em 3em; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccd; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #c8ccd2; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eef1f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.nw { white-space: nowrap; }
figure { display: inline-block; margin: 0.4em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #dde; }
figcaption { font-size: 0.85em; color: #444; max-width: 640px; }
pre { background: #f5f6f8; padding: 0.6em; overflow-x: auto; font-size: 0.85em; white-space: pre-wrap; }
code { background: #f0f1f4; padding: 0 0.2em; }
.flag { color: #a40000; font-weight: 600; } .muted { color: #666; }
"""


SHORT = 24
"""Table text up to this many characters is not wrapped (figures such as ``0.6137 +- 0.0243``, names)."""


@dataclass(frozen=True)
class Raw:
    """HTML that is inserted as it is (already escaped or built by this module)."""

    text: str


Cell = str | int | float | None | Raw


def esc(text: object) -> str:
    """``text`` as HTML text (``&``, ``<``, ``>`` and quotes escaped)."""
    return html.escape(str(text), quote=True)


def cell(value: Cell) -> str:
    """One table cell: numbers right-aligned (floats with 4 decimals), ``None`` as ``-``, :class:`Raw` as given;
    text of up to :data:`SHORT` characters kept on one line."""
    if isinstance(value, Raw):
        return f"<td>{value.text}</td>"
    if isinstance(value, bool) or value is None:
        return f"<td>{'-' if value is None else esc(value)}</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:.4f}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f'<td class="nw">{esc(value)}</td>' if len(value) <= SHORT else f"<td>{esc(value)}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Cell]], caption: str | None = None) -> str:
    """A table with a header row (and a caption, when given)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>\n" for row in rows)
    title = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"


def anchor(name: str) -> str:
    """A valid element id, safe in a URL, for a run or store ``name`` (other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def guarded(name: str, render: Callable[[], str]) -> str:
    """``render()``, or a flagged line saying why the section of ``name`` cannot be shown (a key its files lack,
    a value of the wrong type): one odd run folder never stops the report."""
    try:
        return render()
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return (f'<h3 id="{anchor(name)}">{esc(name)}</h3><p class="flag">This run cannot be shown: its files lack '
                f"or garble a figure the report reads ({esc(type(exc).__name__)}: {esc(exc)}).</p>\n")


def figure(src: str, caption: str, width: int | None = None) -> str:
    """An image (a path relative to the page, URL-quoted here) with its caption, which is also its alternative
    text."""
    size = f' width="{width}"' if width else ""
    return (f'<figure><img src="{esc(quote(src))}" alt="{esc(caption)}"{size}>'
            f"<figcaption>{esc(caption)}</figcaption></figure>\n")


def link(href: str, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def page(title: str, nav: Sequence[tuple[str, str]], here: str, body: str) -> str:
    """A whole page: the navigation bar (``(file, label)`` pairs; ``here`` marks the current one) and ``body``."""
    marked = ' class="here"'
    links = "".join(f'<a href="{esc(href)}"{marked if href == here else ""}>{esc(label)}</a>' for href, label in nav)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n"
            f"<body><header>{links}</header><main><h1>{esc(title)}</h1>\n{body}</main></body></html>\n")


_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")


def _inline(text: str) -> str:
    """Escaped ``text`` with inline code and bold."""
    out, last = [], 0
    for match in _INLINE.finditer(text):
        out.append(esc(text[last:match.start()]))
        code, bold = match.groups()
        out.append(f"<code>{esc(code)}</code>" if code is not None else f"<strong>{esc(bold)}</strong>")
        last = match.end()
    return "".join(out) + esc(text[last:])


def _row(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown(text: str, image_src: Callable[[str], str | None], shift: int = 1) -> str:
    """HTML of the Markdown subset in ``text`` (module docstring); headings move ``shift`` levels down, and an
    image's source is ``image_src(source)`` (``None``: the picture is missing and its alternative text shows)."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append(f"<pre>{esc(chr(10).join(lines[i + 1:end]))}</pre>")
            i = end + 1
            continue
        if heading := re.match(r"^(#{1,6})\s+(.*)$", line):
            level = min(len(heading.group(1)) + shift, 6)
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            body = [r for r in block[1:] if not set(r) <= set("|-: ")]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in _row(block[0]))
                       + "</tr></thead><tbody>" + "".join(
                           "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _row(r)) + "</tr>" for r in body)
                       + "</tbody></table>")
            continue
        elif image := _IMAGE.match(line.strip()):
            alt, src = image.groups()
            target = image_src(src)
            out.append(figure(target, alt) if target else f'<p class="muted">[missing picture: {esc(src)}]</p>')
        elif line.startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].startswith(("- ", "* ")):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            block, i = [line.strip()], i + 1
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "```", "- ", "* ", "![")):
                block.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(block))}</p>")
            continue
        i += 1
    return "\n".join(out) + "\n"
