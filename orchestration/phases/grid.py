"""The grid phase: the study's grid (or an Optuna search) of one family as a Ray Tune experiment, ranked by the
selection metric; its best configuration goes on to the final phase."""

from __future__ import annotations

from typing import Any

from data.catalogue import FID_STAND_IN, TAG_PREFIX, better, finite
from orchestration.config import SweepConfig
from orchestration.errors import SweepError
from orchestration.grid import TrialSpec, num_trials, param_space, trial_label
from orchestration.phases.tune import make_callback, run_phase, trial_history
from orchestration.resources import plan_resources
from orchestration.trainable import TrialContext


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


def _context(sweep, cfg: SweepConfig, phase: str, metric: str) -> TrialContext:
    return TrialContext(sweep=cfg, phase=phase, data_root=sweep.data_root, epochs=cfg.epochs,
                        epoch_images=cfg.epoch_images, pool=sweep.pool,
                        marker_dir=str(sweep.state.root / "injected-failures"), metric=metric)


def _records(results, cfg: SweepConfig) -> list[dict[str, Any]]:
    out = []
    for r in results:
        spec = TrialSpec.from_params(r.config).resolved(cfg)
        error = str(r.error).strip().splitlines()[-1][:200] if r.error else None
        last = r.metrics or {}
        if last.get("diverged"):
            error = str(last.get("diverged_reason", "diverged"))[:300]
        out.append({"label": trial_label(spec, cfg), "history": trial_history(r), "error": error,
                    "params": spec.params()})
    return out


def grid_phase(continuing: bool, sweep, cfg: SweepConfig, tags: dict[str, str]) -> dict[str, Any]:
    from orchestration.summary import grid_table

    metric = effective_metric(cfg, sweep.eval_config)
    mode = better(metric)
    sweep.tracker.set_tags(sweep.parent, {f"{TAG_PREFIX}select_metric": metric})
    ctx = _context(sweep, cfg, "grid", metric)
    print(f"\n== {cfg.model} {cfg.search} phase: {num_trials(cfg)} trials x {cfg.epochs} epochs, ranked by "
          f"{metric} ==", flush=True)
    callback = make_callback(ctx, sweep.tracker.uri, sweep.parent, tags, metric, total=num_trials(cfg))
    root = sweep.state.dir(cfg.model)
    results = run_phase(ctx, root, "grid", param_space(cfg), plan_resources(cfg).grid, metric, mode, callback,
                        num_samples=1 if cfg.search == "grid" else cfg.num_samples, search=cfg.search,
                        scheduler=cfg.scheduler, max_concurrent=cfg.max_concurrent, resume=continuing)
    records = _records(results, cfg)
    ok = [r for r in results if r.error is None and r.metrics and finite(r.metrics.get(metric))]
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
    table_no = {"ddpm": "4.1", "sd-lora": "4.3"}.get(cfg.model, f"G-{cfg.model}")
    print("\n" + grid_table(records, unavailable, f"{cfg.model} {title}: {len(records)} trials x {cfg.epochs} "
                                                  f"epochs, best of each metric (the study's Table {table_no} layout)"),
          flush=True)
    return {"best": best_spec.params(), "best_label": label, "metric": metric, "records": records,
            "unavailable": unavailable}

