"""The reference rows of the study's Table 3.1 for this sweep's final sample set, scored by the same actors.

untrained: the family with random weights (the study's "untrained DDPM"; for sd-lora, the base
without LoRA) sampled on the final-comparison conditions at the sweep's guidance scale.
ground_truth: the real validation images of those conditions, scored as if generated (FID 0 by
construction: the real half is the same images, as in the study).
"""

from __future__ import annotations

from typing import Any

from orchestration.config import SweepConfig
from orchestration.grid import grid_trials


def _references(cfg: SweepConfig, data_root: str, pool: Any, threads: int) -> tuple[dict, dict]:
    import torch

    from evaluation.conditions import paired_conditions
    from models.families import build_family
    from models.sampling import generate
    from orchestration.trainable import model_config

    if threads:
        torch.set_num_threads(threads)
    conditions = paired_conditions(data_root, cfg.final_samples, split="val", seed=cfg.seed + 1)
    real = conditions.real_images
    spec = grid_trials(cfg)[0].resolved(cfg)
    family = build_family(cfg.model, model_config(cfg, spec), seed=cfg.seed)
    family.module.eval()
    images = generate(family, conditions.levels, conditions.captions, cfg.guidance_scale, cfg.sampling_steps,
                      cfg.seed + 1, cfg.sampler)
    untrained = pool.score(images, conditions.levels, conditions.captions, real)
    truth = pool.score(real, conditions.levels, conditions.captions, real)
    rows = {"untrained": dict(untrained.values), "ground_truth": dict(truth.values)}
    return rows, {**truth.unavailable, **untrained.unavailable}


def compute_references(cfg: SweepConfig, data_root: str, pool: Any, resources: dict[str, float]):
    """({"untrained": metrics, "ground_truth": metrics}, unavailable) computed in a Ray task."""
    import ray

    task = ray.remote(_references).options(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0))
    return ray.get(task.remote(cfg, data_root, pool, int(resources.get("cpu", 1))))
