"""The terminal summary, in the study's layout, and where to look next.

Table 4.1/4.3 layout (grid): for each metric, the best value any trial reached (at any epoch) and the
configuration that reached it. Table 3.1 layout: every reference row. Table 4.4 layout (final): each
final model on the final sample set beside the reference rows (untrained DDPM, SD base without LoRA,
ground truth). Then the CFG sweeps, and the commands to open the MLflow UI and the Ray dashboard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from data.catalogue import CHAMPION_ALIAS, METRICS

# The study's metrics in its tables' order, with how to print them.
ROWS = [
    ("fid", "FID", "{:.2f}"),
    ("fd_estimator", "FD (estimator, FID stand-in)", "{:.3f}"),
    ("mtcnn", "MTCNN %", "{:.2f}"),
    ("clip_score", "CLIP-S", "{:.2f}"),
    ("est_acc", "estimator accuracy", "{:.2%}"),
    ("est_acc_balanced", "estimator accuracy (balanced)", "{:.2%}"),
    ("val_loss", "held-out denoising loss", "{:.4f}"),
]


@dataclass
class TrialRecord:
    label: str
    history: list[dict[str, Any]]  # one dict per reported epoch
    error: str | None = None


def _fmt(key: str, value: float | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def best_of_grid(trials: list[TrialRecord]) -> dict[str, tuple[float, str, int]]:
    """metric -> (best value, configuration label, epoch)."""
    best: dict[str, tuple[float, str, int]] = {}
    for t in trials:
        for row in t.history:
            for key, _, _ in ROWS:
                v = row.get(key)
                if not isinstance(v, (int, float)) or math.isnan(v):
                    continue
                mode = METRICS[key].better if key in METRICS else "max"
                cur = best.get(key)
                if cur is None or (v < cur[0] if mode == "min" else v > cur[0]):
                    best[key] = (float(v), t.label, int(row.get("epoch", 0)))
    return best


def grid_table(trials: list[TrialRecord], unavailable: dict[str, str], title: str) -> str:
    best = best_of_grid(trials)
    lines = [title, f"{'metric':<32}{'best':>10}   configuration (epoch)", "-" * 78]
    for key, name, fmt in ROWS:
        if key in best:
            v, label, epoch = best[key]
            lines.append(f"{name:<32}{_fmt(key, v, fmt):>10}   {label} ({epoch})")
        elif key in unavailable:
            lines.append(f"{name:<32}{'n/a':>10}   unavailable: {unavailable[key]}")
    failed = [t for t in trials if t.error]
    if failed:
        lines.append(f"{len(failed)} trial(s) failed: " + "; ".join(f"{t.label}: {t.error}" for t in failed))
    return "\n".join(lines)


def reference_label(row: str, model: str) -> str:
    """The study's name for a reference row: for sd-lora the "untrained" row is the base without LoRA."""
    if row == "untrained":
        return "SD base (no LoRA)" if model == "sd-lora" else "untrained DDPM"
    return row


def final_table(finals: dict[str, dict[str, float]], final_unavailable: dict[str, str],
                references: dict[str, dict[str, float]], title: str) -> str:
    """Columns: each final model (label -> metrics), then each reference row (label -> metrics)."""
    columns = {**finals, **references}
    cols = list(columns)
    width = max(16, *(len(c) + 2 for c in cols))
    lines = [title, f"{'metric':<32}" + "".join(f"{c:>{width}}" for c in cols), "-" * (32 + width * len(cols))]
    for key, name, fmt in ROWS:
        if key == "val_loss":
            continue
        values = [col.get(key) for col in columns.values()]
        if all(v is None for v in values):
            if key in final_unavailable:
                lines.append(f"{name:<32}{'n/a':>{width}}   unavailable: {final_unavailable[key]}")
            continue
        lines.append(f"{name:<32}" + "".join(f"{_fmt(key, v, fmt):>{width}}" for v in values))
    return "\n".join(lines)


def cfg_table(rows: list[dict], quality: str, front: list[float]) -> str:
    lines = [f"{'guidance':>8}  {quality:>14}  {'est_acc':>8}  {'balanced':>8}  pareto"]
    for r in rows:
        v = r["values"]
        lines.append(f"{r['guidance_scale']:>8g}  {_fmt(quality, v.get(quality), '{:.3f}'):>14}  "
                     f"{_fmt('a', v.get('est_acc'), '{:.2%}'):>8}  "
                     f"{_fmt('b', v.get('est_acc_balanced'), '{:.2%}'):>8}  "
                     f"{'*' if r['guidance_scale'] in front else ''}")
    return "\n".join(lines)


def where_to_look(ui_command: str, experiment: str, parent_run_id: str, storage: str, dashboard_url: str | None,
                  models: dict[str, str], local_ray: bool) -> str:
    lines = [
        "Where to look:",
        f"  MLflow UI:      {ui_command}",
        f"                  then open http://127.0.0.1:5000 -> experiment {experiment!r}, parent run {parent_run_id}",
        f"  Ray results:    {storage}",
    ]
    for model_uri in models.values():
        alias = f"{model_uri.rsplit('/', 1)[0]}@{CHAMPION_ALIAS}"
        lines.append(f"  Registered:     {model_uri} (the newest final model is {alias}); draw faces: python -m "
                     f"models.generate --model {model_uri} --out faces.png; or mlflow.pyfunc.load_model(uri), "
                     "mlflow models serve -m URI --env-manager local")
    if dashboard_url:
        alive = " (alive while a sweep runs; the local runtime stops with it)" if local_ray else ""
        lines.append(f"  Ray dashboard:  http://{dashboard_url}{alive}")
        lines.append("                  Ray 2.60 protects it with a token: `ray get-auth-token` prints it (local "
                     "runtimes write it to ~/.ray/auth_token); paste it into the dashboard's login, or send "
                     "`Authorization: Bearer <token>` to its API")
    return "\n".join(lines)
