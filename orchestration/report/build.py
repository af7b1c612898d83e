"""The report assembled from one sweep's record: each section's tables and figures, placed by name.

`write_report` is the command's work (check the input, read, build, write); `report_sweep` is the driver's hook,
which also logs the files to the parent run through the Tracker it is given (this package never writes to MLflow).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from data.catalogue import FAMILY_NAMES, FID_STAND_IN, NOTE_TAG, TAG_PREFIX, finite, redact_uri
from orchestration.config import SWEEP_FAMILIES
from orchestration.errors import SweepError
from orchestration.provenance import PREFIX as PROVENANCE
from orchestration.report import figures, method_figures
from orchestration.report import study_numbers as study
from orchestration.report.conclusions import conclusions_section, finals_by_seed
from orchestration.report.document import Cell, Report, Table, label
from orchestration.report.protocol import protocol_section
from orchestration.report.record import Record, check_source, run_label
from orchestration.report.render import note_markdown, write
from orchestration.report.superres import superres_section
from orchestration.report.tables import (
    FINAL_KEYS,
    Column,
    Trial,
    cfg_table,
    grid_table,
    grouped_table,
    metric_table,
    reference_label,
    sampler_table,
)
from orchestration.report.vae_figure import vae_figure

Blocks = list[tuple[str, Any]]
GRID_TABLES = {"ddpm": "4.1", "sd-lora": "4.3"}  # the study's table of each family's grid (other families: G-<family>)


# --- the record as the table builder's values -----------------------------------------------------
def _axes(run, family: str, with_augment: bool) -> list[Cell]:
    p = run.data.params
    snr = p.get("trial.min_snr_gamma", "none")
    ga = p.get("trial.grad_accum", "?")
    cells = [label(p.get("trial.timesteps", "?")), label("off" if snr in ("none", "0.0", "0") else snr),
             label("off" if ga == "1" else ga)]
    if SWEEP_FAMILIES[family].grid_axis == "channels":
        cells.append(label(f"{p.get('trial.channels', '?')} [{p.get('trial.channels_list', 'none')}]"))
    else:
        cells.append(label(p.get("trial.lora_rank", "?")))
    if with_augment:
        cells.append(label(p.get("augment", p.get("trial.augment", "?"))))
    return cells


def _trials(rec: Record, runs: list, family: str, with_augment: bool = False) -> list[Trial]:
    out = []
    for run in runs:
        samples = run.data.params.get("train.val_samples", "")  # the held-out loss is over fixed validation items
        error = run.data.tags.get(f"{TAG_PREFIX}end_reason", "no reason recorded") \
            if run.info.status == "FAILED" else None
        out.append(Trial(run_label(run), lambda key, run=run: rec.series(run, key), error,
                         _axes(run, family, with_augment), {"val_loss": float(samples)} if samples.isdigit() else {}))
    return out


def _unavailable_of(runs: list) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in runs:
        out.update(Record.unavailable(r))
    return out


def _prefixed(run, prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in run.data.metrics.items() if k.startswith(prefix)}


def reference_columns(rec: Record, report: Report) -> list[Column]:
    """The reference rows this sweep has: each family's untrained model, then the real images."""
    def column(name: str, run, row: str, family: str) -> Column:
        samples = run.data.params.get("ref.samples", "")
        values = _prefixed(run, f"{row}.")
        return Column(name, values, values, Record.unavailable(run), study.TABLE_3_1.get((row, family), {}),
                      float(samples) if samples.isdigit() else None)

    cols = []
    for family in rec.families:
        run, note = rec.reference(family)
        name = reference_label("untrained", family)
        if run is None:
            report.missing.append(f"{family}: no reference run (the {name} row)"
                                  + (" -- the sweep is still running" if rec.parent.info.status == "RUNNING" else ""))
            continue
        if note:
            report.missing.append(f"{name} row: {note}")
        cols.append(column(name, run, "untrained", family))
    run, note = rec.reference("real")
    if run is None:
        report.missing.append("no reference run of real images (ground truth, real held-out)")
        return cols
    if note:
        report.missing.append(f"real-image rows: {note}")
    return cols + [column("ground truth", run, "ground_truth", "real"),
                   column("real held-out (this project)", run, "real_held_out", "real")]


# --- sections -------------------------------------------------------------------------------------
def references_section(columns: list[Column]) -> Blocks:
    if not columns:
        return [("p", "No reference row is recorded yet.")]
    t = metric_table("3.1", "reference rows: the metrics of untrained models and of real images", columns)
    t.notes.append(f"study values: {study.SOURCE}, Cuadro 3.1 (§3.5), which gives no sample count for these rows "
                   "(its 100 samples are the final comparison's); 'real held-out' is this project's (real test images "
                   "against the ground-truth set: the floor a sample of this size reaches)")
    return [("table", t)]


def family_grid_table(rec: Record, report: Report, family: str) -> Table | None:
    """Table 4.1 (ddpm) / 4.3 (sd-lora) / G-<family>, with the trials' status and the configuration selected."""
    runs = rec.runs("grid", family)
    number = GRID_TABLES.get(family, f"G-{family}")
    if not runs:
        report.missing.append(f"{family}: no grid trial logged yet (Table {number})")
        return None
    with_augment = len({r.data.params.get("augment") for r in runs}) > 1
    channels = SWEEP_FAMILIES[family].grid_axis == "channels"
    axes = ["T", "Min-SNR-γ", "GA", "channels" if channels else "r"] + (["augment"] if with_augment else [])
    t = grid_table(number, f"{FAMILY_NAMES[family]} grid ({len(runs)} trials): the best value of each metric at any "
                           "epoch and the configuration that reached it", _trials(rec, runs, family, with_augment),
                   _unavailable_of(runs), {"ddpm": study.TABLE_4_1, "sd-lora": study.TABLE_4_3}.get(family), axes)
    status = {s: sum(r.info.status == s for r in runs) for s in ("FINISHED", "RUNNING", "FAILED", "KILLED")}
    t.notes.append(f"trials: {status['FINISHED']} finished, {status['RUNNING']} running, {status['FAILED']} failed"
                   + (f", {status['KILLED']} killed" if status["KILLED"] else ""))
    if status["RUNNING"]:
        report.missing.append(f"{family}: {status['RUNNING']} grid trial(s) still running (Table {number} is partial)")
    chosen = rec.tags.get(f"{TAG_PREFIX}best_config.{family}")
    metric = rec.tags.get(f"{TAG_PREFIX}select_metric", rec.params.get("select_metric", "?"))
    retrained = f"; the study retrained {study.SELECTED[family]}" if family in study.SELECTED else ""
    t.notes.append(f"selected for the final run: {chosen or 'not yet'} (by {metric}){retrained}")
    if family in GRID_TABLES:
        t.notes.append(f"study values: Cuadro {number} ({'§4.1' if family == 'ddpm' else '§4.2'}), 5-epoch trials")
    return t


def _grouped(rec: Record, family: str, param: str, number: str, title: str,
             study_values: dict[str, dict[str, float]] | None = None, header=None) -> Table | None:
    """The best of each metric within each group of grid trials sharing `param`; None for fewer than two groups."""
    runs = rec.runs("grid", family)
    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(r.data.params.get(param, "?"), []).append(r)
    if len(groups) < 2:
        return None
    order = list(study_values or {})  # the study's order (small, large) first
    names = sorted(groups, key=lambda g: (order.index(g) if g in order else len(order), g))
    return grouped_table(number, title, {g: _trials(rec, groups[g], family) for g in names},
                         [header(g, groups[g]) if header else g for g in names], _unavailable_of(runs), study_values)


def grids_section(rec: Record, report: Report) -> Blocks:
    """Tables 4.1-4.3 (and the augmentation axis), then Figures 4.1 / 4.2."""
    out: Blocks = []
    for f in rec.families:
        out += [("table", t) for t in [family_grid_table(rec, report, f)] if t]
        if f == "ddpm":
            t = _grouped(rec, "ddpm", "trial.channels", "4.2", "the DDPM grid's best value of each metric per "
                         "channel set", study.TABLE_4_2,
                         lambda g, runs: f"{g} [{runs[0].data.params.get('trial.channels_list', '?')}] "
                                         f"(study {study.TABLE_4_2_CHANNELS.get(g, '-')})")
            if t:
                t.notes.append("study values: Cuadro 4.2 (§4.1), by the study's channel set of the same name")
                out.append(("table", t))
        t = _grouped(rec, f, "augment", f"A-{f}", f"{f}: the best value of each metric per augmentation policy (the "
                     "augmentation axis: the study's §5 question whether colour jitter hurt FID)")
        out += [("table", t)] if t else []
    return out + [("figure", fig) for fig in figures.grid_samples(rec, report)]


def finals_table(rec: Record, report: Report, columns: list[Column]) -> Table | None:
    """Table 4.4: the final models beside the reference rows."""
    finals = [(f, rec.one("final", f)) for f in rec.families]
    for f, run in finals:
        if run is None and rec.expects("final"):
            report.missing.append(f"{f}: no final run yet (Table 4.4, Figures 4.3-4.7)")
        elif run is not None and "final_evaluated" not in run.data.metrics:
            report.missing.append(f"{f}: the final run has not been evaluated yet (status {run.info.status})")
    finals = [(f, r) for f, r in finals if r is not None]
    if not finals:
        return None
    seeds = {f: finals_by_seed(rec, f) for f, _ in finals}
    final_columns = [Column.of_seeds(f"{f} final", [_prefixed(r, "final_") for r in seeds[f].values()] or [values],
                                     values, Record.unavailable(run), study.TABLE_4_4.get(f, {}))
                     for f, run in finals for values in [_prefixed(run, "final_")]]
    t = metric_table("4.4", "the final models on the final sample set, beside the reference rows",
                     final_columns + columns, FINAL_KEYS)
    for f, run in finals:
        tags, p = run.data.tags, run.data.params
        t.notes.append(f"{f} final: {run_label(run)}, {p.get('train.epochs', '?')} epochs, guidance "
                       f"{tags.get(f'{TAG_PREFIX}final_guidance_scale', '?')}, "
                       f"{tags.get(f'{TAG_PREFIX}final_samples', '?')} samples, "
                       f"{tags.get(f'{TAG_PREFIX}registered_model', 'not registered')}, status {run.info.status}")
        if len(seeds[f]) > 1:
            t.notes.append(f"{f} final: the mean over the final runs of seeds {', '.join(map(str, seeds[f]))} (the "
                           "same configuration and final sample set), spread = max - min over the seeds; the "
                           f"registered model and the figures are seed {p.get('train.seed', '?')}'s")
    t.notes.append("study values: Cuadro 4.4 (§4.3): 15 epochs, 100 samples; reference columns: Cuadro 3.1")
    if "ddpm" in rec.families:
        t.notes.append(study.DDPM_FINAL_ACC_NOTE)
    return t


def finals_section(rec: Record, report: Report, columns: list[Column]) -> Blocks:
    """Table 4.4, then Figures 4.3 / 4.4 (final samples), C (confusion), 4.5 (attributes), 4.6 and 4.7."""
    t = finals_table(rec, report, columns)
    out: Blocks = [("table", t) if t else ("p", "No final run is recorded yet.")]
    out += [("figure", fig) for fig in figures.final_samples(rec)]
    return out + [("figure", figures.confusion_figure(rec)), ("figure", figures.attributes_figure(rec, report)),
                  ("figure", figures.loss_figure(rec, report)), ("figure", figures.epochs_figure(rec))]


def _phase_rows(rec: Record, report: Report, phase: str, rows_of: Callable[[Any], list[dict[str, Any]]],
                missing: str, empty: str) -> Iterator[tuple[str, Any, list[dict[str, Any]]]]:
    """(family, run, rows) of each family's run of a phase after the final run; what is not there yet is listed."""
    for f in rec.families:
        run = rec.one(phase, f)
        rows = rows_of(run) if run is not None else []
        if run is None and rec.expects(phase):
            report.missing.append(f"{f}: {missing}")
        elif run is not None and not rows:
            report.missing.append(f"{f}: {empty} (status {run.info.status})")
        elif rows:
            yield f, run, rows


def guidance_section(rec: Record, report: Report) -> Blocks:
    """Figure 4.8 (every family's CFG curve), then each family's table of scales."""
    from orchestration.phases.guidance import quality_metric

    tables: Blocks = []
    curves = {}
    for f, run, rows in _phase_rows(rec, report, "cfg", rec.scale_rows, "no CFG sweep yet (Figure 4.8)",
                                    "the CFG sweep logged no scale yet"):
        curves[f] = rows
        front = {float(s) for s in run.data.tags.get(f"{TAG_PREFIX}pareto_scales", "").split(",") if s}
        title = (f"{f} guidance-scale sweep ({run.data.params.get('cfg_samples', '?')} samples per scale; * = on the "
                 "Pareto front by plain estimator accuracy)")
        tables.append(("table", cfg_table(f"4.8-{f}", title, rows, quality_metric(rows), front,
                                          Record.unavailable(run))))
    return ([("figure", figures.pareto_figure(curves))] if curves else []) + tables


def samplers_section(rec: Record, report: Report) -> Blocks:
    """Each family's table and plot of the sampler phase."""
    from orchestration.phases.guidance import quality_metric

    out: Blocks = []
    for f, run, rows in _phase_rows(rec, report, "samplers", rec.sampler_rows, "no sampler phase yet",
                                    "the sampler phase logged no setting yet"):
        quality = quality_metric(rows)
        p = run.data.params
        title = (f"{f}: the final model under each sampler and step count ({p.get('samples', '?')} samples each, "
                 f"guidance {p.get('guidance_scale', '?')}; the study's future work, §5)")
        out += [("table", sampler_table(f"S-{f}", title, rows, quality, Record.unavailable(run))),
                ("figure", figures.sampler_figure(f, rows, quality))]
    return out


def provenance_section(rec: Record, report: Report) -> Blocks:
    rows = sorted((k[len(PROVENANCE):], v) for k, v in rec.tags.items() if k.startswith(PROVENANCE))
    if not rows:
        report.missing.append("provenance: not recorded by this sweep")
        return [("p", "This sweep recorded no provenance (condface.provenance.* tags: sweeps before they existed).")]
    return [("table", Table("P", "what produced this sweep (the parent run's condface.provenance.* tags)",
                            ["", "value"], [[label(k), label(v)] for k, v in rows]))]


# --- the whole report -----------------------------------------------------------------------------
def introduction(rec: Record) -> list[str]:
    p, run = rec.params, rec.parent
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((run.info.start_time or 0) / 1000))
    wall = run.data.metrics.get("wall_seconds")
    intro = [f"Experiment {rec.experiment.name}, sweep {run.info.run_name} (parent run {run.info.run_id}), status "
             f"{run.info.status}, started {started}" + (f", {wall:.0f} s" if finite(wall) else "") + ".",
             f"Families: {', '.join(rec.families) or '?'}; preset {p.get('preset', '?')}; data {p.get('data', '?')} at "
             f"{p.get('image_size', '?')} px; grid trials of {p.get('epochs', '?')} epochs, final runs of "
             f"{p.get('final_epochs', '?')} epochs; ranked by "
             f"{rec.tags.get(f'{TAG_PREFIX}select_metric', p.get('select_metric', '?'))}; sampler "
             f"{p.get('sampler', '?')} with {p.get('sampling_steps', '?')} steps (0 = the whole chain).",
             f"Read from the MLflow store {redact_uri(rec.uri)} only: no model was loaded and nothing was recomputed. Each cell "
             "shows the value, its sample count (n) and, in brackets, the study's published value "
             f"(from {study.SOURCE}); FID needs Inception weights: where it is unavailable, "
             f"{FID_STAND_IN} (the same Frechet distance on the attribute estimator's features) stands in, and the "
             "two are not comparable in scale."]
    if run.info.status == "RUNNING":
        intro.insert(0, "This sweep is still running: the report shows what it has logged so far.")
    elif run.info.status != "FINISHED":
        intro.insert(0, f"This sweep ended {run.info.status}: "
                        f"{run.data.tags.get(f'{TAG_PREFIX}end_reason', 'no reason recorded')}.")
    return intro


def build(rec: Record) -> Report:
    """Every table, figure and note of the report, from the record; each section's figures placed by name."""
    from orchestration.tracking.checks import mlflow_ui_command

    report = Report(f"condface report: {rec.experiment.name}")
    report.extend([("p", line) for line in introduction(rec)])
    missing_at = len(report.blocks)
    columns = reference_columns(rec, report)
    report.add("h2", "Protocol (§3.5): the study's settings and this project's choices")
    report.extend(protocol_section(rec))
    report.add("h2", "The data (§3.3, §3.4)")
    report.extend([("figure", method_figures.dataset_figure(rec)), ("figure", method_figures.augmentation_figure(rec))])
    report.extend([("figure", f) for f in [vae_figure(rec)] if f is not None])  # 3.1: only where --tune-vae ran
    report.add("h2", "Reference rows (the study's §3.5)")
    report.extend(references_section(columns))
    report.add("figure", method_figures.reference_samples_figure(rec, report))
    report.add("h2", "The grids (§4.1, §4.2)")
    report.extend(grids_section(rec, report))
    report.add("h2", "The final models (§4.3)")
    report.extend(finals_section(rec, report, columns))
    report.add("h2", "Guidance scale (Figure 4.8)")
    report.extend(guidance_section(rec, report) or [("p", "No CFG sweep is recorded yet.")])
    report.add("h2", "Parameters (Figure 4.9)")
    report.extend(figures.params_section(rec, report))
    report.add("h2", "Super-resolution (Figure 4.10)")
    report.extend(superres_section(rec))
    samplers = samplers_section(rec, report)
    if samplers:
        report.add("h2", "Samplers (the study's future work, §5)")
        report.extend(samplers)
    report.add("h2", "The study's conclusions, checked (§4.3, §5)")
    report.extend(conclusions_section(rec))
    report.add("h2", "Appendix: provenance")
    report.extend(provenance_section(rec, report))
    report.add("p", f"Open the record: {mlflow_ui_command(rec.uri)} -> experiment {rec.experiment.name}, run "
                    f"{rec.parent.info.run_id}.")
    report.missing = list(dict.fromkeys(report.missing))  # right after the introduction, deduplicated, in order
    report.blocks.insert(missing_at, ("list", ["What this record lacks: " + m for m in report.missing]
                                      or ["Nothing expected is missing from this record."]))
    return report


# --- writing --------------------------------------------------------------------------------------
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


__all__ = ["build", "write_report", "report_sweep"]
