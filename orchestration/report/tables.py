"""The one table builder: the study's tables as `Table`s, from plain values.

The report (`orchestration.report.build`, from the MLflow record) and the terminal summary
(`orchestration.summary`, from the phases' results) both build their tables here, so both show the same rows,
labels, formats and best values; the report renders them as HTML/Markdown, the summary as plain text.
Which value is best is the catalogue's direction (`data.catalogue.better`), with no default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from data.catalogue import ATTRIBUTE_ACCURACY_KEYS, FAMILY_INFO, SAMPLE_METRICS, finite, metric
from orchestration.report.document import Cell, Table, count_key, label, metric_label, metric_text, number

GRID_KEYS = (*SAMPLE_METRICS, "val_loss")  # Tables 4.1-4.3: the per-epoch metrics, the held-out loss last
FINAL_KEYS = (*SAMPLE_METRICS, *ATTRIBUTE_ACCURACY_KEYS)  # Table 4.4: the sample metrics, then each attribute
ACCURACIES = ("est_acc", "est_acc_balanced")


def reference_label(row: str, family: str) -> str:
    """The study's name for a reference row: a family's "untrained" row is its untrained model (for sd-lora: the
    base without LoRA)."""
    if row == "untrained":
        return FAMILY_INFO[family].untrained if family in FAMILY_INFO else f"untrained {family}"
    return row


@dataclass
class Trial:
    """One grid trial: its label, its metrics per epoch, and (for the report) its configuration's columns."""
    label: str
    series: Callable[[str], dict[int, float]]  # metric key -> {epoch: value}
    error: str | None = None
    axes: list[Cell] = field(default_factory=list)
    fixed_counts: dict[str, float] = field(default_factory=dict)  # counts that do not change per epoch

    @classmethod
    def from_history(cls, label: str, history: list[dict[str, Any]], error: str | None = None) -> Trial:
        """From one dict per reported epoch (Ray Tune's metrics rows)."""
        def series(key: str) -> dict[int, float]:
            return {int(row.get("epoch", 0)): row[key] for row in history if finite(row.get(key))}
        return cls(label, series, error)


def best_of(trials: Iterable[Trial], key: str) -> tuple[float, Trial, int, float | None] | None:
    """(best value at any epoch, its trial, its epoch, its sample count) over `trials`; ties keep the first."""
    m = metric(key)
    best: tuple[float, Trial, int] | None = None
    for trial in trials:
        for epoch, value in sorted(trial.series(key).items()):
            if finite(value) and (best is None or m.better_than(value, best[0])):
                best = (value, trial, epoch)
    if best is None:
        return None
    value, trial, epoch = best
    n = trial.series(count_key(key)).get(epoch, trial.fixed_counts.get(key))
    return value, trial, epoch, n


def grid_table(number_: str, title: str, trials: list[Trial], unavailable: dict[str, str],
               study: dict[str, tuple[float, str]] | None = None, axes: list[str] | None = None) -> Table:
    """Tables 4.1 / 4.3: each metric's best value at any epoch and the configuration that reached it."""
    axes = axes or []
    t = Table(number_, title, ["metric", "best", "configuration", *axes, "epoch"])
    for key in GRID_KEYS:
        found = best_of(trials, key)
        ref = (study or {}).get(key)
        if found is None:
            cell = t.value(key, None, None, ref[0] if ref else None, unavailable)
            if cell.kind == "missing" and ref is None:
                continue
            t.rows.append([metric_label(key), cell, label(f"study: {ref[1]}" if ref else "")]
                          + [label("")] * (len(axes) + 1))
            continue
        value, trial, epoch, n = found
        t.rows.append([metric_label(key), t.value(key, value, n, ref[0] if ref else None),
                       label(trial.label + (f" (study: {ref[1]})" if ref else ""))] + trial.axes
                      + [label(str(epoch))])
    t.notes += [f"failed: {trial.label}: {trial.error}" for trial in trials if trial.error]
    return t


def grouped_table(number_: str, title: str, groups: dict[str, list[Trial]], headers: list[str],
                  unavailable: dict[str, str], study: dict[str, dict[str, float]] | None = None) -> Table:
    """The best value of each metric within each group of grid trials (a channel set, an augmentation policy)."""
    t = Table(number_, title, ["metric", *headers])
    for key in GRID_KEYS:
        row = [metric_label(key)]
        for g, trials in groups.items():
            found = best_of(trials, key)
            theirs = (study or {}).get(g, {}).get(key)
            row.append(t.value(key, found[0] if found else None, found[3] if found else None, theirs, unavailable))
        if any(c.kind != "missing" or c.study for c in row[1:]):
            t.rows.append(row)
    return t


def over_seeds(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    """A final model trained with several seeds: each metric's mean over the seeds that have it, and its spread
    (max - min) where two or more have it."""
    mean, spread = {}, {}
    for key in sorted({k for values in per_seed for k in values}):
        got = [values[key] for values in per_seed if finite(values.get(key))]
        if got:
            mean[key] = sum(got) / len(got)
        if len(got) > 1:
            spread[key] = max(got) - min(got)
    return {"seeds": len(per_seed), "mean": mean, "spread": spread}


@dataclass
class Column:
    """One model's (or reference row's) values in Tables 3.1 / 4.4."""
    header: str
    values: dict[str, float]
    counts: dict[str, float] = field(default_factory=dict)  # count key -> n
    unavailable: dict[str, str] = field(default_factory=dict)
    study: dict[str, float] = field(default_factory=dict)
    samples: float | None = None  # the count of a value that has no count of its own
    spread: dict[str, float] = field(default_factory=dict)  # key -> max - min over the seeds of a final model

    @classmethod
    def of_seeds(cls, header: str, per_seed: list[dict[str, float]], counts: dict[str, float] | None = None,
                 unavailable: dict[str, str] | None = None, study: dict[str, float] | None = None) -> Column:
        """A final model's column: its one seed's values, or the mean over its seeds with each value's spread."""
        if len(per_seed) < 2:
            return cls(header, per_seed[0] if per_seed else {}, counts or {}, unavailable or {}, study or {})
        stats = over_seeds(per_seed)
        return cls(f"{header} (mean of {len(per_seed)} seeds)", stats["mean"], counts or {}, unavailable or {},
                   study or {}, spread=stats["spread"])


def metric_table(number_: str, title: str, columns: list[Column], keys: Iterable[str] = SAMPLE_METRICS) -> Table:
    """Tables 3.1 / 4.4: one row per metric, one column per model or reference row; a row nobody has is left out."""
    t = Table(number_, title, ["metric"] + [c.header for c in columns])
    for key in keys:
        row = [metric_label(key)] + [_spread(t.value(key, c.values.get(key), c.counts.get(count_key(key), c.samples),
                                                     c.study.get(key), c.unavailable), key, c) for c in columns]
        if any(c.kind != "missing" or c.study for c in row[1:]):
            t.rows.append(row)
    return t


def _spread(cell: Cell, key: str, column: Column) -> Cell:
    if cell.kind == "value" and finite(column.spread.get(key)):
        cell.text += f" (spread {metric_text(key, column.spread[key])})"
    return cell


def _scored(t: Table, row: dict[str, Any], keys: Iterable[str], unavailable: dict[str, str]) -> list[Cell]:
    counts = row.get("counts") or {}
    return [t.value(k, row["values"].get(k), counts.get(count_key(k)), None, unavailable) for k in keys]


def cfg_table(number_: str, title: str, rows: list[dict[str, Any]], quality: str, front: Iterable[float],
              unavailable: dict[str, str] | None = None) -> Table:
    """Figure 4.8's values: one row per guidance scale (rows: `Scored.record()` dicts); * = on the Pareto front."""
    front = set(front)
    t = Table(number_, title, ["guidance scale", quality, *ACCURACIES, "Pareto"])
    for r in rows:
        t.rows.append([label(f"{r['guidance_scale']:g}")] + _scored(t, r, (quality, *ACCURACIES), unavailable or {})
                      + [label("*" if r["guidance_scale"] in front else "")])
    return t


def sampler_table(number_: str, title: str, rows: list[dict[str, Any]], quality: str,
                  unavailable: dict[str, str] | None = None) -> Table:
    """The sampler phase: one row per (sampler, steps); NFE = steps for every sampler the phase runs."""
    t = Table(number_, title, ["sampler", "NFE (steps)", quality, *ACCURACIES, "seconds"])
    for r in rows:
        t.rows.append([label(r["sampler"]), label(str(r["steps"]))]
                      + _scored(t, r, (quality, *ACCURACIES), unavailable or {}) + [number(r.get("seconds"), "{:.2f}")])
    return t


__all__ = ["GRID_KEYS", "FINAL_KEYS", "reference_label", "Trial", "best_of", "grid_table", "grouped_table", "Column",
           "over_seeds", "metric_table", "cfg_table", "sampler_table"]
