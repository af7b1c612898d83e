"""The terminal summary, in the study's layout, and where to look next.

Table 4.1/4.3 layout (grid): for each metric, the best value any trial reached (at any epoch) and the
configuration that reached it. Table 3.1 layout: every reference row. Table 4.4 layout (final): each
final model on the final sample set beside the reference rows (untrained DDPM, SD base without LoRA,
ground truth). Then the CFG sweeps, and the commands to open the MLflow UI and the Ray dashboard.
The tables are the report's (`orchestration.report.tables`), printed as plain text.
"""

from __future__ import annotations

from typing import Any

from data.catalogue import CHAMPION_ALIAS
from orchestration.report import tables
from orchestration.report.tables import Column, Trial


def grid_table(records: list[dict[str, Any]], unavailable: dict[str, str], title: str) -> str:
    """records: the grid phase's trials ({"label", "history": one dict per reported epoch, "error"})."""
    trials = [Trial.from_history(r["label"], r["history"], r.get("error")) for r in records]
    return tables.grid_table("grid", title, trials, unavailable).text(title)


def seed_values(final: dict[str, Any]) -> list[dict[str, float]]:
    """A final phase's result: the values of each seed's run (one per seed; a sweep recorded before seeds: one)."""
    return [s["values"] for s in final.get("seeds") or [final]]


def final_table(finals: dict[str, list[dict[str, float]]], final_unavailable: dict[str, str],
                references: dict[str, dict[str, float]], title: str) -> str:
    """Columns: each final model (label -> the metrics of each of its seeds: with several, their mean and spread),
    then each reference row (label -> metrics)."""
    columns = [Column.of_seeds(name, per_seed, unavailable=final_unavailable) for name, per_seed in finals.items()]
    columns += [Column(name, values) for name, values in references.items()]
    return tables.metric_table("final", title, columns).text(title)


def cfg_table(rows: list[dict[str, Any]], quality: str, front: list[float]) -> str:
    """rows: the CFG sweep's `Scored.record()` dicts, one per guidance scale."""
    unavailable = rows[0].get("unavailable") or {} if rows else {}
    return tables.cfg_table("cfg", "", rows, quality, front, unavailable).text()


def sampler_table(rows: list[dict[str, Any]], quality: str) -> str:
    """rows: the sampler phase's `Scored.record()` dicts, one per (sampler, steps)."""
    unavailable = rows[0].get("unavailable") or {} if rows else {}
    return tables.sampler_table("samplers", "", rows, quality, unavailable).text()


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
