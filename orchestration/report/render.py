"""The report rendered: one self-contained HTML page, Markdown beside its PNGs, and the run-description note."""

from __future__ import annotations

import html
from pathlib import Path

from data.catalogue import NOTE_LIMIT
from orchestration.errors import SweepError
from orchestration.report.document import Report, inline_html

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h4 { margin-bottom: .4em; }
table { border-collapse: collapse; margin: .3em 0 .2em; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
.n { color: #777; font-size: .85em; } .study { color: #2060a0; font-size: .85em; white-space: nowrap; }
.unavailable { color: #b05000; } .missing { color: #999; font-style: italic; } .label { }
ul.notes { font-size: .82em; color: #555; margin-top: .2em; list-style: none; padding-left: 0; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; } figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
figure.missing div { width: 16em; height: 6em; border: 1px dashed #bbb; color: #999; padding: .5em; }
figcaption, .caption { font-size: .85em; color: #555; }
.lacks li { color: #8a4b00; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def render_html(report: Report) -> str:
    body = [f"<h1>{html.escape(report.title)}</h1>"]
    for kind, payload in report.blocks:
        if kind == "h2":
            body.append(f"<h2>{html.escape(payload)}</h2>")
        elif kind == "p":
            body.append(f"<p>{inline_html(payload)}</p>")
        elif kind == "list":
            body.append('<ul class="lacks">' + "".join(f"<li>{html.escape(i)}</li>" for i in payload) + "</ul>")
        else:  # table, figure
            body.append(payload.to_html())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def render_markdown(report: Report) -> str:
    out = [f"# {report.title}", ""]
    for kind, payload in report.blocks:
        if kind == "h2":
            out += [f"## {payload}", ""]
        elif kind == "p":
            out += [payload, ""]
        elif kind == "list":
            out += [f"- {i}" for i in payload] + [""]
        else:
            out += [payload.markdown(), ""]
    return "\n".join(out)


NOTE_ORDER = ("4.4", "3.1", "4.1", "4.3", "4.2")  # the note's tables, most important first
NOTE_MARK = "**condface report"


def note_markdown(report: Report, before: str = "", limit: int = NOTE_LIMIT) -> str:
    """The run's description: `before` (what it said already, less an older report), then the Markdown tables,
    most important first, whole tables within MLflow's limit."""
    before = before.split(NOTE_MARK)[0].strip()
    head = (before + "\n\n" if before else "") + (f"{NOTE_MARK}: {report.title[len('condface report: '):]}** (the full "
                                                     "report with figures: artifacts report/report.html, report.md)\n\n")
    tables = sorted(report.tables, key=lambda t: NOTE_ORDER.index(t.key) if t.key in NOTE_ORDER else len(NOTE_ORDER))
    out, left = head, 0
    for i, t in enumerate(tables):
        md = t.markdown() + "\n\n"
        if len(out) + len(md) > limit - 120:
            left = len(tables) - i
            break
        out += md
    if left:
        out += f"({left} more table(s) in report/report.md)\n"
    return out


def write(report: Report, out: Path) -> Path:
    """report.html, report.md and the figures' PNGs into `out`, atomically (a temporary sibling renamed)."""
    from data.io import atomic_dir

    out = Path(out)
    try:
        with atomic_dir(out) as tmp:
            written: set[str] = set()
            for kind, payload in report.blocks:
                if kind == "figure":
                    for panel in payload.panels:
                        if panel.png is not None and panel.file not in written:
                            (tmp / panel.file).write_bytes(panel.png)
                            written.add(panel.file)
            (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
            (tmp / "report.html").write_text(render_html(report), encoding="utf-8")
    except OSError as err:
        raise SweepError(f"--out {out} is not writable ({err.strerror or err}): pass a writable --out") from None
    return out


__all__ = ["render_html", "render_markdown", "note_markdown", "write"]
