"""Sample a saved pipeline on a fixed set of conditions and score it: the final comparison and the CFG sweep.

Runs as a Ray task with the resources of a trial (a GPU on a cluster), so the driver stays light.
Metrics come from the evaluation actors; the images come back (small uint8 arrays) for the PNGs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Scored:
    guidance_scale: float
    values: dict[str, float]
    unavailable: dict[str, str]
    counts: dict[str, int]
    images: np.ndarray = field(repr=False)  # uint8 (N, H, W, 3)
    levels: np.ndarray = field(repr=False)


def sample_and_score(model: str, pipeline_dir: str, data_root: str, n: int, seed: int, scales: list[float],
                     sampler: str, steps: int, pool: Any, threads: int = 0) -> list[Scored]:
    """For each guidance scale: generate one image per condition of a seeded paired set, score it."""
    from evaluation.conditions import paired_conditions
    from models.families import load_pipeline
    from models.runtime import configure_torch
    from models.sampling import generate

    configure_torch(threads)
    pipe = load_pipeline(model, pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    conditions = paired_conditions(data_root, n, split="val", seed=seed)
    real = conditions.real_images
    out = []
    for scale in scales:
        images = generate(pipe, conditions.levels, conditions.captions, scale, steps, seed, sampler)
        result = pool.score(images, conditions.levels, conditions.captions, real)
        out.append(Scored(float(scale), dict(result.values), dict(result.unavailable), dict(result.counts), images,
                          conditions.levels))
    return out


def in_task(fn, resources: dict[str, float], **kwargs):
    """`fn(**kwargs, threads=<the task's CPUs>)` as a Ray task holding `resources` (e.g. {"cpu": 2} or
    {"cpu": 1, "gpu": 1}), so the driver stays light and the work gets a trial's GPU on a cluster."""
    import ray

    task = ray.remote(fn).options(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0))
    return ray.get(task.remote(threads=int(resources.get("cpu", 1)), **kwargs))


def run_remote(resources: dict[str, float], **kwargs) -> list[Scored]:
    """`sample_and_score` in a Ray task holding `resources`."""
    return in_task(sample_and_score, resources, **kwargs)
