"""The vae phase (--tune-vae, sd-lora): the base's VAE tuned on the training images at the data's resolution, before
the family's reference row and grid, so that every LoRA of the sweep trains on the tuned VAE's latents.

The study blames SD Nano's VAE (trained at 128 px) for the detail its 64 px samples lack and proposes this
tuning as future work (§4.2, §5). One Ray task with the lone-task resources tunes it (models.vae_tune) and
measures both VAEs on the same held-out images: PSNR of the reconstructions, and the evaluation actors'
metrics on them against the real images (the FID stand-in, and the attribute estimator's accuracy: what
any latent model of this base can at best show). The nested run `<family>: VAE tuned at <size>px` holds
the loss per step, `base_vae.*` and `tuned_vae.*`, the tuned VAE and the study's Figure 3.1 regenerated.
The tuned VAE is saved under the sweep's directory; the phase's result names it, and the driver passes it
on to the family's config (a resumed sweep skips a done phase and reuses the VAE it recorded).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from data.catalogue import TAG_PREFIX
from orchestration.config import SweepConfig
from orchestration.phases.nested import nested_run
from orchestration.report.vae_figure import ARTIFACT, draw_vae_figure
from orchestration.resources import plan_resources

EVALUATED_STEP = "vae_evaluated"  # the step metric that makes the before/after metrics log once per run
FIGURE_IMAGES = 8  # columns of Figure 3.1


def _measure(vae, images, conditions, pool) -> tuple[dict[str, float], dict[str, str], np.ndarray]:
    """(metrics, unavailable, uint8 reconstructions) of `vae` on the held-out `images` (model range)."""
    from data.dataset import to_uint8
    from models.vae_tune import latent_std, psnr, reconstruct

    recon = to_uint8(reconstruct(vae, images))
    real = conditions.real_images
    scored = pool.score(recon, conditions.levels, conditions.captions, real)
    return ({"psnr": psnr(recon, real), "latent_std": latent_std(vae, images), **scored.values},
            dict(scored.unavailable), recon)


def tune_and_measure(lora, tune, data_root: str, out: str, n: int, seed: int, pool, threads: int = 0
                     ) -> dict[str, Any]:
    """In a Ray task: tune the VAE of `lora`'s base on the training images, save it at `out`, and measure the base
    and tuned VAEs on n seeded validation images (their first FIGURE_IMAGES come back for Figure 3.1)."""
    import torch

    from data.dataset import FaceDataset, to_model_range
    from evaluation.conditions import paired_conditions
    from models.runtime import configure_torch, resolve_device
    from models.sd_lora import load_base
    from models.vae_tune import perceptual_loss, save_vae, tune_vae

    configure_torch(threads)
    device = resolve_device()
    pipe, description = load_base(lora)
    vae = pipe.vae.to(device)
    conditions = paired_conditions(data_root, n, split="val", seed=seed)
    held_out = to_model_range(conditions.real_images)
    before, unavailable, base_recon = _measure(vae, held_out, conditions, pool)

    images = FaceDataset(data_root, "train", limit=tune.train_images)
    perceptual, why = perceptual_loss(tune.perceptual_weight)
    if why:
        unavailable["lpips_term"] = why
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        history = tune_vae(vae, images, tune, perceptual=perceptual, device=device)
    seconds = time.perf_counter() - started
    after, more, tuned_recon = _measure(vae, held_out, conditions, pool)
    unavailable.update(more)
    save_vae(vae.cpu(), out, {"tuning": dataclasses.asdict(tune), "base": description, "image_size": lora.image_size,
                              "train_images": len(images), "seconds": round(seconds, 1),
                              "base_vae": before, "tuned_vae": after})
    k = FIGURE_IMAGES
    return {"before": before, "after": after, "unavailable": unavailable, "history": history, "seconds": seconds,
            "train_images": len(images), "real": conditions.real_images[:k], "base": base_recon[:k],
            "tuned": tuned_recon[:k]}


def vae_phase(continuing: bool, sweep, cfg: SweepConfig, tags: dict[str, str]) -> dict[str, Any]:
    """The phase as a unit: rerun when continued (the loss series and the metrics are each logged once)."""
    from models.sd_lora import base_summary
    from models.vae_tune import vae_tune_config
    from orchestration.evaluate import in_task
    from orchestration.grid import grid_trials
    from orchestration.trainable import model_config

    tracker = sweep.tracker
    tune = vae_tune_config(cfg.vae_preset, seed=cfg.seed)
    lora = model_config(dataclasses.replace(cfg, vae=None), grid_trials(cfg)[0])
    out = sweep.state.dir(f"{cfg.model}/vae") / "tuned"
    params = {**{f"vae.{k}": v for k, v in dataclasses.asdict(tune).items()}, "base": base_summary(lora),
              "image_size": cfg.image_size, "eval_samples": cfg.final_samples, "data": cfg.data}
    name = f"{cfg.model}: VAE tuned at {cfg.image_size}px"
    with nested_run(tracker, f"{sweep.parent}/{cfg.model}/vae", name, sweep.parent,
                    {**tags, f"{TAG_PREFIX}phase": "vae"}, params) as run_id:
        print(f"\n== {name}: {tune.steps} steps of {tune.batch_size} training images, measured on "
              f"{cfg.final_samples} validation images ==", flush=True)
        r = in_task(tune_and_measure, plan_resources(cfg).lone, lora=lora, tune=tune, data_root=sweep.data_root,
                    out=str(out), n=cfg.final_samples, seed=cfg.seed + 1, pool=sweep.pool)
        for key in ("loss", "rec", "kl", "lpips"):
            tracker.log_series(run_id, f"vae_{key}", [(row["step"], row[key]) for row in r["history"] if key in row])
        tracker.log_metrics(run_id, {**{f"base_vae.{k}": v for k, v in r["before"].items()},
                                     **{f"tuned_vae.{k}": v for k, v in r["after"].items()},
                                     "tune_seconds": r["seconds"]}, step=0, step_metric=EVALUATED_STEP)
        tracker.log_unavailable(run_id, r["unavailable"])
        png = draw_vae_figure(r["real"], r["base"], r["tuned"], sweep.state.dir(f"{cfg.model}/vae") / Path(ARTIFACT).name,
                              f"{cfg.model}: real images, the base VAE's and the tuned VAE's reconstructions at "
                              f"{cfg.image_size}px", r["before"], r["after"])
        tracker.log_artifact(run_id, png, Path(ARTIFACT).parent.name)
        tracker.log_image(run_id, png, "vae_reconstructions", step=0)
        tracker.log_artifact(run_id, out, "vae/tuned")
    result = {"run_id": run_id, "vae_dir": str(out), "base_vae": r["before"], "tuned_vae": r["after"],
              "unavailable": r["unavailable"], "png": str(png), "seconds": r["seconds"], "samples": cfg.final_samples}
    print(vae_line(cfg.model, result), flush=True)
    return result


def vae_line(family: str, result: dict[str, Any]) -> str:
    """One line: the base and tuned VAEs' reconstruction metrics (the phase's result), for the terminal."""
    before, after = result["base_vae"], result["tuned_vae"]
    shown = [k for k in ("psnr", "fd_estimator", "est_acc_balanced") if k in before and k in after]
    return (f"{family} VAE, base -> tuned, on {result.get('samples', '?')} validation images: "
            + ", ".join(f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in shown)
            + f" ({result['seconds']:.0f}s of tuning; Figure 3.1: {result['png']})")


__all__ = ["vae_phase", "tune_and_measure", "vae_line"]
