"""What a continued sampling phase reads back from MLflow instead of sampling again.

The final evaluation, the CFG sweep and the sampler phase log each setting as one step of their run, all of its
metrics in one batch with the step metric that marks it logged (`Tracker.log_metrics`). A phase cut short and
continued takes the settings MLflow already holds from there and samples only the others: sampling again would
give a second truth on GPUs that are not deterministic (MLflow keeps the first values, each step logged once), so
`sweep.json`, the summary and the figures use the values MLflow holds.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from data.catalogue import TAG_PREFIX
from orchestration.tracking.client import Tracker

UNAVAILABLE_PREFIX = f"{TAG_PREFIX}unavailable."
COUNT_SUFFIXES = ("_n", "_n_real")  # the scorers' sample counts (fid_n, fid_n_real, est_acc_n, ...)


def split_counts(metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, int]]:
    """(values, counts) of a step's metrics, as `Scored.record()` keeps them."""
    values = {k: v for k, v in metrics.items() if not k.endswith(COUNT_SUFFIXES)}
    counts = {k: int(v) for k, v in metrics.items() if k.endswith(COUNT_SUFFIXES)}
    return values, counts


def unavailable_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k[len(UNAVAILABLE_PREFIX):]: v for k, v in tags.items() if k.startswith(UNAVAILABLE_PREFIX)}


def recorded_rows(tracker: Tracker, run_id: str, settings: list[tuple[str, int, float]], step_metric: str,
                  extras: dict[str, str]) -> dict[int, dict[str, Any]]:
    """Setting index -> its row (the `Scored.record()` shape) for every setting whose step `step_metric` the run
    has. `extras` maps the step's other metrics back to row fields (e.g. nfe -> steps)."""
    done = {i for i in tracker.logged_steps(run_id, step_metric) if 0 <= i < len(settings)}
    if not done:
        return {}
    run = tracker.client.get_run(run_id)
    at: dict[int, dict[str, float]] = {i: {} for i in done}
    for key in run.data.metrics:
        if key != step_metric:
            for m in tracker.client.get_metric_history(run_id, key):
                if m.step in at:
                    at[m.step][key] = m.value
    unavailable = unavailable_tags(run.data.tags)
    rows = {}
    for i in sorted(done):
        sampler, steps, scale = settings[i]
        metrics = dict(at[i])
        fields = {field: metrics.pop(metric) for metric, field in extras.items() if metric in metrics}
        values, counts = split_counts(metrics)
        rows[i] = {"guidance_scale": float(scale), "values": values, "unavailable": dict(unavailable),
                   "counts": counts, "sampler": sampler, "steps": int(fields.pop("steps", steps)),
                   "seconds": fields.pop("seconds", None), **fields}
    return rows


def recorded_final_evaluation(tracker: Tracker, run_id: str, prefix: str, step_metric: str,
                              confusion_path: str) -> dict[str, Any]:
    """The final evaluation a run already holds: its `<prefix><metric>` values and counts (logged once, with
    `step_metric`), the metrics it could not compute (tags) and its confusion matrices (the artifact at
    `confusion_path`, when the estimator scored)."""
    run = tracker.client.get_run(run_id)
    metrics = {k[len(prefix):]: v for k, v in run.data.metrics.items() if k.startswith(prefix) and k != step_metric}
    values, counts = split_counts(metrics)
    folder = confusion_path.rpartition("/")[0]
    confusion = None
    if any(f.path == confusion_path for f in tracker.client.list_artifacts(run_id, folder)):
        with tempfile.TemporaryDirectory() as tmp:
            confusion = json.loads(Path(tracker.client.download_artifacts(run_id, confusion_path, tmp)).read_text())
    return {"values": values, "counts": counts, "unavailable": unavailable_tags(run.data.tags),
            "confusion": confusion}


__all__ = ["recorded_rows", "recorded_final_evaluation", "split_counts"]
