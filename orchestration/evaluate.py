"""Sample a saved pipeline on a fixed set of conditions and score it: the final comparison and the CFG sweep.

Runs as a Ray task with the resources of a trial (a GPU on a cluster), so the driver stays light.
Metrics come from the evaluation actors; the images come back (small uint8 arrays) for the PNGs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Scored:
    guidance_scale: float
    values: dict[str, float]
    unavailable: dict[str, str]
    counts: dict[str, int]
    images: np.ndarray = field(repr=False)  # uint8 (N, H, W, 3)
    levels: np.ndarray = field(repr=False)
    sampler: str = ""
    steps: int = 0  # the steps actually taken (the model's T for a full-chain request)
    seconds: float = 0.0  # sampling wall time
    tables: dict[str, dict[str, list]] = field(default_factory=dict, repr=False)  # est_confusion: attribute -> 6x6

    def record(self) -> dict[str, Any]:
        """JSON-able (no images): what sweep.json and the summary keep."""
        return {"guidance_scale": self.guidance_scale, "values": self.values, "unavailable": self.unavailable,
                "counts": self.counts, "sampler": self.sampler, "steps": self.steps, "seconds": self.seconds}


def sample_and_score(model: str, pipeline_dir: str, data_root: str, n: int, seed: int,
                     settings: list[tuple[str, int, float]], pool: Any, ddpm_variance: str = "fixed_small",
                     threads: int = 0, precision: str = "no") -> list[Scored]:
    """For each (sampler, steps, guidance scale): one image per condition of a seeded paired set, scored.
    The pipeline runs on the device this task was given (`models.runtime.resolve_device`)."""
    from evaluation.conditions import paired_conditions
    from models.families import load_pipeline
    from models.runtime import configure_torch, resolve_device
    from models.sampling import generate, inference_steps

    configure_torch(threads)
    pipe = load_pipeline(model, pipeline_dir).to(resolve_device())
    pipe.set_progress_bar_config(disable=True)
    conditions = paired_conditions(data_root, n, split="val", seed=seed)
    real = conditions.real_images
    out = []
    for sampler, steps, scale in settings:
        started = time.perf_counter()
        images = generate(pipe, conditions.levels, conditions.captions, scale, steps, seed, sampler,
                          ddpm_variance=ddpm_variance, precision=precision)
        seconds = time.perf_counter() - started
        result = pool.score(images, conditions.levels, conditions.captions, real)
        out.append(Scored(float(scale), dict(result.values), dict(result.unavailable), dict(result.counts), images,
                          conditions.levels, sampler, int(inference_steps(pipe, steps)), seconds,
                          dict(result.tables)))
    return out


def in_task(fn, resources: dict[str, float], **kwargs):
    """`fn(**kwargs, threads=<the task's CPUs>)` as a Ray task holding `resources` (e.g. {"cpu": 2} or
    {"cpu": 1, "gpu": 1}), so the driver stays light and the work gets a trial's GPU on a cluster."""
    import ray

    task = ray.remote(fn).options(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0),
                                  max_retries=0)
    try:
        return ray.get(task.remote(threads=int(resources.get("cpu", 1)), **kwargs))
    except ray.exceptions.RayTaskError as err:  # a user error raised in the task reaches the user as its one line
        if user_error(err.cause):
            raise err.cause from None
        raise


def user_error(err: BaseException | None) -> bool:
    """The layers' one-line errors (bad settings, data, evaluation inputs), as opposed to bugs."""
    from data.errors import DataError
    from evaluation.errors import EvalError
    from models.errors import ConfigError
    from orchestration.errors import SweepError

    return isinstance(err, (DataError, EvalError, ConfigError, SweepError))


def estimator_task(data_root: str, preset: str, threads: int = 0) -> dict[str, Any]:
    """`ensure_estimator` where Ray put this task: {"path": the estimator's directory, "resources": what the task
    held}. Trained on the task's device, the GPU it was given or its CPUs, never in the driver."""
    from evaluation.estimator_cache import ensure_estimator
    from models.runtime import configure_torch
    from orchestration.trainable import where_am_i

    configure_torch(threads)
    # no progress bars: through Ray's log forwarding each redraw is a line of the driver's output; the per-epoch
    # lines say how it goes
    path = ensure_estimator(data_root, preset, progress=False)
    return {"path": str(path), "resources": where_am_i().get("resources", {})}


def offline_base_task(model: str, config: Any, threads: int = 0) -> str | None:
    """Build the tiny offline base `config` falls back to (cached: a no-op once built) where Ray put this task, with
    all its CPUs: otherwise the first trial that needs it builds it on one CPU while the others wait on its lock.
    The folder, or None when `config` names real weights."""
    from models.families import family_spec
    from models.runtime import configure_torch

    configure_torch(threads)
    path = family_spec(model).offline_base(config)
    return None if path is None else str(path)


def run_remote(resources: dict[str, float], **kwargs) -> list[Scored]:
    """`sample_and_score` in a Ray task holding `resources`."""
    return in_task(sample_and_score, resources, **kwargs)
