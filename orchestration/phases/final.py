"""The final phase: the best grid configuration retrained for --final-epochs, evaluated, registered.

The retraining is a one-trial Tune experiment (same trainable, same retries/resume, its own nested
MLflow run with per-epoch metrics), once per seed of --final-seeds: each seed its own run, scored on the same
final sample set, so the report can say whether a difference between families exceeds the seed-to-seed spread.
Only the first seed's model (the sweep's --seed) is registered: picking the better seed by the final sample set
would select on the very numbers the report compares. At its last epoch the trial saves the pipeline with the EMA
weights (`save_pretrained`); the driver then samples the final-comparison set (study: 100 samples)
as a Ray task, logs the metrics (`final_<metric>`, with sample counts `final_<metric>_n`), logs the
model as an MLflow model of the run (`models.mlflow_model`: a pyfunc whose artifacts are the pipeline
folder, or MLflow's diffusers flavor for a LoRA on a Hub base) and registers it in the Model Registry
with the alias `champion`, so that

    model = mlflow.pyfunc.load_model("models:/condface-ddpm@champion")   # predict(levels) -> base64 PNGs
    path = mlflow.artifacts.download_artifacts("models:/condface-ddpm@champion")
    pipe = models.families.load_pipeline("ddpm", path)  # the AttributeDiffusionPipeline inside it
    python -m models.generate --model models:/condface-ddpm@champion --smiling 5 --out faces.png

load it (for sd-lora, the pipeline folder holds the LoRA weights, and the MLflow model ships or names
the base they go onto).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from data.catalogue import CHAMPION_ALIAS, TAG_PREFIX, better, finite
from orchestration.errors import SweepError
from orchestration.evaluate import Scored, run_remote
from orchestration.faults import reached
from orchestration.grid import TrialSpec, trial_label
from orchestration.phases.recorded import recorded_final_evaluation
from orchestration.phases.tune import make_callback, run_phase, trial_history
from orchestration.report.tables import over_seeds
from orchestration.resources import final_worker_resources, plan_resources
from orchestration.tracking.client import Tracker
from orchestration.trainable import TrialContext, run_data_parallel, run_trial, samples_png

FINAL_EVAL_STEP = "final_evaluated"  # the step metric that makes the final evaluation log once per run
CONFUSION_ARTIFACT = "final_samples/final_confusion.json"


@dataclasses.dataclass(frozen=True)
class FinalRun:
    """One seed's trained final run: its MLflow run, the pipeline its last epoch saved, its per-epoch reports."""

    seed: int
    run_id: str
    pipeline_dir: Path
    history: list[dict[str, Any]]


def final_seeds(cfg) -> list[int]:
    """The seeds of the final runs: the sweep's seed (its model registered), then seed + 1, ... (--final-seeds)."""
    return list(range(cfg.seed, cfg.seed + cfg.final_seeds))


def run_final(continuing: bool, sweep, cfg, spec: TrialSpec, tags: dict[str, str], metric: str) -> dict[str, Any]:
    """The final phase as a unit: the selected configuration trained once per seed (`final_seeds`), each seed a
    nested run of its own scored on the same final sample set; the first seed's model registered (the CFG and
    sampler phases use it). The first seed is this unit's own (a restored Tune experiment when continuing: a
    finished training is not repeated; one evaluation logged once; one model version however often it is
    resumed); each further seed is a unit within it (`<family>/final/seed<N>`), so a phase resumed after a kill
    between seeds trains only the seeds it lacks. Returns the first seed's result, with every seed's values and,
    for two or more, their mean and spread (`over_seeds`)."""
    tracker: Tracker = sweep.tracker
    run = train_final(continuing, sweep, cfg, spec, tags, metric, cfg.seed)
    reached(f"{cfg.model}/final:trained")
    scored = evaluate_final(sweep, cfg, plan_resources(cfg).lone, spec, run.run_id, run.pipeline_dir,
                            sweep.state.dir(cfg.model))
    sampling = {"guidance_scale": spec.guidance_scale, "sampler": cfg.sampler,
                "num_inference_steps": cfg.sampling_steps, "ddpm_variance": cfg.ddpm_variance,
                "precision": cfg.sampling_precision}
    label = trial_label(spec, cfg)
    model_uri = register(tracker, run.run_id, run.pipeline_dir, cfg.registered_model_name,
                         {"family": cfg.model, "preset": cfg.preset, "config": label}, sampling=sampling,
                         data_root=sweep.data_root)
    reached(f"{cfg.model}/final:registered")
    tracker.log_once(sweep.parent, {f"final_{cfg.model}.{k}": v for k, v in scored.values.items()})
    seeds = [_seed_entry(run.seed, run.run_id, scored)]
    for seed in final_seeds(cfg)[1:]:
        seeds.append(sweep.phase(f"{cfg.model}/final/seed{seed}", run_final_seed, sweep, cfg, spec, tags, metric,
                                 seed))
    return {"run_id": run.run_id, "label": label, "spec": spec.params(), "guidance_scale": spec.guidance_scale,
            "pipeline_dir": str(run.pipeline_dir), "model_uri": model_uri, "values": scored.values,
            "unavailable": scored.unavailable, "counts": scored.counts, "history": run.history,
            "confusion": scored.tables.get("est_confusion"), "seeds": seeds,
            **({"over_seeds": over_seeds([s["values"] for s in seeds])} if len(seeds) > 1 else {})}


def run_final_seed(continuing: bool, sweep, cfg, spec: TrialSpec, tags: dict[str, str], metric: str,
                   seed: int) -> dict[str, Any]:
    """A further seed of the final run, as a unit: trained (restored when continuing) and scored on the same final
    sample set as the first seed; not registered. Returns its seed, run id and values."""
    run = train_final(continuing, sweep, cfg, spec, tags, metric, seed)
    reached(f"{cfg.model}/final/seed{seed}:trained")
    scored = evaluate_final(sweep, cfg, plan_resources(cfg).lone, spec, run.run_id, run.pipeline_dir,
                            sweep.state.dir(cfg.model), png=f"final_samples-seed{seed}.png")
    return _seed_entry(seed, run.run_id, scored)


def _seed_entry(seed: int, run_id: str, scored: Scored) -> dict[str, Any]:
    return {"seed": seed, "run_id": run_id, "values": scored.values, "counts": scored.counts,
            "unavailable": scored.unavailable}


def train_final(continuing: bool, sweep, cfg, spec: TrialSpec, tags: dict[str, str], metric: str,
                seed: int) -> FinalRun:
    """Train the final run of one seed: a one-trial Tune experiment (`final`, or `final-seed<N>` for a further seed)
    whose every seeded step (initialisation, data order, noise, per-epoch samples) takes `seed`."""
    tracker: Tracker = sweep.tracker
    resources = plan_resources(cfg).lone
    first = seed == cfg.seed
    name = "final" if first else f"final-seed{seed}"
    # the final run is alone: on a CPU it takes every core of its node (resources["cpu"] threads)
    ctx = TrialContext(sweep=dataclasses.replace(cfg, seed=seed), phase="final", data_root=sweep.data_root,
                       epochs=cfg.final_epochs, epoch_images=cfg.final_epoch_images, lr=cfg.final_lr, pool=sweep.pool,
                       threads=int(resources.get("cpu", 1)) if not resources.get("gpu") else 0, metric=metric)
    label = trial_label(spec, cfg)
    role = {f"{TAG_PREFIX}seed": str(seed), f"{TAG_PREFIX}seed_role": "registered" if first else "spread"}
    callback = make_callback(ctx, tracker.uri, sweep.parent, {**tags, **role}, metric, total=1)
    root = sweep.state.dir(cfg.model)
    fn, trial_resources, how = run_trial, resources, ""
    if cfg.final_workers > 1:  # Ray Train (DDP) inside the one trial; the trial itself only coordinates
        worker = final_worker_resources(cfg, plan_resources(cfg))
        ctx = dataclasses.replace(ctx, workers=cfg.final_workers, worker_resources=worker,
                                  threads=0 if worker.get("GPU") else int(worker["CPU"]),
                                  train_storage=str(root / f"{name}-train"))
        # the coordinating trial holds no CPU (its workers do); Tune wants a non-empty bundle: one byte of memory
        fn, trial_resources = run_data_parallel, {"cpu": 0.0, "memory": 1.0}
        how = f" on {cfg.final_workers} data-parallel workers ({'nccl' if worker.get('GPU') else 'gloo'}, {worker} each)"
    seeds = f", seed {seed} ({final_seeds(cfg).index(seed) + 1} of {cfg.final_seeds})" if cfg.final_seeds > 1 else ""
    print(f"\n== {cfg.model} final run: {label}, {cfg.final_epochs} epochs{seeds}{how} ==", flush=True)
    results = run_phase(ctx, root, name, spec.params(), trial_resources, metric, better(metric), callback,
                        resume=continuing, fn=fn)
    result = results[0]
    # a data-parallel run's checkpoints are Ray Train's: the trial reports the last one's path
    checkpoint = result.checkpoint.path if result.checkpoint is not None else \
        (result.metrics or {}).get("checkpoint_path")
    if result.error is not None or checkpoint is None:
        raise SweepError(f"the {cfg.model} final run{seeds} failed ({str(result.error).splitlines()[-1] if result.error else 'no checkpoint'})"
                         f": see {root / name}; continue with --resume")
    pipeline_dir = Path(checkpoint) / "pipeline"
    if not pipeline_dir.is_dir():
        raise SweepError(f"the final run's last checkpoint {checkpoint} has no pipeline/: "
                         "it did not finish its last epoch; continue with --resume")
    run_id = tracker.find_run(callback.key(result.metrics["trial_id"], result.config))
    return FinalRun(seed, run_id, pipeline_dir, trial_history(result))


def evaluate_final(sweep, cfg, resources: dict[str, float], spec: TrialSpec, run_id: str, pipeline_dir: Path,
                   root: Path, png: str = "final_samples.png") -> Scored:
    """The final-comparison set (study: 100 samples; the same conditions and noise for every seed of the final run:
    `cfg` is the sweep's, not a seed's) sampled and scored once per run: its values and counts as
    `final_<metric>` (with the step metric FINAL_EVAL_STEP, logged last: a run that has it has the rest), the
    sample grid (`png` under `root`) and confusion matrices as artifacts. A continued phase whose run has it reads it back from MLflow
    (orchestration.phases.recorded; no images then) instead of sampling again. Returns what MLflow holds."""
    tracker: Tracker = sweep.tracker
    if 0 in tracker.logged_steps(run_id, FINAL_EVAL_STEP):
        print(f"{cfg.model} final evaluation: in MLflow from the earlier run, read back (not sampled again)",
              flush=True)
        held = recorded_final_evaluation(tracker, run_id, "final_", FINAL_EVAL_STEP, CONFUSION_ARTIFACT)
        none = np.zeros((0,), dtype=np.uint8)
        return Scored(spec.guidance_scale, held["values"], held["unavailable"], held["counts"], none, none,
                      cfg.sampler, tables={"est_confusion": held["confusion"]} if held["confusion"] else {})
    print(f"{cfg.model} final evaluation: {cfg.final_samples} samples at guidance {spec.guidance_scale:g}", flush=True)
    scored = run_remote(resources, model=cfg.model, pipeline_dir=str(pipeline_dir), data_root=sweep.data_root,
                        n=cfg.final_samples, seed=cfg.seed + 1,
                        settings=[(cfg.sampler, cfg.sampling_steps, spec.guidance_scale)], pool=sweep.pool,
                        ddpm_variance=cfg.ddpm_variance, precision=cfg.sampling_precision)[0]
    tracker.log_unavailable(run_id, scored.unavailable)
    tracker.set_tags(run_id, {f"{TAG_PREFIX}final_guidance_scale": spec.guidance_scale,
                              f"{TAG_PREFIX}final_samples": cfg.final_samples})
    _log_samples(tracker, run_id, scored, root / png)
    tracker.log_metrics(run_id, {**{f"final_{k}": v for k, v in scored.values.items()},
                                 **{f"final_{k}": v for k, v in scored.counts.items()}},
                        step=0, step_metric=FINAL_EVAL_STEP)
    return dataclasses.replace(scored, values={k: v for k, v in scored.values.items() if finite(v)})


def register(tracker: Tracker, run_id: str, pipeline_dir: Path, name: str, tags: dict[str, str],
             sampling: dict[str, Any] | None = None, data_root: str | None = None) -> str:
    """Log the save_pretrained folder as an MLflow model of the run (`models.mlflow_model.save_model`: a pyfunc,
    or the diffusers flavor where it fits; `sampling` gives its default params, `data_root` the level
    frequencies "any" draws from) and register it as a model version with the alias `champion` -- once: a run
    that already has a version of `name` keeps it (a resumed sweep logs and registers nothing new, and moves the
    alias onto it if a kill came before)."""
    from mlflow.exceptions import MlflowException

    from models.mlflow_model import choose_flavor, level_frequencies, save_model

    client = tracker.client
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=(
            "condface: an MLflow model of a final run (pyfunc: attribute levels or prompts in, base64 PNGs out; "
            f"see models/mlflow_model.py). `{CHAMPION_ALIAS}` is the newest final model: "
            f"mlflow.pyfunc.load_model('models:/{name}@{CHAMPION_ALIAS}'), or python -m models.generate --model "
            f"models:/{name}@{CHAMPION_ALIAS} --out faces.png"))
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        version = max(existing, key=lambda v: int(v.version))
    else:
        flavor, why = choose_flavor(pipeline_dir)
        sampling = {"guidance_scale": 3.0, "sampler": "ddpm", "num_inference_steps": 0, **(sampling or {})}
        frequencies = level_frequencies(data_root) if data_root else None
        model_id, source = tracker.log_model(
            run_id, "model", lambda path, mlflow_model: save_model(path, pipeline_dir, frequencies=frequencies,
                                                                   mlflow_model=mlflow_model, flavor=flavor,
                                                                   **sampling),
            tags={f"{TAG_PREFIX}{k}": str(v) for k, v in tags.items()})
        tracker.set_tags(run_id, {f"{TAG_PREFIX}mlflow_flavor": f"{flavor}: {why}"})
        version = client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id,
                                              description=f"{tags.get('family', '')} {tags.get('config', '')} "
                                                          f"({flavor})".strip())
    # on this sweep's version, also when a killed driver registered it but never moved the alias from an older one
    if _champion(client, name) != str(version.version):
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
    uri = f"models:/{name}/{version.version}"
    tracker.set_tags(run_id, {f"{TAG_PREFIX}registered_model": uri})
    return uri


def _champion(client, name: str) -> str | None:
    """The version the alias `champion` is on, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def _log_samples(tracker: Tracker, run_id: str, scored: Scored, path: Path) -> None:
    samples_png(scored.images[:64], path)
    tracker.log_artifact(run_id, path, "final_samples")
    confusion = scored.tables.get("est_confusion")
    if confusion:  # none when the estimator is unavailable
        from evaluation.confusion import plot_confusions

        title = (f"the final model's {len(scored.images)} samples at guidance {scored.guidance_scale:g}: "
                 "the level asked for (rows) against the level the estimator read")
        tracker.log_artifact(run_id, plot_confusions(confusion, title, path.with_name("final_confusion.png")),
                             "final_samples")
        tracker.log_json(run_id, confusion, CONFUSION_ARTIFACT)
