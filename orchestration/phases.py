"""The sweep's phases, each a unit with a JSON result recorded in `sweep.json` (see orchestration.driver).

    references/real        ground truth + real held-out rows (shared by every family)
    <family>/reference     the family's untrained row (sd-lora: the base without LoRA)
    <family>/grid          the study's grid (or Optuna) as a Ray Tune experiment
    <family>/final         the best configuration retrained, evaluated once, registered once
    <family>/cfg           the guidance-scale sweep and its Pareto plot
    <family>/samplers      (--sampler-phase) the final model under every sampler x step count
"""

from __future__ import annotations

import dataclasses
from typing import Any

from orchestration.config import FID_STAND_IN, METRIC_MODES, SweepConfig
from orchestration.errors import SweepError
from orchestration.grid import TrialSpec, num_trials, param_space, trial_label
from orchestration.resources import plan_resources
from orchestration.tracking import TAG_PREFIX
from orchestration.trainable import TrialContext
from orchestration.tune_phase import make_callback, run_phase


def effective_metric(cfg: SweepConfig, eval_config) -> str:
    """FID when its Inception weights are here, else its stand-in (the reason is printed and tagged)."""
    from evaluation.metrics.fid import find_inception

    if cfg.select_metric != "fid":
        return cfg.select_metric
    weights, reason = find_inception(eval_config.inception_weights)
    if weights is None:
        print(f"FID is unavailable ({reason}); ranking by {FID_STAND_IN} instead", flush=True)
        return FID_STAND_IN
    return "fid"


# --------------------------------------------------------------------------------------------------
# Reference rows
# --------------------------------------------------------------------------------------------------
def _cached_rows(sweep, key: str, name: str, params: dict[str, Any], tags: dict[str, str], compute) -> dict:
    """A reference run keyed by everything its rows depend on: reused when an identical one FINISHED before."""
    tracker = sweep.tracker
    existing = tracker.find_run(key)
    if existing is not None and tracker.status(existing) == "FINISHED":
        # the parent names the rows it uses (a reused run's parent is the sweep that computed it): for the report
        tracker.set_tags(sweep.parent, {f"{TAG_PREFIX}reference_run.{tags[f'{TAG_PREFIX}family']}": existing})
        rows: dict[str, dict[str, float]] = {}
        for k, v in tracker.client.get_run(existing).data.metrics.items():
            row, _, metric = k.partition(".")
            rows.setdefault(row, {})[metric] = v
        return rows
    run_id = tracker.open_run(key, name, sweep.parent, tags={**tags, f"{TAG_PREFIX}phase": "reference"},
                              params=params)
    tracker.set_tags(sweep.parent, {f"{TAG_PREFIX}reference_run.{tags[f'{TAG_PREFIX}family']}": run_id})
    try:
        rows, unavailable = compute()
        for row, values in rows.items():
            tracker.log_metrics(run_id, {f"{row}.{k}": v for k, v in values.items()})
        tracker.log_unavailable(run_id, unavailable)
        tracker.finish(run_id, ok=True)
    except BaseException as err:
        tracker.finish(run_id, ok=False, reason=f"{type(err).__name__}: {err}")
        raise
    return rows


def _eval_key(sweep) -> dict[str, Any]:
    e = sweep.eval_config
    return {"estimator": e.estimator, "inception_weights": e.inception_weights, "clip_model": e.clip_model,
            "mtcnn": e.mtcnn, "data_root": sweep.data_root, "data": sweep.cfg.data,
            "image_size": sweep.cfg.image_size, "samples": sweep.cfg.final_samples, "seed": sweep.cfg.seed}


def _digest(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def real_references(continuing: bool, sweep) -> dict[str, dict[str, float]]:
    """Ground truth and real held-out rows: the same real images for every family. Also logs, once, the real
    images of the per-epoch, final and attribute-grid conditions to the parent run (real/, for the report)."""
    from orchestration.real_images import log_real_grids
    from orchestration.references import compute_references

    cfg = sweep.cfg
    log_real_grids(sweep.tracker, sweep.parent, sweep.data_root, cfg.eval_samples, cfg.final_samples, cfg.seed)
    depends = _eval_key(sweep)
    return _cached_rows(
        sweep, f"reference/real/{_digest(depends)}", f"reference: real images ({sweep.cfg.final_samples})",
        {f"ref.{k}": v for k, v in depends.items()}, {f"{TAG_PREFIX}family": "real"},
        lambda: compute_references(sweep.cfg, sweep.data_root, sweep.eval_config, plan_resources(sweep.cfg).lone,
                                   rows=("ground_truth", "real_held_out")))


def family_reference(continuing: bool, sweep, cfg: SweepConfig, tags: dict[str, str]) -> dict[str, float]:
    """The family's untrained row, keyed by the model config (incl. --pretrained), sampler, steps, guidance, and
    the evaluation settings: a row from another base or sampler is never reused."""
    from orchestration.grid import grid_trials
    from orchestration.references import compute_references
    from orchestration.trainable import model_config

    depends = {**_eval_key(sweep), "model": cfg.model,
               "model_config": dataclasses.asdict(model_config(cfg, grid_trials(cfg)[0])), "sampler": cfg.sampler,
               "sampling_steps": cfg.sampling_steps, "ddpm_variance": cfg.ddpm_variance,
               "sampling_precision": cfg.sampling_precision,
               "guidance_scale": cfg.guidance_scale}
    label = "SD base without LoRA" if cfg.model == "sd-lora" else "untrained DDPM"
    rows = _cached_rows(
        sweep, f"reference/{cfg.model}/{_digest(depends)}", f"reference: {label} ({cfg.final_samples})",
        {f"ref.{k}": v for k, v in depends.items()}, tags,
        lambda: compute_references(cfg, sweep.data_root, sweep.eval_config, plan_resources(cfg).lone,
                                   rows=("untrained",)))
    return rows.get("untrained", {})


# --------------------------------------------------------------------------------------------------
# One family: reference -> grid -> final -> cfg [-> samplers]
# --------------------------------------------------------------------------------------------------
def run_family(sweep, family: str, tags: dict[str, str], real: dict) -> dict[str, Any]:
    cfg = sweep.cfg.for_family(family)
    out: dict[str, Any] = {"family": family}
    out["reference"] = sweep.phase(f"{family}/reference", family_reference, sweep, cfg, tags)
    out["grid"] = sweep.phase(f"{family}/grid", grid_phase, sweep, cfg, tags)
    best = TrialSpec.from_params(out["grid"]["best"]).resolved(cfg)
    print(f"\n{family}: best configuration by {out['grid']['metric']}: {out['grid']['best_label']}", flush=True)
    if cfg.final_epochs > 0:
        from orchestration.cfg_sweep import run_cfg_sweep
        from orchestration.final import run_final

        out["final"] = sweep.phase(f"{family}/final", run_final, sweep, cfg, best, tags, out["grid"]["metric"])
        out["cfg"] = sweep.phase(f"{family}/cfg", run_cfg_sweep, sweep, cfg, out["final"], tags)
        if cfg.sampler_phase:
            from orchestration.sampler_phase import run_sampler_phase

            out["samplers"] = sweep.phase(f"{family}/samplers", run_sampler_phase, sweep, cfg, out["final"], tags)
    return out


def _context(sweep, cfg: SweepConfig, phase: str, metric: str) -> TrialContext:
    return TrialContext(sweep=cfg, phase=phase, data_root=sweep.data_root, epochs=cfg.epochs,
                        epoch_images=cfg.epoch_images, pool=sweep.pool,
                        marker_dir=str(sweep.state.root / "injected-failures"), metric=metric)


def _records(results, cfg: SweepConfig) -> list[dict[str, Any]]:
    out = []
    for r in results:
        spec = TrialSpec.from_params(r.config).resolved(cfg)
        history = r.metrics_dataframe.to_dict("records") if r.metrics_dataframe is not None else []
        history = [{k: v for k, v in row.items() if isinstance(v, (int, float, str)) and k != "unavailable"}
                   for row in history]
        error = str(r.error).strip().splitlines()[-1][:200] if r.error else None
        last = r.metrics or {}
        if last.get("diverged"):
            error = str(last.get("diverged_reason", "diverged"))[:300]
        out.append({"label": trial_label(spec, cfg), "history": history, "error": error,
                    "params": spec.params()})
    return out


def grid_phase(continuing: bool, sweep, cfg: SweepConfig, tags: dict[str, str]) -> dict[str, Any]:
    from orchestration.summary import grid_table

    metric = effective_metric(cfg, sweep.eval_config)
    mode = METRIC_MODES[metric]
    sweep.tracker.set_tags(sweep.parent, {f"{TAG_PREFIX}select_metric": metric})
    ctx = _context(sweep, cfg, "grid", metric)
    print(f"\n== {cfg.model} {cfg.search} phase: {num_trials(cfg)} trials x {cfg.epochs} epochs, ranked by "
          f"{metric} ==", flush=True)
    callback = make_callback(ctx, sweep.tracker.uri, sweep.parent, tags, metric, mode, total=num_trials(cfg))
    root = sweep.state.dir(cfg.model)
    results = run_phase(ctx, root, "grid", param_space(cfg), plan_resources(cfg).grid, metric, mode, callback,
                        num_samples=1 if cfg.search == "grid" else cfg.num_samples, search=cfg.search,
                        scheduler=cfg.scheduler, max_concurrent=cfg.max_concurrent, resume=continuing)
    records = _records(results, cfg)
    ok = [r for r in results if r.error is None and r.metrics and _finite(r.metrics.get(metric))]
    if not ok:
        first = next((r["error"] for r in records if r["error"]), "no trial reported the selection metric")
        raise SweepError(f"every {cfg.model} {cfg.search} trial failed (first: {first}): see the error files under "
                         f"{root / 'grid'}")
    best = results.get_best_result(metric, mode, scope="last", filter_nan_and_inf=True)
    best_spec = TrialSpec.from_params(best.config).resolved(cfg)
    label = trial_label(best_spec, cfg)
    sweep.tracker.set_tags(sweep.parent, {f"{TAG_PREFIX}best_config.{cfg.model}": label})
    unavailable = {}
    for r in results:
        if r.metrics and isinstance(r.metrics.get("unavailable"), dict):
            unavailable = dict(r.metrics["unavailable"])
            break
    title = "Grid" if cfg.search == "grid" else f"Optuna search ({cfg.scheduler})"
    table_no = "4.1" if cfg.model == "ddpm" else "4.3"
    print("\n" + grid_table(records, unavailable, f"{cfg.model} {title}: {len(records)} trials x {cfg.epochs} "
                                                  f"epochs, best of each metric (the study's Table {table_no} layout)"),
          flush=True)
    return {"best": best_spec.params(), "best_label": label, "metric": metric, "records": records,
            "unavailable": unavailable}


def _finite(v) -> bool:
    import math

    return isinstance(v, (int, float)) and math.isfinite(v)


# --------------------------------------------------------------------------------------------------
# The end of a sweep
# --------------------------------------------------------------------------------------------------
def joint_pareto(sweep, families: dict[str, dict]) -> str | None:
    """Both families' CFG curves on the same axes, logged to the parent run."""
    from orchestration.cfg_sweep import plot_pareto

    curves = {f: r["cfg"]["rows"] for f, r in families.items() if r.get("cfg")}
    if len(curves) < 2:
        return None
    png = plot_pareto(curves, "guidance scale sweep: both families", sweep.state.root / "cfg_pareto_joint.png")
    sweep.tracker.log_artifact(sweep.parent, png, "cfg")
    sweep.tracker.log_json(sweep.parent, curves, "cfg/cfg_pareto_joint.json")  # the plotted points, per family
    return str(png)


def summary(sweep, families: dict[str, dict], real: dict) -> str:
    """Table 3.1 (every reference row) and Table 4.4 (the final models beside the reference rows)."""
    from orchestration.report.tables import reference_label
    from orchestration.summary import cfg_table, final_table

    cfg = sweep.cfg
    blocks = []
    refs = {reference_label("untrained", f): r["reference"] for f, r in families.items()}
    refs.update(real)
    blocks.append(final_table({}, {}, refs, "Reference rows (the study's Table 3.1 layout), "
                                            f"{cfg.final_samples} samples"))
    finals = {f"{f} (final)": r["final"]["values"] for f, r in families.items() if r.get("final")}
    if finals:
        unavailable: dict[str, str] = {}
        for r in families.values():
            if r.get("final"):
                unavailable.update(r["final"]["unavailable"])
        labels = ", ".join(f"{f}: {r['final']['label']} x {cfg.final_epochs} epochs at guidance "
                           f"{r['final']['guidance_scale']:g}" for f, r in families.items() if r.get("final"))
        blocks.append(final_table(finals, unavailable, refs, f"Final models ({labels}; {cfg.final_samples} samples; "
                                                             "the study's Table 4.4 layout)"))
    for f, r in families.items():
        fin = r.get("final")
        acc = fin["values"].get("est_acc_balanced") if fin else None
        ref = r["reference"].get("est_acc_balanced")
        if acc is not None and ref:
            against = "the base without LoRA" if f == "sd-lora" else "the untrained model"
            blocks.append(f"{f} conditioning: class-balanced estimator accuracy {acc:.1%} on generated images vs "
                          f"{ref:.1%} for {against} ({acc / ref:.1f}x; chance is {1 / 6:.1%})")
        if r.get("cfg"):
            c = r["cfg"]
            blocks.append(f"{f} CFG sweep ({cfg.cfg_samples} samples per scale; * = on the Pareto front; plot "
                          f"{c['png']}):\n" + cfg_table(c["rows"], c["quality_metric"], c["front"]))
        if r.get("samplers"):
            from orchestration.sampler_phase import sampler_table

            blocks.append(f"{f} samplers ({cfg.sampler_samples} samples each; plot {r['samplers']['png']}):\n"
                          + sampler_table(r["samplers"]["rows"], r["samplers"]["quality_metric"]))
    return "\n\n".join(blocks)


__all__ = ["run_family", "real_references", "family_reference", "grid_phase", "joint_pareto", "summary",
           "effective_metric"]
