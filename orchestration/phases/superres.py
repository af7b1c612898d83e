"""Figure 4.10 (optional, `--superres`): the final model's samples upscaled to 256 px by DeepFloyd IF stage II.

The study upscaled "some" of its generated images this way (§4.3). Here SHOWN samples of the final comparison's
conditions are drawn at the final guidance scale and passed through IF stage II (models.superres) in a Ray task
with the final run's resources. Where the weights are not here, the nested run `<family>: super-resolution`
records `superres` unavailable with the reason, and the report says so. Nothing is downloaded.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from data.catalogue import TAG_PREFIX
from orchestration.config import SweepConfig
from orchestration.phases.nested import nested_run
from orchestration.resources import plan_resources

SHOWN = 8


def _superres(model: str, pipeline_dir: str, data_root: str, seed: int, guidance: float, sampler: str, steps: int,
              ddpm_variance: str, precision: str, superres: str, threads: int) -> tuple[Any, Any, str]:
    """(the samples, their 256 px versions, "") or (None, None, why IF stage II is unavailable)."""
    from evaluation.conditions import paired_conditions
    from models.families import load_pipeline
    from models.runtime import configure_torch, resolve_device
    from models.sampling import generate
    from models.superres import SuperResUnavailable, load_superres, upscale

    configure_torch(threads)
    try:
        upscaler = load_superres(superres)
    except SuperResUnavailable as err:
        return None, None, str(err)
    device = resolve_device()
    pipe = load_pipeline(model, pipeline_dir).to(device)
    pipe.set_progress_bar_config(disable=True)
    conditions = paired_conditions(data_root, SHOWN, split="val", seed=seed)
    low = generate(pipe, conditions.levels, conditions.captions, guidance, steps, seed, sampler,
                   ddpm_variance=ddpm_variance, precision=precision)
    return low, upscale(upscaler.to(device), low, conditions.captions, seed), ""


def run_superres(continuing: bool, sweep, cfg: SweepConfig, final: dict, tags: dict[str, str]) -> dict:
    """The super-resolution phase as a unit (rerun when continued: it logs two PNGs or one reason)."""
    from orchestration.evaluate import in_task
    from orchestration.trainable import samples_png

    tracker = sweep.tracker
    params = {"superres": cfg.superres, "samples": SHOWN, "guidance_scale": final["guidance_scale"],
              "sampler": cfg.sampler, "sampling_steps": cfg.sampling_steps, "seed": cfg.seed + 1,
              "model_uri": final["model_uri"]}
    with nested_run(tracker, f"{sweep.parent}/{cfg.model}/superres", f"{cfg.model}: super-resolution",
                    sweep.parent, {**tags, f"{TAG_PREFIX}phase": "superres"}, params) as run_id:
        low, high, reason = in_task(_superres, plan_resources(cfg).lone, model=cfg.model,
                                    pipeline_dir=final["pipeline_dir"], data_root=sweep.data_root, seed=cfg.seed + 1,
                                    guidance=final["guidance_scale"], sampler=cfg.sampler, steps=cfg.sampling_steps,
                                    ddpm_variance=cfg.ddpm_variance, precision=cfg.sampling_precision,
                                    superres=cfg.superres)
        if reason:
            print(f"{cfg.model}: super-resolution unavailable: {reason}", flush=True)
            tracker.log_unavailable(run_id, {"superres": reason})
            return {"available": False, "reason": reason}
        with tempfile.TemporaryDirectory(prefix="condface-superres-") as tmp:
            for name, images in (("samples", low), ("superres", high)):
                png = Path(tmp) / f"{name}.png"
                samples_png(images, png)
                tracker.log_artifact(run_id, png, "superres")
                tracker.log_image(run_id, png, key=f"superres_{name}", step=0)
    return {"available": True, "reason": ""}


__all__ = ["run_superres", "SHOWN"]
