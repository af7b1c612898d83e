"""The sweep's driver: Ray, data, estimator, evaluation actors, MLflow parent run, then the phases in order.

    grid (or Optuna) -> best configuration -> final run -> CFG sweep -> summary

Each finished phase is recorded in the sweep's `sweep.json`, so `--resume` skips it; a phase cut
short is continued (Tune phases with Tuner.restore, the others rerun). MLflow is written only here.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from pathlib import Path
from typing import Any

from orchestration.config import FID_STAND_IN, METRIC_MODES, SweepConfig
from orchestration.errors import SweepError
from orchestration.grid import TrialSpec, num_trials, param_space, trial_label, trial_table
from orchestration.state import SweepState
from orchestration.summary import TrialRecord, cfg_table, final_table, grid_table, where_to_look
from orchestration.tracking import TAG_PREFIX, Tracker, default_tracking_uri, mlflow_ui_command
from orchestration.trainable import TrialContext
from orchestration.tune_phase import make_callback, run_phase

# Settings that may differ when a sweep is resumed (where it runs, not what it computes).
RUNTIME_FIELDS = ("address", "gpus_per_trial", "max_concurrent", "resume", "dry_run")


def _terminate(signum, frame):
    raise KeyboardInterrupt


def start_ray(cfg: SweepConfig, dashboard: bool) -> dict[str, Any]:
    import ray

    if ray.is_initialized():
        ctx = None
    elif cfg.address:
        root = Path(__file__).resolve().parent.parent
        modules = [str(root / m) for m in ("data", "models", "evaluation", "orchestration")]
        ctx = ray.init(address=cfg.address, runtime_env={"py_modules": modules}, log_to_driver=True)
    else:
        ctx = ray.init(include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=True)
    if threading.current_thread() is threading.main_thread():
        # ray.init installs its own SIGTERM handler (which aborts); end the sweep like Ctrl-C instead, so every
        # MLflow run gets closed and --resume can continue
        signal.signal(signal.SIGTERM, _terminate)
    resources = ray.cluster_resources()
    return {"dashboard_url": getattr(ctx, "dashboard_url", None) if ctx is not None else None,
            "cpus": int(resources.get("CPU", 1)), "gpus": float(resources.get("GPU", 0)), "local": not cfg.address}


def trial_resources(cfg: SweepConfig, cluster: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(per grid trial, for the lone final run / evaluation tasks)."""
    gpus = cfg.gpus_per_trial if cfg.gpus_per_trial is not None else (1.0 if cluster["gpus"] > 0 else 0.0)
    grid = {"cpu": cfg.cpus_per_trial, "gpu": gpus}
    lone = dict(grid) if gpus > 0 else {"cpu": float(max(1, cluster["cpus"])), "gpu": 0.0}
    return grid, lone


def _tags(cfg: SweepConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {f"{TAG_PREFIX}family": cfg.model, f"{TAG_PREFIX}preset": cfg.preset, f"{TAG_PREFIX}data": cfg.data,
            **(extra or {})}


def _records(results, ctx: TrialContext) -> list[TrialRecord]:
    out = []
    for r in results:
        spec = TrialSpec.from_params(r.config).resolved(ctx.sweep)
        history = r.metrics_dataframe.to_dict("records") if r.metrics_dataframe is not None else []
        error = str(r.error).strip().splitlines()[-1][:200] if r.error else None
        out.append(TrialRecord(trial_label(spec, ctx.sweep), history, error))
    return out


def run_sweep(cfg: SweepConfig, dashboard: bool = True) -> dict[str, Any]:
    """Run (or resume) a whole sweep. Returns what the summary shows (for tests and callers)."""
    from data.cache import FaceCache
    from data.dataset import resolve_data
    from evaluation.actors import EvaluatorPool
    from evaluation.config import EvalConfig
    from evaluation.estimator import ensure_estimator

    started = time.time()
    if cfg.resume:
        state = SweepState.latest(cfg)
        keep = {k: getattr(cfg, k) for k in RUNTIME_FIELDS if getattr(cfg, k) is not None}
        cfg = dataclasses.replace(state.config, **keep)
        print(f"resuming sweep {state.root}", flush=True)
    print(trial_table(cfg), flush=True)

    print(f"data: {cfg.data} at {cfg.image_size}px", flush=True)
    data_root = str(resolve_data(cfg.data, cfg.image_size))
    size = FaceCache.open(data_root).size
    if size != cfg.image_size:
        raise SweepError(f"the data at {data_root} is {size}px but preset {cfg.preset} trains at {cfg.image_size}px: "
                         f"pass a {cfg.image_size}px cache (data.prepare --size {cfg.image_size}) or another --preset")
    tags = _tags(cfg)
    if cfg.model == "sd-lora":  # say plainly which base the adapters train on, here and as a tag of every run
        from models.sd_lora import REAL_BASE_HINT, base_summary
        from orchestration.grid import grid_trials
        from orchestration.trainable import model_config

        lora = model_config(cfg, grid_trials(cfg)[0])
        tags[f"{TAG_PREFIX}base"] = base_summary(lora)
        print(f"sd-lora base: {base_summary(lora)}", flush=True)
        if lora.pretrained is None:
            print(f"sd-lora: {REAL_BASE_HINT}", flush=True)
    if not cfg.resume:
        state = SweepState.create(cfg, cfg.tracking_uri or default_tracking_uri())
    tracking_uri = state.tracking_uri

    cluster = start_ray(cfg, dashboard)
    grid_res, lone_res = trial_resources(cfg, cluster)
    if cluster["dashboard_url"]:
        print(f"Ray dashboard: http://{cluster['dashboard_url']} (token: `ray get-auth-token`)", flush=True)
    print(f"attribute estimator (preset {cfg.estimator_preset}): trained once, then cached", flush=True)
    estimator = ensure_estimator(data_root, cfg.estimator_preset)
    eval_config = EvalConfig(estimator=str(estimator), inception_weights=cfg.inception_weights,
                             clip_model=cfg.clip_model, mtcnn=cfg.mtcnn,
                             device="cuda" if cfg.gpus_per_eval_actor > 0 else "cpu")
    # no CPU reservation: the actors score while the trial that called them waits, so they never block a trial
    pool = EvaluatorPool(eval_config, num_actors=cfg.eval_actors, gpus_per_actor=cfg.gpus_per_eval_actor,
                         cpus_per_actor=0)

    tracker = Tracker(tracking_uri, cfg.experiment_name)
    parent = tracker.open_run(f"sweep/{state.root.name}", state.root.name, tags={**tags, f"{TAG_PREFIX}phase": "sweep",
                              f"{TAG_PREFIX}storage": str(state.root)}, params=cfg.params())
    state.parent_run_id = parent
    state.save()
    ctx = TrialContext(sweep=cfg, phase="grid", data_root=data_root, epochs=cfg.epochs, epoch_images=cfg.epoch_images,
                       pool=pool, marker_dir=str(state.root / "injected-failures"))
    out: dict[str, Any] = {"state": state, "parent_run_id": parent, "tracking_uri": tracking_uri}
    ok, reason = False, None
    try:
        references = log_references(tracker, parent, cfg, data_root, eval_config, tags, lone_res)
        metric = effective_metric(cfg, eval_config)
        mode = METRIC_MODES[metric]
        tracker.set_tags(parent, {f"{TAG_PREFIX}select_metric": metric})

        # --- grid -----------------------------------------------------------------------------------
        print(f"\n== {cfg.search} phase: {num_trials(cfg)} trials x {cfg.epochs} epochs, ranked by {metric} ==",
              flush=True)
        callback = make_callback(ctx, tracking_uri, parent, tags, metric, mode, total=num_trials(cfg))
        results = run_phase(ctx, state.root, "grid", param_space(cfg), grid_res, metric, mode, callback,
                            num_samples=1 if cfg.search == "grid" else cfg.num_samples, search=cfg.search,
                            scheduler=cfg.scheduler, max_concurrent=cfg.max_concurrent, resume=cfg.resume)
        records = _records(results, ctx)
        ok_results = [r for r in results if r.error is None and r.metrics and metric in r.metrics]
        if not ok_results:
            raise SweepError(f"every {cfg.search} trial failed: see the error files under {state.root / 'grid'}")
        best = results.get_best_result(metric, mode, scope="last", filter_nan_and_inf=True)
        best_spec = TrialSpec.from_params(best.config).resolved(cfg)
        state.mark("grid", {"best": best_spec.params(), "metric": metric})
        best_label = trial_label(best_spec, cfg)
        tracker.set_tags(parent, {f"{TAG_PREFIX}best_config": best_label})
        out.update(records=records, best=best_spec, metric=metric)
        unavailable = dict(results[0].metrics.get("unavailable") or {}) if results[0].metrics else {}
        title = "Grid" if cfg.search == "grid" else f"Optuna search ({cfg.scheduler})"
        print("\n" + grid_table(records, unavailable, f"{title}: {len(records)} trials x {cfg.epochs} epochs, "
                                                      f"best of each metric (the study's Table 4.1 layout)"))
        print(f"best configuration by {metric}: {best_label}", flush=True)

        # --- final + CFG sweep --------------------------------------------------------------------
        final = cfg_out = None
        if cfg.final_epochs > 0:
            from orchestration.cfg_sweep import run_cfg_sweep
            from orchestration.final import run_final

            final = run_final(ctx, state.root, best_spec, tracker, parent, tags, metric, mode, lone_res,
                              resume=cfg.resume and "final" not in state.phases)
            state.mark("final", {"run_id": final.run_id, "model_uri": final.model_uri})
            cfg_out = run_cfg_sweep(cfg, state.dir("cfg"), final.pipeline_dir, data_root, pool, tracker, parent,
                                    tags, lone_res)
            state.mark("cfg", {"run_id": cfg_out.run_id, "pareto": cfg_out.front})
            tracker.log_metrics(parent, {f"final_{k}": v for k, v in final.scored.values.items()})
            out.update(final=final, cfg=cfg_out)
            print("\n" + final_table(final.scored.values, final.scored.unavailable, references, cfg.model,
                                     f"Final: {cfg.final_epochs} epochs of {best_label}, {cfg.final_samples} "
                                     f"samples at guidance {best_spec.guidance_scale:g} (the study's Table 4.4 layout)"))
            acc = final.scored.values.get("est_acc_balanced")
            ref = references.get("untrained", {}).get("est_acc_balanced")
            if acc is not None and ref:
                against = "the base without LoRA" if cfg.model == "sd-lora" else "the untrained model"
                print(f"conditioning: class-balanced estimator accuracy {acc:.1%} on generated images vs {ref:.1%} "
                      f"for {against} ({acc / ref:.1f}x; chance is {1 / 6:.1%})")
            print(f"\nCFG sweep ({cfg.cfg_samples} samples per scale; * = on the Pareto front; plot "
                  f"{cfg_out.png}):\n" + cfg_table(cfg_out.rows, cfg_out.quality_metric, cfg_out.front))
        ok = True
        state.mark("done", True)
    except KeyboardInterrupt:
        reason = "interrupted: continue with --resume"
        raise
    except BaseException as err:
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        raise
    finally:
        _close_runs(tracker, parent, ok, reason)
        pool.shutdown()
    elapsed = time.time() - started
    tracker.log_metrics(parent, {"wall_seconds": elapsed})
    print("\n" + where_to_look(mlflow_ui_command(tracking_uri), cfg.experiment_name, parent, str(state.root),
                               cluster["dashboard_url"], out.get("final").model_uri if out.get("final") else None,
                               cluster["local"], cfg.model))
    return out


def _close_runs(tracker: Tracker, parent: str, ok: bool, reason: str | None) -> None:
    """No run is left RUNNING: children still open are closed FAILED (with the reason), then the parent."""
    for run in tracker.children(parent):
        if run.info.status == "RUNNING":
            tracker.finish(run.info.run_id, ok=False, reason=reason or "the sweep ended before this run finished")
    tracker.finish(parent, ok=ok, reason=reason)


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


def log_references(tracker: Tracker, parent: str, cfg: SweepConfig, data_root: str, eval_config,
                   tags: dict[str, str],
                   resources: dict[str, float]) -> dict[str, dict[str, float]]:
    """The reference rows (untrained model, ground truth, real held-out) on the final sample set, once per
    experiment (keyed by family, preset, data, size, sample count and seed)."""
    from orchestration.references import compute_references

    key = f"reference/{cfg.model}/{cfg.preset}/{cfg.data}/{cfg.image_size}/{cfg.final_samples}/{cfg.seed}"
    existing = tracker.find_run(key)
    if existing is not None and tracker.status(existing) == "FINISHED":
        run = tracker.client.get_run(existing)
        rows: dict[str, dict[str, float]] = {}
        for k, v in run.data.metrics.items():
            row, _, metric = k.partition(".")
            rows.setdefault(row, {})[metric] = v
        return rows
    run_id = tracker.open_run(key, f"reference ({cfg.final_samples} samples)", parent,
                              tags={**tags, f"{TAG_PREFIX}phase": "reference"},
                              params={"samples": cfg.final_samples, "seed": cfg.seed + 1, "model": cfg.model,
                                      "guidance_scale": cfg.guidance_scale})
    try:
        rows, unavailable = compute_references(cfg, data_root, eval_config, resources)
        for row, values in rows.items():
            tracker.log_metrics(run_id, {f"{row}.{k}": v for k, v in values.items()})
        tracker.log_unavailable(run_id, unavailable)
        tracker.finish(run_id, ok=True)
    except BaseException as err:
        tracker.finish(run_id, ok=False, reason=f"{type(err).__name__}: {err}")
        raise
    return rows


__all__ = ["run_sweep", "start_ray", "trial_resources", "effective_metric"]
