"""The reference rows of the study's Table 3.1 for this sweep's final sample set (evaluation.reference's rows).

untrained: the family with random weights (for sd-lora: the base before LoRA), asked for the final
comparison's conditions; ground_truth: the real validation images of those conditions (FID 0, as in
the study); real_held_out: real test images against them, the floor a sample of this size reaches.
Computed once per experiment in a Ray task with the trial resources, by the same Scorer code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from data.catalogue import FAMILY_INFO, TAG_PREFIX
from orchestration.config import SweepConfig
from orchestration.phases.nested import nested_run
from orchestration.resources import plan_resources

ROWS = ("untrained", "ground_truth", "real_held_out")
SHOWN = 8  # images of each group the reference run logs (reference/<row>.png: the study's Figure 3.4)
SHOWN_ROWS = ("untrained", "ground_truth")


def _references(cfg: SweepConfig, data_root: str, eval_config: Any, threads: int,
                rows: tuple[str, ...] = ROWS) -> tuple[dict, dict, dict]:
    """({row: metrics}, unavailable, {row: its first SHOWN images (uint8)} for the rows in SHOWN_ROWS)."""
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
    # at zero, so this is the base (--pretrained or the preset's) exactly as every trial starts from it. Only the
    # untrained row has a family (the real-image rows are computed with the whole sweep's config).
    generated: list = []
    build = {
        "untrained": lambda: untrained_row(scorer, paired, cfg.model, model_config(cfg, grid_trials(cfg)[0]),
                                           cfg.sampling_steps, cfg.guidance_scale, cfg.seed, sampler=cfg.sampler,
                                           ddpm_variance=cfg.ddpm_variance, precision=cfg.sampling_precision,
                                           shown=generated),
        "ground_truth": lambda: ground_truth_row(scorer, paired),
        "real_held_out": lambda: held_out_row(scorer, paired, cfg.seed),
    }
    results = {name: build[name]() for name in rows}
    unavailable: dict[str, str] = {}
    for result in results.values():
        unavailable.update(result.unavailable)
    shown = {"untrained": generated[0][:SHOWN] if generated else None,
             "ground_truth": paired.real_images[:SHOWN]}
    return ({name: dict(r.values) for name, r in results.items()}, unavailable,
            {name: shown[name] for name in rows if name in SHOWN_ROWS and shown[name] is not None})


def compute_references(cfg: SweepConfig, data_root: str, eval_config: Any, resources: dict[str, float],
                       rows: tuple[str, ...] = ROWS):
    """({row: metrics} for the named rows of ROWS, unavailable, {row: images shown}), in a Ray task holding
    `resources`."""
    from orchestration.evaluate import in_task

    return in_task(_references, resources, cfg=cfg, data_root=data_root, eval_config=eval_config, rows=rows)


def _cached_rows(sweep, key: str, name: str, params: dict[str, Any], tags: dict[str, str], compute) -> dict:
    """A reference run keyed by everything its rows depend on: reused when an identical one FINISHED before. The
    rows returned are the run's (MLflow's) values, also when a rerun computed them again."""
    tracker = sweep.tracker
    existing = tracker.find_run(key)
    if existing is not None and tracker.status(existing) == "FINISHED":
        # the parent names the rows it uses (a reused run's parent is the sweep that computed it): for the report
        tracker.set_tags(sweep.parent, {f"{TAG_PREFIX}reference_run.{tags[f'{TAG_PREFIX}family']}": existing})
        rows: dict[str, dict[str, float]] = {}
        for k, v in tracker.client.get_run(existing).data.metrics.items():
            row, _, metric = k.partition(".")
            rows.setdefault(row, {})[metric] = v
        return rows
    with nested_run(tracker, key, name, sweep.parent, {**tags, f"{TAG_PREFIX}phase": "reference"}, params) as run_id:
        tracker.set_tags(sweep.parent, {f"{TAG_PREFIX}reference_run.{tags[f'{TAG_PREFIX}family']}": run_id})
        computed, unavailable, shown = compute()
        rows = {}
        for row, values in computed.items():  # each value once (a rerun keeps what a killed driver logged)
            logged = tracker.log_once(run_id, {f"{row}.{k}": v for k, v in values.items()})
            rows[row] = {k.partition(".")[2]: v for k, v in logged.items()}
        tracker.log_unavailable(run_id, unavailable)
        _log_shown(tracker, run_id, shown)
    return rows


def _log_shown(tracker, run_id: str, shown: dict) -> None:
    """Each row's first images as reference/<row>.png, an artifact and an image of the run (Figure 3.4)."""
    import tempfile
    from pathlib import Path

    from orchestration.trainable import samples_png

    with tempfile.TemporaryDirectory(prefix="condface-ref-") as tmp:
        for row, images in shown.items():
            png = Path(tmp) / f"{row}.png"
            samples_png(images, png)
            tracker.log_artifact(run_id, png, "reference")
            tracker.log_image(run_id, png, key=f"reference_{row}", step=0)


def _eval_key(sweep) -> dict[str, Any]:
    e = sweep.eval_config
    return {"estimator": e.estimator, "inception_weights": e.inception_weights, "clip_model": e.clip_model,
            "mtcnn": e.mtcnn, "data_root": sweep.data_root, "data": sweep.cfg.data,
            "image_size": sweep.cfg.image_size, "samples": sweep.cfg.final_samples, "seed": sweep.cfg.seed}


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def real_references(continuing: bool, sweep) -> dict[str, dict[str, float]]:
    """Ground truth and real held-out rows: the same real images for every family. Also logs, once, the real
    images of the per-epoch, final and attribute-grid conditions and the study's Figures 3.2 / 3.3 (the training
    images with their levels, the augmentation) to the parent run (real/, for the report)."""
    from orchestration.data_figures import log_data_figures
    from orchestration.real_images import log_real_grids

    cfg = sweep.cfg
    log_real_grids(sweep.tracker, sweep.parent, sweep.data_root, cfg.eval_samples, cfg.final_samples, cfg.seed)
    log_data_figures(sweep.tracker, sweep.parent, sweep.data_root, cfg.augment, cfg.augment_axis, cfg.seed)
    depends = _eval_key(sweep)
    return _cached_rows(
        sweep, f"reference/real/{_digest(depends)}", f"reference: real images ({sweep.cfg.final_samples})",
        {f"ref.{k}": v for k, v in depends.items()}, {f"{TAG_PREFIX}family": "real"},
        lambda: compute_references(sweep.cfg, sweep.data_root, sweep.eval_config, plan_resources(sweep.cfg).lone,
                                   rows=("ground_truth", "real_held_out")))


def family_reference(continuing: bool, sweep, cfg: SweepConfig, tags: dict[str, str]) -> dict[str, float]:
    """The family's untrained row, keyed by the model config (incl. --pretrained), sampler, steps, guidance, and
    the evaluation settings: a row from another base or sampler is never reused."""
    from orchestration.grid import grid_trials
    from orchestration.trainable import model_config

    depends = {**_eval_key(sweep), "model": cfg.model,
               "model_config": dataclasses.asdict(model_config(cfg, grid_trials(cfg)[0])), "sampler": cfg.sampler,
               "sampling_steps": cfg.sampling_steps, "ddpm_variance": cfg.ddpm_variance,
               "sampling_precision": cfg.sampling_precision,
               "guidance_scale": cfg.guidance_scale}
    label = FAMILY_INFO[cfg.model].untrained
    rows = _cached_rows(
        sweep, f"reference/{cfg.model}/{_digest(depends)}", f"reference: {label} ({cfg.final_samples})",
        {f"ref.{k}": v for k, v in depends.items()}, tags,
        lambda: compute_references(cfg, sweep.data_root, sweep.eval_config, plan_resources(cfg).lone,
                                   rows=("untrained",)))
    return rows.get("untrained", {})
