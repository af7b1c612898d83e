"""`python -m orchestration.report`: the study's tables and figures regenerated from one sweep's MLflow record.

    python -m orchestration.report [--tracking-uri URI] --experiment NAME [--run PARENT_RUN_ID] [--out DIR]

It reads only the MLflow record -- metrics, params, tags and logged PNGs of the sweep's parent run and its
children; no model is loaded and nothing is recomputed -- and writes, atomically (a temporary folder renamed
into place), into DIR (default `./reports/<parent run name>`):

    report.html   one self-contained page: inline CSS, every image a base64 data URI, no network reference
    report.md     the same tables in Markdown, with the figures beside it as PNG files (fig*.png, real_*.png)

Contents in the study's numbering: Table 3.1 (reference rows), Tables 4.1 / 4.3 (each grid's best value of
every metric and the configuration that reached it), Table 4.2 (the DDPM grid per channel set), Table 4.4
(both final models beside the reference rows), Figures 4.1-4.5 (sample and attribute grids beside real images
of the same conditions), 4.6 (loss per optimizer step), 4.7 (every metric per epoch), 4.8 (the CFG Pareto
curves), 4.9 (parameter counts), then the sampler phase and the augmentation axis when the sweep ran them,
and an appendix with the record's provenance. Every value shows its sample count where it has one and the
study's published number beside it (orchestration.study_numbers); an unavailable metric is named with its
reason, never shown as a number; what the record lacks (a sweep still running, a single family) is listed.

Every sweep writes its report at the end (orchestration.driver), logs it to its parent run under `report/`
and puts the Markdown tables in the parent run's description (`mlflow.note.content`).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import socket
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.catalogue import FID_STAND_IN
from data.catalogue import METRICS as CATALOGUE
from orchestration import study_numbers as study
from orchestration.errors import SweepError
from orchestration.provenance import PREFIX as PROVENANCE

# orchestration.tracking's names, not imported here: it loads MLflow and Ray Tune, and the command's checks of its
# input (store missing or unreachable, --out not writable) answer before any of that is loaded
TAG_PREFIX, PARENT_TAG, STEP_LOSS_METRIC = "condface.", "mlflow.parentRunId", "train_loss_step"

FAMILIES = ("ddpm", "sd-lora")
FAMILY_NAMES = {"ddpm": "attribute DDPM", "sd-lora": "SD Nano 2.1 + LoRA"}
COLORS = {"ddpm": "tab:blue", "sd-lora": "tab:green"}
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # artifacts are read one small PNG at a time
NOTE_TAG = "mlflow.note.content"
NOTE_LIMIT = 8000  # MLflow's tag value limit (mlflow.utils.validation.MAX_TAG_VAL_LENGTH)
ATTRIBUTE_KEYS = ("est_acc_bangs", "est_acc_eyeglasses", "est_acc_beard", "est_acc_smiling", "est_acc_age")

# The study's metrics in its tables' order (+ this project's): key -> printed name.
METRICS = {
    "fid": "FID",
    "fd_estimator": "FD on estimator features (FID stand-in)",
    "mtcnn": "MTCNN",
    "clip_score": "CLIP-S",
    "est_acc": "estimator accuracy",
    "est_acc_balanced": "estimator accuracy, class-balanced",
}
GRID_METRICS = {**METRICS, "val_loss": "held-out denoising loss"}
EPOCH_METRICS = ("train_loss", "val_loss", "fid", "fd_estimator", "mtcnn", "clip_score", "est_acc", "est_acc_balanced")


# --------------------------------------------------------------------------------------------------
# Values and cells
# --------------------------------------------------------------------------------------------------
def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(key: str, v: float) -> str:
    """How a metric prints: accuracies as percents of a fraction, MTCNN already a percent, losses to 5 places."""
    if key.startswith("est_acc"):
        return f"{100 * v:.2f} %"
    if key == "mtcnn":
        return f"{v:.2f} %"
    if key.endswith("loss") or key == STEP_LOSS_METRIC:
        return f"{v:.5f}"
    if key in ("guidance_scale", "steps", "nfe"):
        return f"{v:g}"
    if key == "seconds":
        return f"{v:.2f}"
    return f"{v:.4f}".replace("-0.0000", "0.0000")  # a distance of -1e-9 is 0


def count_key(key: str) -> str:
    """The metric holding a value's sample count (every est_acc_* shares est_acc's samples)."""
    return "est_acc_n" if key.startswith("est_acc") else f"{key}_n"


def params_text(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}K" if n >= 1e3 else f"{n:.0f}"


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

    def md(self) -> str:
        parts = [self.text]
        if self.n is not None:
            parts.append(f"(n={self.n})")
        if self.study is not None:
            parts.append(f"[study: {self.study}]")
        return " ".join(parts).replace("|", "\\|").replace("\n", " ")

    def html(self) -> str:
        out = f'<span class="{self.kind}">{inline_html(self.text)}</span>'
        if self.n is not None:
            out += f' <span class="n">n={self.n}</span>'
        if self.study is not None:
            out += f' <span class="study">study {html.escape(self.study)}</span>'
        return out


def label(text: str) -> Cell:
    return Cell(text, kind="label")


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
        theirs = fmt(key, study_value) if finite(study_value) else None
        if finite(value):
            return Cell(fmt(key, value), int(n) if finite(n) else None, theirs)
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


# --------------------------------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------------------------------
def check_source(uri: str, timeout_s: float = 5.0) -> None:
    """Raise SweepError when the store is not there (SQLite/file) or cannot be reached (http): read-only checks."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise SweepError(f"no MLflow store at {uri} ({path} does not exist): pass the sweep's --tracking-uri")
    elif parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
        except OSError as err:
            raise SweepError(f"cannot reach the MLflow server at {uri} ({err.strerror or err}): start it or pass "
                             "the sweep's --tracking-uri") from None
    elif parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else uri)
        if not path.is_dir():
            raise SweepError(f"no MLflow store at {uri} ({path} is not a directory): pass the sweep's --tracking-uri")


class Record:
    """One sweep's MLflow record: the parent run, its children, metric histories and artifacts (read-only)."""

    def __init__(self, client, uri: str, experiment, parent):
        self.client, self.uri, self.experiment, self.parent = client, uri, experiment, parent
        self.children = self._search(f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
        self._history: dict[tuple[str, str], list] = {}
        self._artifacts: dict[tuple[str, str], bytes | None] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="condface-report-")

    @classmethod
    def load(cls, uri: str, experiment: str, run_id: str | None = None, client=None) -> Record:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = client or MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            exp = client.get_experiment_by_name(experiment)
        except MlflowException as err:
            raise SweepError(f"cannot read the MLflow store at {uri}: {str(err).splitlines()[0]}") from None
        if exp is None:
            names = sorted(e.name for e in client.search_experiments(max_results=11) if e.name != "Default")
            listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise SweepError(f"no experiment {experiment!r} in the MLflow store at {uri}"
                             + (f": it has {listed}" if names else ": it has no experiment yet"))
        if run_id:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                raise SweepError(f"no run {run_id!r} in the MLflow store at {uri}: pass a sweep's parent run id "
                                 f"(tag {TAG_PREFIX}phase = sweep) or leave out --run for the latest") from None
            if run.info.experiment_id != exp.experiment_id:
                raise SweepError(f"run {run_id} belongs to another experiment than {experiment!r}")
            phase = run.data.tags.get(f"{TAG_PREFIX}phase")
            if phase != "sweep":
                up = run.data.tags.get(PARENT_TAG)
                raise SweepError(f"run {run_id} is a {phase or 'non-condface'} run, not a sweep's parent run"
                                 + (f": pass its parent, --run {up}" if up else ""))
        else:
            runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_PREFIX}phase` = 'sweep'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
            if not runs:
                raise SweepError(f"experiment {experiment!r} has no sweep run (tag {TAG_PREFIX}phase = sweep) yet")
            run = runs[0]
        return cls(client, uri, exp, run)

    def _search(self, filter_string: str) -> list:
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment.experiment_id], filter_string=filter_string,
                                           max_results=1000, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    # --- what the sweep was -------------------------------------------------------------------
    @property
    def params(self) -> dict[str, str]:
        return self.parent.data.params

    @property
    def tags(self) -> dict[str, str]:
        return self.parent.data.tags

    @property
    def families(self) -> list[str]:
        spec = self.params.get("model") or self.tags.get(f"{TAG_PREFIX}family", "")
        return [f.strip() for f in spec.split(",") if f.strip()]

    def expects(self, phase: str) -> bool:
        if phase in ("final", "cfg"):
            return self.params.get("final_epochs", "1") not in ("0", "")
        if phase == "samplers":
            return self.params.get("sampler_phase") == "True"
        return True

    def runs(self, phase: str, family: str | None = None) -> list:
        out = [r for r in self.children if r.data.tags.get(f"{TAG_PREFIX}phase") == phase
               and (family is None or r.data.tags.get(f"{TAG_PREFIX}family") == family)]
        return sorted(out, key=lambda r: (r.info.run_name or "", r.info.start_time or 0))

    def one(self, phase: str, family: str):
        runs = self.runs(phase, family)
        return max(runs, key=lambda r: r.info.start_time or 0) if runs else None

    def reference(self, family: str) -> tuple[Any, str]:
        """The reference run of `family` ("real" for the real-image rows) this sweep used, and a note on where it
        came from (a reference run is reused across sweeps of an experiment when everything it depends on is equal)."""
        run = self.one("reference", family)
        if run is not None:
            return run, ""
        tagged = self.tags.get(f"{TAG_PREFIX}reference_run.{family}")
        if tagged:
            try:
                return self.client.get_run(tagged), f"computed by an earlier sweep of this experiment (run {tagged})"
            except Exception:  # deleted since
                pass
        runs = self._search(f"tags.`{TAG_PREFIX}phase` = 'reference' and tags.`{TAG_PREFIX}family` = '{family}' "
                            "and attributes.status = 'FINISHED'")
        if runs:
            run = max(runs, key=lambda r: r.info.start_time or 0)
            return run, f"not recorded by this sweep: the experiment's latest {family} reference run ({run.info.run_id})"
        return None, ""

    # --- data ---------------------------------------------------------------------------------
    def history(self, run, key: str) -> list:
        run_id = run.info.run_id
        if (run_id, key) not in self._history:
            if key in run.data.metrics:
                self._history[(run_id, key)] = sorted(self.client.get_metric_history(run_id, key),
                                                      key=lambda m: (m.step, m.timestamp))
            else:
                self._history[(run_id, key)] = []
        return self._history[(run_id, key)]

    def series(self, run, key: str) -> dict[int, float]:
        return {m.step: m.value for m in self.history(run, key)}

    def artifact(self, run, path: str) -> bytes | None:
        run_id = run.info.run_id
        if (run_id, path) not in self._artifacts:
            folder, _, _ = path.rpartition("/")
            data = None
            try:
                if any(f.path == path for f in self.client.list_artifacts(run_id, folder or None)):
                    local = self.client.download_artifacts(run_id, path, tempfile.mkdtemp(dir=self._tmp.name))
                    data = Path(local).read_bytes()
            except Exception:  # an artifact store that cannot be read: shown as missing
                data = None
            self._artifacts[(run_id, path)] = data
        return self._artifacts[(run_id, path)]

    def artifact_dirs(self, run, folder: str) -> list[str]:
        try:
            return sorted(f.path for f in self.client.list_artifacts(run.info.run_id, folder) if f.is_dir)
        except Exception:
            return []

    @staticmethod
    def unavailable(run) -> dict[str, str]:
        prefix = f"{TAG_PREFIX}unavailable."
        return {k[len(prefix):]: v for k, v in run.data.tags.items() if k.startswith(prefix)} if run else {}


# --------------------------------------------------------------------------------------------------
# Building the report
# --------------------------------------------------------------------------------------------------
@dataclass
class Report:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)  # ("h2"|"p"|"list"|"table"|"figure", payload)
    missing: list[str] = field(default_factory=list)

    def add(self, kind: str, payload: Any) -> None:
        self.blocks.append((kind, payload))

    @property
    def tables(self) -> list[Table]:
        return [p for k, p in self.blocks if k == "table"]


def _label(run) -> str:
    name = run.info.run_name or run.info.run_id
    return name.split(":", 1)[1] if ":" in name else name


def _axes(run, family: str, with_augment: bool) -> list[Cell]:
    p = run.data.params
    snr = p.get("trial.min_snr_gamma", "none")
    ga = p.get("trial.grad_accum", "?")
    cells = [label(p.get("trial.timesteps", "?")), label("off" if snr in ("none", "0.0", "0") else snr),
             label("off" if ga == "1" else ga)]
    if family == "ddpm":
        chans = p.get("trial.channels_list", "none")
        cells.append(label(f"{p.get('trial.channels', '?')} [{chans}]"))
    else:
        cells.append(label(p.get("trial.lora_rank", "?")))
    if with_augment:
        cells.append(label(p.get("augment", p.get("trial.augment", "?"))))
    return cells


def best_of(rec: Record, runs: list, key: str) -> tuple[float, Any, int, float | None] | None:
    """(best value at any epoch, its run, its epoch, its sample count) over `runs`; ties keep the first."""
    mode = CATALOGUE[key].better if key in CATALOGUE else "min"
    best = None
    for run in runs:
        for m in rec.history(run, key):
            if not finite(m.value):
                continue
            if best is None or (m.value < best[0] if mode == "min" else m.value > best[0]):
                best = (m.value, run, m.step)
    if best is None:
        return None
    n = rec.series(best[1], count_key(key)).get(best[2])
    if n is None and key == "val_loss":  # the held-out loss is over the run's fixed validation items
        samples = best[1].data.params.get("train.val_samples", "")
        n = float(samples) if samples.isdigit() else None
    return best[0], best[1], best[2], n


def _unavailable_of(runs: list) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in runs:
        out.update(Record.unavailable(r))
    return out


def reference_columns(rec: Record, report: Report) -> list[tuple[str, Any, str, str]]:
    """[(column label, run, row prefix, study key)] for the reference rows this sweep has."""
    cols = []
    for family in rec.families:
        run, note = rec.reference(family)
        name = "SD base (no LoRA)" if family == "sd-lora" else "untrained DDPM"
        if run is None:
            report.missing.append(f"{family}: no reference run (the {name} row)"
                                  + (" -- the sweep is still running" if rec.parent.info.status == "RUNNING" else ""))
            continue
        if note:
            report.missing.append(f"{name} row: {note}")
        cols.append((name, run, "untrained", family))
    run, note = rec.reference("real")
    if run is None:
        report.missing.append("no reference run of real images (ground truth, real held-out)")
    else:
        if note:
            report.missing.append(f"real-image rows: {note}")
        cols.append(("ground truth", run, "ground_truth", "real"))
        cols.append(("real held-out (this project)", run, "real_held_out", "real"))
    return cols


def _ref_cell(table: Table, run, prefix: str, key: str, study_value: float | None) -> Cell:
    metrics = run.data.metrics
    n = metrics.get(f"{prefix}.{count_key(key)}")
    if n is None:
        samples = run.data.params.get("ref.samples")
        n = float(samples) if samples and samples.isdigit() else None
    return table.value(key, metrics.get(f"{prefix}.{key}"), n, study_value, Record.unavailable(run))


def table_3_1(rec: Record, report: Report, columns) -> Table | None:
    if not columns:
        return None
    t = Table("3.1", "reference rows: the metrics of untrained models and of real images",
              ["metric"] + [c[0] for c in columns])
    for key, name in METRICS.items():
        row = [label(f"{name} `{key}`")]
        for _, run, prefix, family in columns:
            theirs = study.TABLE_3_1.get((prefix, family), {}).get(key)
            row.append(_ref_cell(t, run, prefix, key, theirs))
        if any(c.kind != "missing" or c.study for c in row[1:]):
            t.rows.append(row)
    t.notes.append(f"study values: {study.SOURCE}, Cuadro 3.1 (§3.5), 100 samples each; 'real held-out' is this "
                   "project's (real test images against the ground-truth set: the floor a sample of this size reaches)")
    return t


def grid_table(rec: Record, report: Report, family: str) -> Table | None:
    runs = rec.runs("grid", family)
    number = "4.1" if family == "ddpm" else "4.3"
    if not runs:
        report.missing.append(f"{family}: no grid trial logged yet (Table {number})")
        return None
    augments = {r.data.params.get("augment") for r in runs}
    with_augment = len(augments) > 1
    axis = "channels" if family == "ddpm" else "r"
    t = Table(number, f"{FAMILY_NAMES[family]} grid ({len(runs)} trials): the best value of each metric at any epoch "
                      "and the configuration that reached it",
              ["metric", "best", "configuration", "T", "Min-SNR-γ", "GA", axis] + (["augment"] if with_augment else [])
              + ["epoch"])
    theirs = study.TABLE_4_1 if family == "ddpm" else study.TABLE_4_3
    unavailable = _unavailable_of(runs)
    for key, name in GRID_METRICS.items():
        found = best_of(rec, runs, key)
        ref = theirs.get(key)
        if found is None:
            cell = t.value(key, None, None, ref[0] if ref else None, unavailable)
            if cell.kind == "missing" and ref is None:
                continue
            t.rows.append([label(f"{name} `{key}`"), cell, label(f"study: {ref[1]}" if ref else "")]
                          + [label("")] * (4 + with_augment) + [label("")])
            continue
        value, run, epoch, n = found
        t.rows.append([label(f"{name} `{key}`"), t.value(key, value, n, ref[0] if ref else None),
                       label(_label(run) + (f" (study: {ref[1]})" if ref else ""))] + _axes(run, family, with_augment)
                      + [label(str(epoch))])
    status = {s: sum(r.info.status == s for r in runs) for s in ("FINISHED", "RUNNING", "FAILED", "KILLED")}
    t.notes.append(f"trials: {status['FINISHED']} finished, {status['RUNNING']} running, {status['FAILED']} failed"
                   + (f", {status['KILLED']} killed" if status["KILLED"] else ""))
    for r in runs:
        if r.info.status == "FAILED":
            t.notes.append(f"failed: {_label(r)}: {r.data.tags.get(f'{TAG_PREFIX}end_reason', 'no reason recorded')}")
    if status["RUNNING"]:
        report.missing.append(f"{family}: {status['RUNNING']} grid trial(s) still running (Table {number} is partial)")
    chosen = rec.tags.get(f"{TAG_PREFIX}best_config.{family}")
    metric = rec.tags.get(f"{TAG_PREFIX}select_metric", rec.params.get("select_metric", "?"))
    t.notes.append(f"selected for the final run: {chosen or 'not yet'} (by {metric}); the study retrained "
                   f"{study.SELECTED[family]}")
    t.notes.append(f"study values: Cuadro {number} ({'§4.1' if family == 'ddpm' else '§4.2'}), 5-epoch trials")
    return t


def grouped_table(rec: Record, family: str, param: str, number: str, title: str,
                  study_values: dict[str, dict[str, float]] | None = None,
                  group_label: Callable[[str, Any], str] | None = None) -> Table | None:
    """The best value of each metric within each group of grid trials that share `param` (channel set, augment)."""
    runs = rec.runs("grid", family)
    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(r.data.params.get(param, "?"), []).append(r)
    if len(groups) < 2:
        return None
    order = list(study_values or {})  # the study's order (small, large) first
    names = sorted(groups, key=lambda g: (order.index(g) if g in order else len(order), g))
    t = Table(number, title, ["metric"] + [group_label(g, groups[g]) if group_label else g for g in names])
    unavailable = _unavailable_of(runs)
    for key, name in GRID_METRICS.items():
        row = [label(f"{name} `{key}`")]
        for g in names:
            found = best_of(rec, groups[g], key)
            theirs = (study_values or {}).get(g, {}).get(key)
            row.append(t.value(key, found[0] if found else None, found[3] if found else None, theirs, unavailable))
        if any(c.kind != "missing" or c.study for c in row[1:]):
            t.rows.append(row)
    return t


def table_4_4(rec: Record, report: Report, columns) -> Table | None:
    finals = [(f, rec.one("final", f)) for f in rec.families]
    for f, run in finals:
        if run is None and rec.expects("final"):
            report.missing.append(f"{f}: no final run yet (Table 4.4, Figures 4.3-4.7)")
        elif run is not None and "final_evaluated" not in run.data.metrics:
            report.missing.append(f"{f}: the final run has not been evaluated yet (status {run.info.status})")
    finals = [(f, r) for f, r in finals if r is not None]
    if not finals:
        return None
    header = ["metric"] + [f"{f} final" for f, _ in finals] + [c[0] for c in columns]
    t = Table("4.4", "the final models on the final sample set, beside the reference rows", header)
    for key, name in {**METRICS, **{k: f"estimator accuracy: {k[8:]}" for k in ATTRIBUTE_KEYS}}.items():
        row = [label(f"{name} `{key}`")]
        for f, run in finals:
            m = run.data.metrics
            row.append(t.value(key, m.get(f"final_{key}"), m.get(f"final_{count_key(key)}"),
                               study.TABLE_4_4.get(f, {}).get(key), Record.unavailable(run)))
        for _, run, prefix, family in columns:
            row.append(_ref_cell(t, run, prefix, key, study.TABLE_3_1.get((prefix, family), {}).get(key)))
        if any(c.kind != "missing" or c.study for c in row[1:]):
            t.rows.append(row)
    for f, run in finals:
        tags, p = run.data.tags, run.data.params
        t.notes.append(f"{f} final: {_label(run)}, {p.get('train.epochs', '?')} epochs, guidance "
                       f"{tags.get(f'{TAG_PREFIX}final_guidance_scale', '?')}, "
                       f"{tags.get(f'{TAG_PREFIX}final_samples', '?')} samples, "
                       f"{tags.get(f'{TAG_PREFIX}registered_model', 'not registered')}, status {run.info.status}")
    t.notes.append("study values: Cuadro 4.4 (§4.3): 15 epochs, 100 samples; reference columns: Cuadro 3.1")
    return t


# --- figures ---------------------------------------------------------------------------------------
def _png_of(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _last_epoch_png(rec: Record, run, name: str) -> tuple[bytes | None, str]:
    dirs = rec.artifact_dirs(run, "samples")
    if not dirs:
        return None, f"{_label(run)} logged no samples yet"
    return rec.artifact(run, f"{dirs[-1]}/{name}"), dirs[-1].rsplit("_", 1)[-1].lstrip("0") or "0"


def sample_figures(rec: Record, report: Report) -> list[Figure]:
    real_epoch = rec.artifact(rec.parent, "real/epoch_samples.png")
    real_final = rec.artifact(rec.parent, "real/final_samples.png")
    real_attr = rec.artifact(rec.parent, "real/attributes.png")
    no_real = "the sweep logged no real-image grids (real/ on the parent run: sweeps before the report existed)"
    if real_attr is None:
        report.missing.append(f"real images beside the samples: {no_real}")
    real_tiles = ""
    info = rec.artifact(rec.parent, "real/attributes.json")
    if info:
        tiles = json.loads(info)
        real_tiles = (f" Real attribute grid: {tiles.get('exact', '?')} of {len(tiles.get('tiles', []))} tiles have "
                      "exactly the asked levels; the others are the nearest validation image with the row's level "
                      "(blank: none has it).")
    figs = []
    eval_n = rec.params.get("eval_samples", "?")
    for f in rec.families:
        if f not in FAMILIES:
            continue
        number = "4.1" if f == "ddpm" else "4.2"
        chosen = rec.tags.get(f"{TAG_PREFIX}best_config.{f}")
        grid = [r for r in rec.runs("grid", f) if _label(r) == chosen] if chosen else []
        if grid:
            png, epoch = _last_epoch_png(rec, grid[0], "samples.png")
            panels = [Panel(f"{f}: {chosen}, epoch {epoch}", png, f"fig{number}_{f}_grid_samples.png",
                            "not logged" if png is None else "")]
        else:
            panels = [Panel(f"{f}: the grid's selected configuration", None, "", "no selected grid trial yet")]
        panels.append(Panel("real images of the same conditions", real_epoch, "real_epoch_samples.png", no_real))
        figs.append(Figure(number, f"{FAMILY_NAMES[f]}: samples of the grid's selected configuration ({eval_n} "
                                   "per-epoch conditions)", panels,
                           "Each tile is asked for the condition of the real image in the same place."))
    for f in rec.families:
        if f not in FAMILIES:
            continue
        number = "4.3" if f == "ddpm" else "4.4"
        run = rec.one("final", f)
        png = rec.artifact(run, "final_samples/final_samples.png") if run else None
        n = run.data.metrics.get("final_est_acc_n") if run else None
        shown = "" if not finite(n) else f" ({int(n)} samples" + (", the first 64 shown)" if n > 64 else ")")
        panels = [Panel(f"{f} final model{shown}", png,
                        f"fig{number}_{f}_final_samples.png", "no final evaluation logged yet"),
                  Panel("real images of the same conditions", real_final, "real_final_samples.png", no_real)]
        figs.append(Figure(number, f"{FAMILY_NAMES[f]}: the final model's samples", panels))
    figs.append(confusion_figure(rec))
    panels = []
    for f in rec.families:
        run = rec.one("final", f)
        png, epoch = _last_epoch_png(rec, run, "attributes.png") if run else (None, "no final run yet")
        panels.append(Panel(f"{f} final model (epoch {epoch})" if png else f"{f} final model", png,
                            f"fig4.5_{f}_attributes.png", epoch if png is None else ""))
    panels.append(Panel("real images", real_attr, "real_attributes.png", no_real))
    figs.append(Figure("4.5", "attribute grids: row = attribute, levels 0..5 left to right (the others at 0)", panels,
                       "The study's Figure 4.5 shows one attribute at maximum intensity: the right-most column."
                       + real_tiles))
    return figs


def confusion_figure(rec: Record) -> Figure:
    """Where the class-balanced accuracy is lost: per family, the estimator's reading of the final samples (rows:
    the level asked for), beside its reading of real validation images (the judge's own errors, from its report)."""
    from evaluation.confusion import plot_confusions

    panels = []
    for f in rec.families:
        run = rec.one("final", f)
        png = rec.artifact(run, "final_samples/final_confusion.png") if run else None
        missing = "the estimator is unavailable" if "est_acc" in rec.unavailable(run) else \
            "no final evaluation logged yet"
        panels.append(Panel(f"{f} final model", png, f"figC_{f}_final_confusion.png", "" if png else missing))
    real, missing = None, "no estimator report on the parent run"
    report = rec.artifact(rec.parent, "estimator/report.json")
    if report is not None:
        confusion = json.loads(report).get("val_confusion")
        if confusion:
            with tempfile.TemporaryDirectory() as tmp:
                real = plot_confusions(confusion, "the estimator on real validation images", Path(tmp) / "real.png",
                                       ylabel="true level").read_bytes()
        else:
            missing = "the estimator's report has no confusion matrices"
    panels.append(Panel("the estimator on real validation images", real, "real_confusion.png", missing))
    return Figure("C", "where the attribute accuracy is lost: the level asked for against the level the estimator "
                       "read", panels,
                  "Each row is normalised to the samples asked for that level; the diagonal is that level's recall, "
                  "and the class-balanced accuracy is the mean of the diagonals. Level 0 is the most frequent level "
                  "of every attribute, so the rarer levels decide the balanced figure.")


def loss_figure(rec: Record, report: Report) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for f in rec.families:
        run = rec.one("final", f)
        points = rec.history(run, STEP_LOSS_METRIC) if run else []
        if points:
            curves[f] = points
        elif run is not None:
            report.missing.append(f"{f}: the final run logged no {STEP_LOSS_METRIC} (runs before per-step loss logging)")
    if not curves:
        return Figure("4.6", "training loss per optimizer step", [Panel("loss per step", None, "", "no final run "
                                                                                                   f"logged {STEP_LOSS_METRIC}")])
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.6), dpi=110, squeeze=False)
    for ax, (f, points) in zip(axes[0], curves.items()):
        ax.plot([m.step for m in points], [m.value for m in points], "-", c=COLORS.get(f), lw=1,
                marker="o" if len(points) < 30 else None, ms=3)
        ax.set_title(f"{f} final run ({len(points)} windows)", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (window mean)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return Figure("4.6", "training loss per optimizer step of both final runs",
                  [Panel("training loss per step", _png_of(fig), "fig4.6_loss_per_step.png")],
                  "Each point is the mean loss of a window of optimizer steps (TrainConfig.loss_every, 10; the last "
                  "window of an epoch may be shorter), logged as train_loss_step with step = optimizer step. The study "
                  "found the SD+LoRA curve noisier (its loss moves less, so the noise shows on its y axis).")


def epochs_figure(rec: Record) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finals = {f: rec.one("final", f) for f in rec.families}
    finals = {f: r for f, r in finals.items() if r is not None}
    keys = [k for k in EPOCH_METRICS if any(rec.history(r, k) for r in finals.values())]
    if not keys:
        return Figure("4.7", "every metric per epoch", [Panel("metrics per epoch", None, "", "no final run logged an "
                                                                                           "epoch yet")])
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), dpi=110, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for f, run in finals.items():
            pts = rec.history(run, key)
            scale = 100 if key.startswith("est_acc") else 1
            ax.plot([m.step for m in pts], [m.value * scale for m in pts], "o-", c=COLORS.get(f), label=f, ms=4)
        if key == "est_acc":
            for f, (_, last) in study.FIGURE_4_7_EST_ACC.items():
                if f in finals:
                    ax.axhline(100 * last, ls=":", c=COLORS.get(f), alpha=0.6, label=f"study {f}, epoch 15")
        ax.set_title(key + (" (%)" if key.startswith("est_acc") or key == "mtcnn" else ""), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    first_last = "; ".join(f"{f} {100 * a:.1f} % -> {100 * b:.1f} %" for f, (a, b) in study.FIGURE_4_7_EST_ACC.items())
    return Figure("4.7", "every metric per epoch of both final runs",
                  [Panel("metrics per epoch", _png_of(fig), "fig4.7_metrics_per_epoch.png")],
                  f"Per-epoch sampling uses the {rec.params.get('eval_samples', '?')} per-epoch conditions. The study's "
                  f"estimator accuracy over its 15 epochs (§4.3): {first_last} (dotted: its last epoch).")


def cfg_rows(rec: Record, run) -> list[dict]:
    scales = rec.series(run, "guidance_scale")
    keys = [k for k in run.data.metrics if k not in ("guidance_scale", "scale_index")]
    series = {k: rec.series(run, k) for k in keys}
    rows = []
    for step in sorted(scales):
        values = {k: s[step] for k, s in series.items() if step in s and not k.endswith(("_n", "_n_real"))}
        counts = {k: s[step] for k, s in series.items() if step in s and k.endswith("_n")}
        rows.append({"guidance_scale": scales[step], "values": values, "counts": counts, "step": step})
    return rows


def cfg_section(rec: Record, report: Report) -> list[tuple[str, Any]]:
    from orchestration.phases.guidance import plot_pareto, quality_metric

    out: list[tuple[str, Any]] = []
    curves = {}
    for f in rec.families:
        run = rec.one("cfg", f)
        if run is None:
            if rec.expects("cfg"):
                report.missing.append(f"{f}: no CFG sweep yet (Figure 4.8)")
            continue
        rows = cfg_rows(rec, run)
        if not rows:
            report.missing.append(f"{f}: the CFG sweep logged no scale yet (status {run.info.status})")
            continue
        curves[f] = rows
        quality = quality_metric(rows)
        front = {float(s) for s in run.data.tags.get(f"{TAG_PREFIX}pareto_scales", "").split(",") if s}
        t = Table(f"4.8-{f}", f"{f} guidance-scale sweep ({run.data.params.get('cfg_samples', '?')} samples per "
                              "scale; * = on the Pareto front by plain estimator accuracy)",
                  ["guidance scale", quality, "est_acc", "est_acc_balanced", "Pareto"])
        for r in rows:
            c = r["counts"]
            t.rows.append([label(fmt("guidance_scale", r["guidance_scale"]))]
                          + [t.value(k, r["values"].get(k), c.get(count_key(k)), None, Record.unavailable(run))
                             for k in (quality, "est_acc", "est_acc_balanced")]
                          + [label("*" if r["guidance_scale"] in front else "")])
        out.append(("table", t))
    if curves:
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_pareto(curves, "guidance scale sweep" + (": both families" if len(curves) > 1 else ""),
                              Path(tmp) / "pareto.png").read_bytes()
        out.insert(0, ("figure", Figure("4.8", "the CFG Pareto curves: image quality against estimator accuracy",
                                        [Panel("CFG Pareto curves", png, "fig4.8_cfg_pareto.png")],
                                        f"Labels: guidance scale. The study swept {study.CFG['samples']} samples per "
                                        f"scale and found scales {study.CFG['best_scales']} the best trade-off (§4.3); "
                                        "it plotted FID, here the quality axis is "
                                        f"{quality_metric([r for rows in curves.values() for r in rows])}.")))
    return out


def params_section(rec: Record, report: Report) -> list[tuple[str, Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = Table("4.9", "parameter counts of the trained models (from the runs' built.* params)",
              ["model", "total", "U-Net", "trained", "study"])
    bars: list[tuple[str, float, str]] = []
    for f in rec.families:
        run = rec.one("final", f) or (rec.runs("grid", f) or [None])[0]
        p = run.data.params if run else {}
        total, trained, unet = (p.get(f"built.{k}") for k in ("params_total", "params_trainable", "params_unet"))
        theirs = study.PARAMETERS.get(f, {})
        theirs_text = ", ".join(f"{k} {params_text(v)}" for k, v in theirs.items())
        if total is None:
            report.missing.append(f"{f}: no run recorded its parameter counts (Figure 4.9)")
            continue
        what = f"{f} ({_label(run)})"
        t.rows.append([label(what)] + [label(f"{int(v):,} ({params_text(int(v))})") if v else label("-")
                                        for v in (total, unet if f == "sd-lora" else total, trained)]
                      + [label(theirs_text)])
        bars.append((f"{f}: total" if f == "ddpm" else f"{f}: whole pipeline", int(total), COLORS.get(f)))
        if unet:
            bars.append((f"{f}: U-Net", int(unet), COLORS.get(f)))
        bars.append((f"{f}: trained", int(trained), COLORS.get(f)))
        for k, v in theirs.items():
            bars.append((f"study {f}: {k}", v, "lightgray"))
    if not bars:
        return []
    t.notes.append("study values: §4.3 (Figura 4.9) and §3.1.2: DDPM 112.10M trained (said of its final "
                   "[256,512,768,768] model; diffusers gives that set 284.9M and [128,256,512,512] 112.2M), SD Nano's "
                   "U-Net 865.91M, LoRA r = 4 830K")
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(bars) + 1.2), dpi=110)
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    for i, b in enumerate(bars):
        ax.text(b[1], i, " " + params_text(b[1]), va="center", fontsize=8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("parameters (log scale)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return [("table", t), ("figure", Figure("4.9", "parameter counts: total and trained, both families (gray: the "
                                                    "study's)", [Panel("parameter counts", _png_of(fig),
                                                                       "fig4.9_parameters.png")]))]


def sampler_section(rec: Record, report: Report) -> list[tuple[str, Any]]:
    from orchestration.phases.guidance import quality_metric
    from orchestration.phases.samplers import plot_samplers

    out: list[tuple[str, Any]] = []
    for f in rec.families:
        run = rec.one("samplers", f)
        if run is None:
            if rec.expects("samplers"):
                report.missing.append(f"{f}: no sampler phase yet")
            continue
        listed = rec.artifact(run, "samplers/samplers.json")
        labels = json.loads(listed) if listed else []
        keys = [k for k in run.data.metrics if k not in ("setting_index",)]
        series = {k: rec.series(run, k) for k in keys}
        steps = sorted(series.get("nfe", {}))
        rows = []
        for i in steps:
            values = {k: s[i] for k, s in series.items() if i in s and not k.endswith(("_n", "_n_real"))
                      and k not in ("nfe", "seconds")}
            counts = {k: s[i] for k, s in series.items() if i in s and k.endswith("_n")}
            sampler = labels[i]["sampler"] if i < len(labels) else f"setting {i}"
            rows.append({"sampler": sampler, "steps": int(series["nfe"][i]), "values": values, "counts": counts,
                         "seconds": series.get("seconds", {}).get(i)})
        if not rows:
            report.missing.append(f"{f}: the sampler phase logged no setting yet (status {run.info.status})")
            continue
        quality = quality_metric(rows)
        t = Table(f"S-{f}", f"{f}: the final model under each sampler and step count "
                            f"({run.data.params.get('samples', '?')} samples each, guidance "
                            f"{run.data.params.get('guidance_scale', '?')}; the study's future work, §5)",
                  ["sampler", "NFE (steps)", quality, "est_acc", "est_acc_balanced", "seconds"])
        for r in rows:
            c = r["counts"]
            t.rows.append([label(r["sampler"]), label(str(r["steps"]))]
                          + [t.value(k, r["values"].get(k), c.get(count_key(k)), None, Record.unavailable(run))
                             for k in (quality, "est_acc", "est_acc_balanced")]
                          + [t.value("seconds", r["seconds"])])
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_samplers(rows, quality, f"{f}: samplers", Path(tmp) / "samplers.png").read_bytes()
        out += [("table", t), ("figure", Figure(f"S-{f}", f"{f}: quality and accuracy against network evaluations",
                                                [Panel(f"{f} samplers", png, f"figS_{f}_samplers.png")]))]
    return out


def provenance_rows(rec: Record) -> list[tuple[str, str]]:
    return sorted((k[len(PROVENANCE):], v) for k, v in rec.tags.items() if k.startswith(PROVENANCE))


def build(rec: Record) -> Report:
    """Every table, figure and note of the report, from the record."""
    p, run = rec.params, rec.parent
    exp = rec.experiment.name
    report = Report(f"condface report: {exp}")
    status = run.info.status
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((run.info.start_time or 0) / 1000))
    wall = run.data.metrics.get("wall_seconds")
    intro = [f"Experiment {exp}, sweep {run.info.run_name} (parent run {run.info.run_id}), status {status}, "
             f"started {started}" + (f", {wall:.0f} s" if finite(wall) else "") + ".",
             f"Families: {', '.join(rec.families) or '?'}; preset {p.get('preset', '?')}; data {p.get('data', '?')} at "
             f"{p.get('image_size', '?')} px; grid trials of {p.get('epochs', '?')} epochs, final runs of "
             f"{p.get('final_epochs', '?')} epochs; ranked by "
             f"{rec.tags.get(f'{TAG_PREFIX}select_metric', p.get('select_metric', '?'))}; sampler "
             f"{p.get('sampler', '?')} with {p.get('sampling_steps', '?')} steps (0 = the whole chain).",
             f"Read from the MLflow store {rec.uri} only: no model was loaded and nothing was recomputed. Each cell "
             "shows the value, its sample count (n) and, in brackets, the study's published value "
             f"(from {study.SOURCE}); FID needs Inception weights: where it is unavailable, "
             f"{FID_STAND_IN} (the same Frechet distance on the attribute estimator's features) stands in, and the "
             "two are not comparable in scale."]
    if status == "RUNNING":
        intro.insert(0, "This sweep is still running: the report shows what it has logged so far.")
    elif status != "FINISHED":
        intro.insert(0, f"This sweep ended {status}: "
                        f"{run.data.tags.get(f'{TAG_PREFIX}end_reason', 'no reason recorded')}.")
    for line in intro:
        report.add("p", line)
    missing_at = len(report.blocks)

    columns = reference_columns(rec, report)
    report.add("h2", "Reference rows (the study's §3.5)")
    t = table_3_1(rec, report, columns)
    if t:
        report.add("table", t)
    else:
        report.add("p", "No reference row is recorded yet.")

    report.add("h2", "The grids (§4.1, §4.2)")
    for f in rec.families:
        t = grid_table(rec, report, f)
        if t:
            report.add("table", t)
        if f == "ddpm":
            t2 = grouped_table(rec, "ddpm", "trial.channels", "4.2", "the DDPM grid's best value of each metric per "
                               "channel set", study.TABLE_4_2,
                               lambda g, runs: f"{g} [{runs[0].data.params.get('trial.channels_list', '?')}] "
                                               f"(study {study.TABLE_4_2_CHANNELS.get(g, '-')})")
            if t2:
                t2.notes.append("study values: Cuadro 4.2 (§4.1), by the study's channel set of the same name")
                report.add("table", t2)
        augment = grouped_table(rec, f, "augment", f"A-{f}", f"{f}: the best value of each metric per augmentation "
                                "policy (the augmentation axis: the study's §5 question whether colour jitter hurt FID)")
        if augment:
            report.add("table", augment)
    samples = sample_figures(rec, report)
    for fig in samples[:-3]:  # Figures 4.1 / 4.2: the grids' selected configurations
        report.add("figure", fig)

    report.add("h2", "The final models (§4.3)")
    t = table_4_4(rec, report, columns)
    if t:
        report.add("table", t)
    else:
        report.add("p", "No final run is recorded yet.")
    for fig in samples[-3:]:  # Figures 4.3 / 4.4 (final samples) and 4.5 (attribute grids)
        report.add("figure", fig)
    report.add("figure", loss_figure(rec, report))
    report.add("figure", epochs_figure(rec))
    report.add("h2", "Guidance scale (Figure 4.8)")
    blocks = cfg_section(rec, report)
    for b in blocks:
        report.add(*b)
    if not blocks:
        report.add("p", "No CFG sweep is recorded yet.")
    report.add("h2", "Parameters (Figure 4.9)")
    for b in params_section(rec, report):
        report.add(*b)
    samplers = sampler_section(rec, report)
    if samplers:
        report.add("h2", "Samplers (the study's future work, §5)")
        for b in samplers:
            report.add(*b)

    report.add("h2", "Appendix: provenance")
    prov = provenance_rows(rec)
    if prov:
        t = Table("P", "what produced this sweep (the parent run's condface.provenance.* tags)", ["", "value"],
                  [[label(k), label(v)] for k, v in prov])
        report.add("table", t)
    else:
        report.add("p", "This sweep recorded no provenance (condface.provenance.* tags: sweeps before they existed).")
        report.missing.append("provenance: not recorded by this sweep")
    from orchestration.tracking.checks import mlflow_ui_command

    report.add("p", f"Open the record: {mlflow_ui_command(rec.uri)} -> experiment {exp}, run {run.info.run_id}.")

    # the missing list right after the introduction (deduplicated, in order)
    seen = list(dict.fromkeys(report.missing))
    report.missing = seen
    report.blocks.insert(missing_at, ("list", ["What this record lacks: " + m for m in seen] if seen else
                                      ["Nothing expected is missing from this record."]))
    return report


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------
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


NOTE_ORDER = ("4.4", "3.1", "4.1", "4.3", "4.2")


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


def write_report(uri: str, experiment: str, run_id: str | None, out: Path | None) -> tuple[Path, Report]:
    """Check the input (one-line SweepErrors), read the record, write the report into `out`; (out, the report)."""
    check_source(uri)
    if out is not None:
        _check_out(Path(out))
    rec = Record.load(uri, experiment, run_id)
    if out is None:
        out = Path("reports") / (rec.parent.info.run_name or rec.parent.info.run_id).replace("/", "_")
        _check_out(Path(out))
    report = build(rec)
    return write(report, Path(out)), report


def _check_out(out: Path) -> None:
    """Fail before any work when `out`'s folder cannot be written (nothing half-written: write() is atomic)."""
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out} is a file: pass a folder")
    probe_dir = out.resolve().parent
    while not probe_dir.exists():  # the nearest folder that exists: the rest will be created in it
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise SweepError(f"--out {out} is not writable ({probe_dir} is a file): pass a writable --out")
    try:
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as err:
        raise SweepError(f"--out {out} is not writable ({err.strerror or err} in {probe_dir}): pass a writable "
                         "--out") from None


def report_sweep(tracker, parent_run_id: str, out: Path) -> Path:
    """The driver's hook: write the report of this sweep into `out`, log it to the parent run under report/
    and put its Markdown tables in the parent run's description."""
    rec = Record(tracker.client, tracker.uri, tracker.client.get_experiment(tracker.experiment_id),
                 tracker.client.get_run(parent_run_id))
    report = build(rec)
    write(report, out)
    tracker.log_artifact(parent_run_id, out, "report")
    before = tracker.client.get_run(parent_run_id).data.tags.get(NOTE_TAG, "")
    tracker.client.set_tag(parent_run_id, NOTE_TAG, note_markdown(report, before))
    return out


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def _default_uri() -> str:
    """= orchestration.tracking.default_tracking_uri(): the embedded store in the working directory."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlruns.db'}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        sys.exit(f"error: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m orchestration.report",
                description="The study's tables and figures regenerated from one sweep's MLflow record (read only).")
    p.add_argument("--tracking-uri", help="the sweep's MLflow store (default: sqlite:///<cwd>/mlruns.db)")
    p.add_argument("--experiment", required=True, help="the MLflow experiment, e.g. condface-ddpm-cpu-demo")
    p.add_argument("--run", help="the sweep's parent run id (default: the experiment's latest sweep)")
    p.add_argument("--out", type=Path, help="output folder (default: ./reports/<parent run name>)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a wrong server answers at once, not in minutes
    try:
        out, report = write_report(args.tracking_uri or _default_uri(), args.experiment, args.run, args.out)
    except SweepError as err:
        sys.exit(f"error: {err}")
    print(f"report: {out / 'report.html'}  (Markdown: {out / 'report.md'}, {len(report.tables)} tables)")
    for m in report.missing:
        print(f"  lacks: {m}")


if __name__ == "__main__":
    main()
