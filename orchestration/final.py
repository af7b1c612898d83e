"""The final phase: the best grid configuration retrained for --final-epochs, evaluated, registered.

The retraining is a one-trial Tune experiment (same trainable, same retries/resume, its own nested
MLflow run with per-epoch metrics). At its last epoch the trial saves the pipeline with the EMA
weights (`save_pretrained`); the driver then samples the final-comparison set (study: 100 samples)
as a Ray task, logs the metrics (`final_<metric>`, with sample counts `final_<metric>_n`), logs the
pipeline folder as the run's `pipeline/` artifacts and registers it in the Model Registry, so that

    path = mlflow.artifacts.download_artifacts("models:/condface-ddpm/<version>")
    pipe = models.families.load_pipeline("ddpm", path)  # = AttributeDiffusionPipeline.from_pretrained(path)

loads it (for sd-lora, the folder holds the LoRA weights for the base named in its config, and
`load_pipeline("sd-lora", path)` puts them onto that base).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestration.errors import SweepError
from orchestration.evaluate import Scored, run_remote
from orchestration.grid import TrialSpec
from orchestration.tracking import TAG_PREFIX, Tracker
from orchestration.trainable import TrialContext, samples_png
from orchestration.tune_phase import make_callback, run_phase


@dataclass
class FinalOutcome:
    run_id: str
    spec: TrialSpec
    pipeline_dir: str
    scored: Scored
    model_uri: str | None
    history: list[dict[str, Any]]


def run_final(ctx: TrialContext, root: Path, spec: TrialSpec, tracker: Tracker, parent_run_id: str,
              tags: dict[str, str], metric: str, mode: str, resources: dict[str, float], resume: bool) -> FinalOutcome:
    cfg = ctx.sweep
    # the final run is alone: on a CPU it takes every core (resources["cpu"] threads)
    ctx = dataclasses.replace(ctx, phase="final", epochs=cfg.final_epochs, epoch_images=cfg.final_epoch_images,
                              lr=cfg.final_lr, threads=int(resources.get("cpu", 1)) if not resources.get("gpu") else 0)
    callback = make_callback(ctx, tracker.uri, parent_run_id, tags, metric, mode, total=1)
    print(f"\n== final run: {spec.label}, {cfg.final_epochs} epochs ==", flush=True)
    results = run_phase(ctx, root, "final", spec.params(), resources, metric, mode, callback, resume=resume)
    result = results[0]
    if result.error is not None or result.checkpoint is None:
        raise SweepError(f"the final run failed ({str(result.error).splitlines()[0] if result.error else 'no checkpoint'})"
                         f": see {root / 'final'}; continue with --resume")
    pipeline_dir = Path(result.checkpoint.path) / "pipeline"
    if not pipeline_dir.is_dir():
        raise SweepError(f"the final run's last checkpoint {result.checkpoint.path} has no pipeline/: "
                         "it did not finish its last epoch; continue with --resume")
    run_id = tracker.find_run(f"{parent_run_id}/final/{result.metrics['trial_id']}")

    print(f"final evaluation: {cfg.final_samples} samples at guidance {spec.guidance_scale:g}", flush=True)
    scored = run_remote(resources, model=cfg.model, pipeline_dir=str(pipeline_dir), data_root=ctx.data_root,
                        n=cfg.final_samples, seed=cfg.seed + 1, scales=[spec.guidance_scale], sampler=cfg.sampler,
                        steps=cfg.sampling_steps, pool=ctx.pool)[0]
    tracker.log_metrics(run_id, {f"final_{k}": v for k, v in scored.values.items()})
    tracker.log_metrics(run_id, {f"final_{k}": v for k, v in scored.counts.items()})
    tracker.log_unavailable(run_id, scored.unavailable)
    tracker.set_tags(run_id, {f"{TAG_PREFIX}final_guidance_scale": spec.guidance_scale,
                              f"{TAG_PREFIX}final_samples": cfg.final_samples})
    _log_samples(tracker, run_id, scored, root / "final_samples.png")
    model_uri = register(tracker, run_id, pipeline_dir, cfg.registered_model_name,
                         {"family": cfg.model, "preset": cfg.preset, "config": spec.label})
    history = [r for r in result.metrics_dataframe.to_dict("records")] if result.metrics_dataframe is not None else []
    return FinalOutcome(run_id, spec, str(pipeline_dir), scored, model_uri, history)


def register(tracker: Tracker, run_id: str, pipeline_dir: Path, name: str, tags: dict[str, str]) -> str:
    """Log the save_pretrained folder as the run's `pipeline/` artifacts and register it as a model version."""
    from mlflow.exceptions import MlflowException

    tracker.log_artifact(run_id, pipeline_dir, "pipeline")
    client = tracker.client
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="condface diffusers pipeline: download the version's "
                                                         "artifacts and load them with from_pretrained")
    source = f"{client.get_run(run_id).info.artifact_uri}/pipeline"
    version = client.create_model_version(name, source, run_id=run_id, tags=tags)
    tracker.set_tags(run_id, {f"{TAG_PREFIX}registered_model": f"models:/{name}/{version.version}"})
    return f"models:/{name}/{version.version}"


def _log_samples(tracker: Tracker, run_id: str, scored: Scored, path: Path) -> None:
    samples_png(scored.images[:64], path)
    tracker.log_artifact(run_id, path, "final_samples")
