"""The report's document model: cells, tables, figures (panels of PNGs) and the report, a list of blocks.

Every metric value is formatted by the catalogue (`data.catalogue.metric(key).text`), so the report and the
terminal summary print a metric the same way.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

from data.catalogue import finite, metric


def metric_text(key: str, value: float) -> str:
    """A metric's value as every table prints it; a distance of -1e-9 prints as 0, not -0.00."""
    text = metric(key).text(value)
    return text[1:] if text.startswith("-") and not any(c in "123456789" for c in text) else text


def count_key(key: str) -> str:
    """The metric holding a value's sample count (every est_acc_* shares est_acc's samples)."""
    return "est_acc_n" if key.startswith("est_acc") else f"{key}_n"


def inline_html(text: str) -> str:
    """HTML of a line whose only Markdown is `code` spans."""
    parts = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


@dataclass
class Cell:
    text: str
    n: int | None = None  # sample count
    study: str | None = None  # the study's value
    kind: str = "value"  # value | label | unavailable | missing
    code: str | None = None  # a name shown as code after the text (a metric's key); the terminal leaves it out

    def md(self) -> str:
        parts = [self.text + (f" `{self.code}`" if self.code else "")]
        if self.n is not None:
            parts.append(f"(n={self.n})")
        if self.study is not None:
            parts.append(f"[study: {self.study}]")
        return " ".join(parts).replace("|", "\\|").replace("\n", " ")

    def html(self) -> str:
        code = f" <code>{html.escape(self.code)}</code>" if self.code else ""
        out = f'<span class="{self.kind}">{inline_html(self.text)}{code}</span>'
        if self.n is not None:
            out += f' <span class="n">n={self.n}</span>'
        if self.study is not None:
            out += f' <span class="study">study {html.escape(self.study)}</span>'
        return out


def label(text: str) -> Cell:
    return Cell(text, kind="label")


def metric_label(key: str) -> Cell:
    """A row's name: the catalogue's label, then the key as logged."""
    return Cell(metric(key).label, kind="label", code=key)


def number(value: float | None, spec: str) -> Cell:
    """A cell of a quantity that is not a metric (seconds, a scale): '-' when it is missing."""
    return Cell(spec.format(value)) if finite(value) else Cell("-", kind="missing")


@dataclass
class Table:
    key: str  # e.g. "4.4"
    title: str
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # footnotes: unavailable reasons, sources

    def footnote(self, text: str) -> int:
        if text not in self.notes:
            self.notes.append(text)
        return self.notes.index(text) + 1

    def value(self, key: str, value: float | None, n: float | None = None, study_value: float | None = None,
              unavailable: dict[str, str] | None = None, missing: str = "not logged") -> Cell:
        """A metric's cell: the value (+ n, + the study's), or 'unavailable [k]' with the reason as footnote k."""
        theirs = metric_text(key, study_value) if finite(study_value) else None
        if finite(value):
            return Cell(metric_text(key, value), int(n) if finite(n) else None, theirs)
        reason = (unavailable or {}).get(key)
        if reason:
            return Cell(f"unavailable [{self.footnote(f'{key} unavailable: {reason}')}]", None, theirs, "unavailable")
        return Cell(missing, None, theirs, "missing")

    def markdown(self) -> str:
        lines = [f"#### Table {self.key}: {self.title}", "",
                 "| " + " | ".join(h.replace("|", "\\|") for h in self.header) + " |",
                 "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(c.md() for c in row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"[{i}] {n}" + "  " for i, n in enumerate(self.notes, 1)]
        return "\n".join(lines)

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{c.html()}</td>" for c in row) + "</tr>" for row in self.rows)
        notes = "".join(f"<li>[{i}] {html.escape(n)}</li>" for i, n in enumerate(self.notes, 1))
        return (f'<h4 id="table-{html.escape(self.key)}">Table {html.escape(self.key)}: {html.escape(self.title)}'
                f"</h4><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                + (f'<ul class="notes">{notes}</ul>' if notes else ""))

    def text(self, title: str = "") -> str:
        """Plain text for the terminal: the values without counts or study values, then the footnotes."""
        header = [label(h) if j == 0 else Cell(h) for j, h in enumerate(self.header)]
        grid = [header] + [[Cell("-", kind="missing") if c.kind == "missing" else c for c in row] for row in self.rows]
        widths = [max(len(r[i].text) for r in grid) for i in range(len(self.header))]
        lines = [title] if title else []
        for i, r in enumerate(grid):  # names to the left, values to the right
            lines.append("  ".join(c.text.ljust(w) if c.kind == "label" else c.text.rjust(w)
                                   for c, w in zip(r, widths)).rstrip())
            if i == 0:
                lines.append("-" * (sum(widths) + 2 * (len(widths) - 1)))
        lines += [f"[{i}] {n}" for i, n in enumerate(self.notes, 1)]
        return "\n".join(lines)


@dataclass
class Panel:
    caption: str
    png: bytes | None
    file: str  # the PNG's name beside report.md
    missing: str = ""


@dataclass
class Figure:
    key: str
    title: str
    panels: list[Panel]
    caption: str = ""

    def markdown(self) -> str:
        lines = [f"#### Figure {self.key}: {self.title}", ""]
        shown = [p for p in self.panels if p.png is not None]
        if shown:
            lines += [" ".join(f"![{p.caption}]({p.file})" for p in shown), "",
                      " / ".join(f"*{p.caption}*" for p in shown), ""]
        lines += [f"- {p.caption}: missing ({p.missing})" for p in self.panels if p.png is None]
        if self.caption:
            lines += ["", self.caption]
        return "\n".join(lines)

    def to_html(self) -> str:
        items = []
        for p in self.panels:
            if p.png is not None:
                data = base64.b64encode(p.png).decode()
                items.append(f'<figure><img alt="{html.escape(p.caption)}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{html.escape(p.caption)}</figcaption></figure>")
            else:
                items.append(f'<figure class="missing"><div>missing: {html.escape(p.missing)}</div>'
                             f"<figcaption>{html.escape(p.caption)}</figcaption></figure>")
        cap = f'<p class="caption">{html.escape(self.caption)}</p>' if self.caption else ""
        return (f'<h4 id="figure-{html.escape(self.key)}">Figure {html.escape(self.key)}: {html.escape(self.title)}'
                f'</h4><div class="figures">{"".join(items)}</div>{cap}')


@dataclass
class Report:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)  # ("h2"|"p"|"list"|"table"|"figure", payload)
    missing: list[str] = field(default_factory=list)

    def add(self, kind: str, payload: Any) -> None:
        self.blocks.append((kind, payload))

    def extend(self, blocks: list[tuple[str, Any]]) -> None:
        self.blocks.extend(blocks)

    @property
    def tables(self) -> list[Table]:
        return [p for k, p in self.blocks if k == "table"]
