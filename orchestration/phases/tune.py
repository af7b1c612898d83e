"""Run one phase (the grid/Optuna search, or the final run) as a Ray Tune experiment, fresh or restored.

Each trial requests its resources through `tune.with_resources`; a crashed trial is retried from its
last checkpoint (`FailureConfig(max_failures)`); `CheckpointConfig` keeps each trial's best checkpoint
by the selection metric (plus, always, its latest); a phase whose driver died is continued with
`Tuner.restore`, which skips trials that already finished.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from orchestration.tracking.callback import MlflowTrialCallback
from orchestration.trainable import TrialContext, run_trial, trial_params


def run_phase(
    ctx: TrialContext,
    root: Path,
    name: str,
    param_space: dict[str, Any],
    resources: dict[str, float],
    metric: str,
    mode: str,
    callback: MlflowTrialCallback,
    num_samples: int = 1,
    search: str = "grid",
    scheduler: str = "fifo",
    max_concurrent: int | None = None,
    resume: bool = False,
    fn=run_trial,
) -> tune.ResultGrid:
    """Fit (or restore and finish) the Tune experiment `root/name`; returns its ResultGrid. `fn(config, ctx)` is
    the trial (`run_trial`; the data-parallel final run: `run_data_parallel`, whose workers ask for their own
    resources, so `resources` is what the coordinating trial itself holds)."""
    trainable = tune.with_resources(tune.with_parameters(fn, ctx=ctx), resources)
    path = root / name
    if resume and Tuner.can_restore(str(path)):
        print(f"resuming the {name} phase from {path} (finished trials are kept)", flush=True)
        # Tune does not store the param_space: a driver killed after the Tuner was made but before it saved its
        # first trial would otherwise be restored with an empty config.
        tuner = Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True,
                              param_space=param_space)
        return _settled(callback, tuner.fit())

    cfg = ctx.sweep
    search_alg = None
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=cfg.seed)
    sched = FIFOScheduler()
    if scheduler == "asha":
        sched = ASHAScheduler(time_attr="training_iteration", max_t=ctx.epochs,
                              grace_period=min(cfg.asha_grace_epochs, ctx.epochs), reduction_factor=2)
    tuner = Tuner(
        trainable,
        param_space=param_space,
        tune_config=TuneConfig(metric=metric, mode=mode, num_samples=num_samples, search_alg=search_alg,
                               scheduler=sched, max_concurrent_trials=max_concurrent, reuse_actors=True),
        run_config=RunConfig(
            name=name,
            storage_path=str(root),
            callbacks=[callback],
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric,
                                               checkpoint_score_order=mode),
            verbose=0,  # the MLflow callback prints one line per trial epoch instead
        ),
    )
    return _settled(callback, tuner.fit())


def make_callback(ctx: TrialContext, tracking_uri: str, parent_run_id: str, tags: dict[str, str], metric: str,
                  total: int | None = None) -> MlflowTrialCallback:
    """The driver-side MLflow writer for this phase (its params function must not carry actor handles)."""
    plain = dataclasses.replace(ctx, pool=None)
    return MlflowTrialCallback(
        uri=tracking_uri, experiment=ctx.sweep.experiment_name, parent_run_id=parent_run_id, phase=ctx.phase,
        tags=tags, trial_params=functools.partial(trial_params, ctx=plain), select_metric=metric,
        policy=ctx.sweep.checkpoint_artifacts, limit_mb=ctx.sweep.artifact_limit_mb, total=total,
        by_label=ctx.phase == "final" or ctx.sweep.search == "grid", family=ctx.sweep.model,
    )


def trial_history(result: tune.Result) -> list[dict[str, Any]]:
    """A trial's reports, one row per epoch, with their plain values (what the summary and sweep.json keep)."""
    rows = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
    return [{k: v for k, v in row.items() if isinstance(v, (int, float, str)) and k != "unavailable"} for row in rows]


def _settled(callback, results):
    """The ResultGrid, once the callback (if any) closed each trial's run."""
    return callback.settle(results) if callback is not None else results
