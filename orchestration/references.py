"""The reference rows of the study's Table 3.1 for this sweep's final sample set (evaluation.reference's rows).

untrained: the family with random weights (for sd-lora: the base before LoRA), asked for the final
comparison's conditions; ground_truth: the real validation images of those conditions (FID 0, as in
the study); real_held_out: real test images against them, the floor a sample of this size reaches.
Computed once per experiment in a Ray task with the trial resources, by the same Scorer code.
"""

from __future__ import annotations

from typing import Any

from orchestration.config import SweepConfig

ROWS = ("untrained", "ground_truth", "real_held_out")


def _references(cfg: SweepConfig, data_root: str, eval_config: Any, threads: int,
                rows: tuple[str, ...] = ROWS) -> tuple[dict, dict]:
    from evaluation.conditions import paired_conditions
    from evaluation.reference import ground_truth_row, held_out_row, untrained_row
    from evaluation.scorer import Scorer
    from models.runtime import configure_torch
    from orchestration.grid import grid_trials
    from orchestration.trainable import model_config

    configure_torch(threads)
    scorer = Scorer(eval_config)
    paired = paired_conditions(data_root, cfg.final_samples, split="val", seed=cfg.seed + 1)
    # the first grid trial's model: for the DDPM its weights are random anyway; for sd-lora the adapters start
    # at zero, so this is the base (--pretrained or the preset's) exactly as every trial starts from it
    config = model_config(cfg, grid_trials(cfg)[0])
    build = {
        "untrained": lambda: untrained_row(scorer, paired, cfg.model, config, cfg.sampling_steps, cfg.guidance_scale,
                                           cfg.seed, sampler=cfg.sampler, ddpm_variance=cfg.ddpm_variance,
                                           precision=cfg.sampling_precision),
        "ground_truth": lambda: ground_truth_row(scorer, paired),
        "real_held_out": lambda: held_out_row(scorer, paired, cfg.seed),
    }
    results = {name: build[name]() for name in rows}
    unavailable: dict[str, str] = {}
    for result in results.values():
        unavailable.update(result.unavailable)
    return {name: dict(r.values) for name, r in results.items()}, unavailable


def compute_references(cfg: SweepConfig, data_root: str, eval_config: Any, resources: dict[str, float],
                       rows: tuple[str, ...] = ROWS):
    """({row: metrics} for the named rows of ROWS, unavailable), in a Ray task holding `resources`."""
    from orchestration.evaluate import in_task

    return in_task(_references, resources, cfg=cfg, data_root=data_root, eval_config=eval_config, rows=rows)
