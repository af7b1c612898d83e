"""The Ray Tune trainable: one trial = the one training engine + per-epoch sampling, scoring and reporting.

Every epoch: the engine writes its checkpoint and calls `on_epoch`; the trial samples a fixed,
seeded set of validation conditions with the EMA weights, has the evaluation actors score them,
draws the study's attribute grid, and reports loss + metrics + a checkpoint (the engine's files and
the PNGs) to Tune. A retried trial (FailureConfig) or a resumed sweep (Tuner.restore) continues
from the last reported checkpoint. The trial never writes MLflow: the driver's callback does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestration.config import SWEEP_FAMILIES, SweepConfig
from orchestration.faults import diverges, fail_once
from orchestration.grid import TrialSpec, trial_label

STEP_LOSSES = "step_losses"  # result key: [[global optimizer step, window mean loss], ...] of the epoch


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one phase shares (shipped to the workers with tune.with_parameters)."""

    sweep: SweepConfig
    phase: str  # "grid" | "final"
    data_root: str
    epochs: int
    epoch_images: int | None
    lr: float | None = None  # final phase: --final-lr when given
    pool: Any = None  # evaluation.EvaluatorPool (actor handles) or None
    marker_dir: str | None = None  # where injected failures remember they happened (testing)
    threads: int = 0  # torch threads of each trial (0: the sweep's threads_per_trial)
    metric: str | None = None  # the metric this phase ranks by (None: the sweep's select_metric)
    # the final run with --final-workers N > 1: a Ray Train TorchTrainer of N data-parallel workers inside the trial
    workers: int = 1
    worker_resources: dict[str, float] | None = None  # what each worker asks Ray for, e.g. {"CPU": 1}
    train_storage: str | None = None  # where Ray Train keeps the workers' checkpoints (a shared path)


# --------------------------------------------------------------------------------------------------
# Configuration of one trial: pure functions, also used by the driver to log params
# --------------------------------------------------------------------------------------------------
def model_config(cfg: SweepConfig, spec: TrialSpec):
    """The family config of one trial: the family's preset with the trial's axes (config.SWEEP_FAMILIES)."""
    from models.families import family_config

    overrides: dict[str, Any] = {"num_train_timesteps": spec.timesteps, "beta_rescale": cfg.beta_rescale}
    if SWEEP_FAMILIES[cfg.model].grid_axis == "channels":
        overrides.update(image_size=cfg.image_size, block_out_channels=cfg.channels[spec.channels])
    else:
        overrides["rank"] = spec.lora_rank
    if cfg.family_pretrained:
        overrides["pretrained"] = cfg.family_pretrained
    if cfg.vae:  # the VAE the vae phase tuned for this family (orchestration.phases.vae)
        overrides["vae"] = cfg.vae
    return family_config(cfg.model, cfg.family_preset, **overrides)


def train_config(cfg: SweepConfig, spec: TrialSpec, epochs: int):
    from models.engine import TrainConfig

    return TrainConfig(
        epochs=epochs, batch_size=cfg.batch_size, grad_accum=spec.grad_accum, lr=spec.lr,
        lr_scheduler=cfg.lr_schedule, lr_warmup_steps=cfg.lr_warmup_steps,
        min_snr_gamma=spec.min_snr_gamma, p_uncond=spec.p_uncond, ema_decay=cfg.ema_decay,
        grad_clip=cfg.grad_clip, seed=cfg.seed, val_samples=cfg.val_samples, mixed_precision=cfg.mixed_precision,
        compile=cfg.compile, progress=False,
        verbose=False,  # the driver prints one line per trial epoch (the callback's); the engine's would repeat it
    )


def trial_spec(config: dict[str, Any], ctx: TrialContext) -> TrialSpec:
    spec = TrialSpec.from_params(config).resolved(ctx.sweep)
    if ctx.phase == "grid" and diverges(trial_label(spec, ctx.sweep)):  # a test's fault (orchestration.faults)
        spec = dataclasses.replace(spec, lr=float("inf"))
    return dataclasses.replace(spec, lr=ctx.lr) if ctx.lr is not None else spec


def trial_params(config: dict[str, Any], ctx: TrialContext) -> tuple[str, dict[str, Any]]:
    """(run name, every resolved hyperparameter) of a trial, for its MLflow run."""
    spec = trial_spec(config, ctx)
    params: dict[str, Any] = {f"trial.{k}": v for k, v in dataclasses.asdict(spec).items()}
    params["trial.channels_list"] = ctx.sweep.channels.get(spec.channels) if spec.channels else None
    # the loader's workers are chosen in the trial from what Ray gave it: tagged condface.loader_workers, no param
    params.update({f"train.{k}": v for k, v in dataclasses.asdict(train_config(ctx.sweep, spec, ctx.epochs)).items()
                   if k != "num_workers"})
    params.update({f"model.{k}": v for k, v in dataclasses.asdict(model_config(ctx.sweep, spec)).items()})
    params.update({
        "phase": ctx.phase, "model": ctx.sweep.model, "preset": ctx.sweep.preset, "data": ctx.sweep.data,
        "image_size": ctx.sweep.image_size, "augment": spec.augment, "epoch_images": ctx.epoch_images,
        "eval_samples": ctx.sweep.eval_samples, "sampler": ctx.sweep.sampler,
        "sampling_steps": ctx.sweep.sampling_steps, "ddpm_variance": ctx.sweep.ddpm_variance,
        "sampling_precision": ctx.sweep.sampling_precision,
        "beta_rescale": ctx.sweep.beta_rescale, "select_metric": ctx.sweep.select_metric,
    })
    seed = f"-seed{ctx.sweep.seed}" if ctx.phase == "final" and ctx.sweep.final_seeds > 1 else ""
    return f"{ctx.phase}:{trial_label(spec, ctx.sweep)}{seed}", params


# --------------------------------------------------------------------------------------------------
# The trainable
# --------------------------------------------------------------------------------------------------
def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """A Tune trial: train one configuration, reporting each epoch (and its checkpoint) to Tune."""
    from ray import tune

    def report(metrics: dict[str, Any], stage: Path | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(stage)) if stage else None)

    _train(config, ctx, tune.get_context().get_trial_id(), tune.get_checkpoint(), report)


def run_data_parallel(config: dict[str, Any], ctx: TrialContext) -> None:
    """A Tune trial (the final run with --final-workers N): a Ray Train TorchTrainer runs the same training on N
    workers (DDP: gloo on CPUs, nccl on GPUs; models.engine splits each global batch among them). Rank 0 reports
    every epoch with its checkpoint, which TuneReportCallback passes on to this trial (the checkpoint as
    `checkpoint_path`), so the driver records it like any trial. A retried or resumed trial starts the trainer
    again under the same name and storage path, and Ray Train restores its latest checkpoint."""
    from ray import tune
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    resources = dict(ctx.worker_resources or {"CPU": 1.0})
    gpu = resources.get("GPU", 0) > 0
    trainer = TorchTrainer(
        _data_parallel_worker, train_loop_config={"config": config, "ctx": ctx, "trial_id": trial_id},
        scaling_config=ScalingConfig(num_workers=ctx.workers, use_gpu=gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(name=f"final-{trial_id}", storage_path=ctx.train_storage,
                             failure_config=FailureConfig(max_failures=ctx.sweep.max_failures),
                             callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def _data_parallel_worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker of the data-parallel final run: rank 0 samples, scores and checkpoints; all report."""
    import ray.train

    def report(metrics: dict[str, Any], stage: Path | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(stage)) if stage else None)

    _train(loop["config"], loop["ctx"], loop["trial_id"], ray.train.get_checkpoint(), report)


def _train(config: dict[str, Any], ctx: TrialContext, trial_id: str, restored, report_to) -> None:
    """The body of a trial: the engine's `fit` + per-epoch sampling, scoring and `report_to(metrics, stage dir)`.
    Under data parallelism only rank 0 samples, scores and checkpoints (the other ranks report the losses)."""
    from data.dataset import FaceDataset
    from evaluation.conditions import paired_conditions
    from models.engine import distributed, fit
    from models.errors import DivergedError
    from models.families import build_family
    from models.runtime import configure_torch
    from models.sampling import generate
    from orchestration.resources import loader_workers

    cfg = ctx.sweep
    configure_torch(ctx.threads or cfg.threads_per_trial)
    # Ray Train logs "Checkpoint successfully created at ..." per report; the driver prints one line per epoch
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    spec = trial_spec(config, ctx)
    # quiet: the driver already said which pretrained base a family uses, once (and tags every run with it)
    family = build_family(cfg.model, model_config(cfg, spec), seed=cfg.seed, verbose=False)
    train_set = FaceDataset(ctx.data_root, "train", augment=spec.augment, limit=ctx.epoch_images)
    val_set = FaceDataset(ctx.data_root, "val")
    conditions = paired_conditions(ctx.data_root, cfg.eval_samples, split="val", seed=cfg.seed)
    real = conditions.real_images
    placement = where_am_i()
    # a GPU trial loads its batches in worker processes on the CPUs Ray gave it (the same images as without)
    placement["loader_workers"] = loader_workers(placement.get("resources", {}))
    rank = distributed()[0]

    work = Path(tempfile.mkdtemp(prefix="condface-trial-"))
    resume: bool | Path = False
    if restored is not None:
        local = Path(restored.to_directory(str(work / "restored")))
        resume = local / "engine"

    def on_epoch(report) -> bool:
        epoch = report.epoch + 1  # 1-based in every report and MLflow step
        if rank != 0:  # a data-parallel worker: rank 0 reports for the run
            report_to({**report.metrics(), "epoch": epoch}, None)
            return False
        started = time.perf_counter()
        stage = work / f"report-{epoch:04d}"
        stage.mkdir()
        with report.sampling() as pipe:
            images = generate(pipe, conditions.levels, conditions.captions, spec.guidance_scale,
                              cfg.sampling_steps, cfg.seed, cfg.sampler, ddpm_variance=cfg.ddpm_variance,
                              precision=cfg.sampling_precision)
            _attribute_png(pipe, cfg, spec, stage / "attributes.png")
            if ctx.phase == "final" and epoch == report.epochs:
                family.save_pretrained(stage / "pipeline")  # EMA weights: what gets registered
        sampled = time.perf_counter() - started
        result = ctx.pool.score(images, conditions.levels, conditions.captions, real) if ctx.pool else None
        samples_png(images, stage / "samples.png")
        shutil.copytree(report.checkpoint, stage / "engine", copy_function=_link_or_copy)
        metrics = _epoch_metrics(report, result, epoch, sampled, time.perf_counter() - started)
        describe = {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
                    for k, v in family.describe().items()}
        (stage / "report.json").write_text(json.dumps({"epoch": epoch, "trial_id": trial_id, "phase": ctx.phase,
                                                       "describe": describe, "placement": placement}))
        if ctx.phase == "grid":
            fail_once(Path(ctx.marker_dir or tempfile.gettempdir()), trial_id, report.epoch)
        report_to(metrics, stage)
        shutil.rmtree(stage, ignore_errors=True)
        return False

    try:
        workers = placement["loader_workers"]
        fit(family, dataclasses.replace(train_config(cfg, spec, ctx.epochs), num_workers=workers), train_set,
            on_epoch=on_epoch,
            checkpoint_dir=work / "engine", resume=resume, val_dataset=val_set)
    except DivergedError as err:
        # not retried (it would diverge again, deterministically): reported once, the driver closes the trial's
        # MLflow run FAILED with this reason, and the grid goes on without it
        report_to({"diverged": 1.0, "diverged_reason": str(err), cfg_metric(ctx): float("nan")}, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _epoch_metrics(report, result, epoch: int, sampled: float, evaluated: float) -> dict[str, Any]:
    """What one epoch reports: the engine's losses, the timings and the evaluation actors' scores."""
    metrics: dict[str, Any] = {**report.metrics(), "epoch": epoch, "sample_seconds": sampled,
                               "eval_seconds": evaluated}
    # (global optimizer step, mean loss of its loss_every window): the driver logs them as train_loss_step
    metrics[STEP_LOSSES] = [[int(s), float(v)] for s, v in report.step_losses]
    if result is not None:
        metrics.update(result.values)
        metrics.update(result.counts)  # sample counts, e.g. fd_estimator_n: recorded with every value
        metrics["unavailable"] = dict(result.unavailable)
    return metrics


def cfg_metric(ctx: TrialContext) -> str:
    """The metric Tune ranks this phase by (a diverged trial reports it as NaN, which ranking skips)."""
    return ctx.metric or ctx.sweep.select_metric


def where_am_i() -> dict[str, Any]:
    """The Ray node and the resources this worker holds (logged as tags: which node ran what, with which GPU)."""
    import ray

    try:
        rt = ray.get_runtime_context()
        return {"node_id": rt.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "resources": {k: float(v) for k, v in rt.get_assigned_resources().items()},
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    except Exception:  # outside Ray (a direct call in tests)
        return {}


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def samples_png(images, path: Path) -> None:
    """The generated images as an 8-wide grid, upscaled to at least 64 px per face."""
    from models.sampling import image_grid, save_png

    size = images.shape[1]
    save_png(image_grid(images, ncols=8, scale=max(1, 64 // size)), path)


def _attribute_png(pipe, cfg: SweepConfig, spec: TrialSpec, path: Path) -> None:
    """The study's picture: one row per attribute, level 0..5 left to right (DDPM: levels; SD: captions)."""
    from data.catalogue import text_conditioned
    from data.synthetic_captions import level_captions
    from models.sampling import attribute_grid, attribute_sweep, save_png

    captions = level_captions(attribute_sweep()) if text_conditioned(cfg.model) else None
    save_png(attribute_grid(pipe, spec.guidance_scale, cfg.sampling_steps, cfg.seed, cfg.sampler, captions=captions,
                            ddpm_variance=cfg.ddpm_variance, precision=cfg.sampling_precision), path)
