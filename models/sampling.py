"""The sampling API every family shares, and attribute sample grids.

`generate` takes a family (its current weights; inside `fit` use `with report.sampling() as pipe`
to get the EMA weights) or a loaded pipeline, and returns uint8 images. Attribute pipelines
(the DDPM) are conditioned on `levels`; text pipelines (SD + LoRA, the pixel text DDPM) on `captions`.

Steps: `num_inference_steps=FULL_CHAIN` (0) or None samples over the whole chain, as many steps as
the model's num_train_timesteps T -- the study's DDPM ancestral sampling (§2.1: it "necessarily"
takes T steps). `inference_steps(model, steps)` resolves a step setting to the number actually run.
The DDPM sampler's variance is `ddpm_variance`: "fixed_small" (beta-tilde_t, diffusers' default) or
"fixed_large" (sigma_t^2 = beta_t, the study's §2.1 formula); see `models.schedulers`.

Cost: every sampler here (DDPM, DDIM, DPM-Solver++ 2M) runs ONE U-Net forward pass per step, and
both pipelines batch the two classifier-free-guidance halves into that one pass (a batch of 2B; with
guidance off -- guidance_scale 1 for the attribute pipeline, <= 1 for Stable Diffusion's -- a batch
of B). So U-Net forward passes per sampling call = inference_steps(model, steps), whatever the
batch, and per image the network sees 2 x steps image-rows with guidance, steps without (the NFE
convention of `models.bench`).

Precision: `precision` "no" (fp32, the default of a plain `generate` call), "bf16" (autocast, always) or "auto"
(bf16 on GPUs and CPUs with native bf16: sampling promises no bit-level equivalences, and bf16 was faster at no
measured cost in quality, see docs/measurements.md). The sweep samples with its `sampling_precision` ("auto");
the scheduler arithmetic stays in fp32, only the denoiser runs in bf16.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image, ImageDraw

from data.io import atomic_write_bytes
from data.schema import ATTRIBUTES, NUM_LEVELS, check_levels
from data.synthetic_captions import level_captions
from models.errors import ConfigError
from models.family import DiffusionFamily
from models.pipeline_ddpm import AttributeDiffusionPipeline
from models.runtime import MIXED_PRECISIONS, use_bf16
from models.schedulers import make_scheduler

FULL_CHAIN = 0  # num_inference_steps meaning "the whole chain": the model's num_train_timesteps steps


def chain_length(model: Any) -> int:
    """T of `model`: a family, a pipeline, a scheduler, a scheduler config, or a family config dataclass."""
    if isinstance(model, DiffusionFamily):
        model = model.noise_scheduler
    elif isinstance(model, DiffusionPipeline):
        model = model.scheduler
    config = getattr(model, "config", model)
    value = config.get("num_train_timesteps") if isinstance(config, Mapping) else getattr(
        config, "num_train_timesteps", None)
    if value is None:
        raise ConfigError(f"cannot tell the number of diffusion steps T of a {type(model).__name__}")
    return int(value)


def inference_steps(model: Any, steps: int | None) -> int:
    """The number of sampling steps (= U-Net forward passes per sampling call) `steps` means for `model`:
    `steps` itself, or T for None / FULL_CHAIN. `model` as in `chain_length`."""
    if steps is None or steps == FULL_CHAIN:
        return chain_length(model)
    if steps < 0:
        raise ConfigError(f"num_inference_steps must be >= 1, or {FULL_CHAIN} / None for the full chain; got {steps}")
    return int(steps)


def sampling_bf16(precision: str, device: torch.device | str) -> bool:
    """Whether sampling with `precision` runs the denoiser under bf16 autocast on `device`."""
    if precision not in MIXED_PRECISIONS:
        raise ConfigError(f"sampling precision must be one of {', '.join(MIXED_PRECISIONS)}, got {precision!r}")
    return use_bf16(precision, device, "sample")


def generate(
    family_or_pipeline: DiffusionFamily | DiffusionPipeline,
    levels: np.ndarray | None,
    captions: Sequence[str] | None,
    guidance_scale: float,
    num_inference_steps: int | None,
    seed: int,
    scheduler: str = "ddpm",
    batch_size: int = 64,
    progress: bool = False,
    ddpm_variance: str = "fixed_small",
    precision: str = "no",
) -> np.ndarray:
    """uint8 (B, H, W, 3) images, one per condition, sampled with `scheduler` ("ddpm", "ddim", "dpm++").

    num_inference_steps: steps per image; None or FULL_CHAIN (0) = the model's T (full-chain sampling).
    ddpm_variance: the DDPM sampler's sigma_t^2, "fixed_small" (beta-tilde) or "fixed_large" (beta_t, §2.1).
    precision: "no" (fp32), "bf16" or "auto" (see the module's docstring).
    Deterministic for a given (seed, batch_size): one CPU generator drives all batches in order.
    """
    pipe = family_or_pipeline.pipeline() if isinstance(family_or_pipeline, DiffusionFamily) else family_or_pipeline
    attribute = isinstance(pipe, AttributeDiffusionPipeline)
    if attribute:
        if levels is None:
            raise ConfigError("this model is conditioned on attribute levels: pass levels (B, 5)")
        conditions = np.asarray(levels)
        check_levels(conditions)
    else:
        if captions is None:
            raise ConfigError("this model is conditioned on text: pass captions")
        conditions = list(captions)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    steps = inference_steps(pipe, num_inference_steps)
    bf16 = sampling_bf16(precision, pipe.device)

    original = pipe.scheduler
    space = "latent" if getattr(pipe, "vae", None) is not None else "pixel"  # SD samples latents, the others pixels
    pipe.scheduler = make_scheduler(scheduler, original.config, space=space, ddpm_variance=ddpm_variance)
    pipe.set_progress_bar_config(disable=not progress)
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    try:
        for start in range(0, len(conditions), batch_size):
            part = conditions[start : start + batch_size]
            kwargs = dict(guidance_scale=guidance_scale, num_inference_steps=steps, generator=generator,
                          output_type="np")
            with torch.autocast(pipe.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                out = pipe(part, **kwargs) if attribute else pipe(prompt=part, **kwargs)
            chunks.append(np.asarray(out.images))
    finally:
        pipe.scheduler = original
    if not chunks:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return (np.concatenate(chunks) * 255).round().clip(0, 255).astype(np.uint8)


def attribute_sweep(base: Sequence[int] = (0, 0, 0, 0, 0)) -> np.ndarray:
    """Levels for a 5 x 6 grid: row a varies attribute a over levels 0..5, the others stay at `base`."""
    rows = []
    for a in range(len(ATTRIBUTES)):
        for level in range(NUM_LEVELS):
            row = list(base)
            row[a] = level
            rows.append(row)
    return np.asarray(rows, dtype=np.int64)


def image_grid(
    images: np.ndarray, ncols: int, row_labels: Sequence[str] | None = None, scale: int | None = None
) -> Image.Image:
    """Tile uint8 (N, H, W, 3) images into one picture (nearest-neighbour enlarged), labels left of rows."""
    n, h, w, _ = images.shape
    scale = scale or max(1, 64 // h)  # tiles at least 64 px wide
    nrows = -(-n // ncols)
    label_w = 70 if row_labels else 0
    canvas = Image.new("RGB", (label_w + ncols * w * scale, nrows * h * scale), "white")
    draw = ImageDraw.Draw(canvas)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        tile = Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST)
        canvas.paste(tile, (label_w + c * w * scale, r * h * scale))
    for r, label in enumerate(row_labels or []):
        draw.text((4, r * h * scale + h * scale // 2 - 6), label, fill="black")
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically (`data.io.atomic_write_bytes`)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def attribute_grid(
    family_or_pipeline: DiffusionFamily | DiffusionPipeline,
    guidance_scale: float,
    num_inference_steps: int | None,
    seed: int = 0,
    scheduler: str = "ddpm",
    captions: Sequence[str] | None = None,
    ddpm_variance: str = "fixed_small",
    precision: str = "no",
) -> Image.Image:
    """The study's picture: one row per attribute, its level rising 0..5 left to right."""
    levels = attribute_sweep()
    pipe = family_or_pipeline.pipeline() if isinstance(family_or_pipeline, DiffusionFamily) else family_or_pipeline
    if captions is None and not isinstance(pipe, AttributeDiffusionPipeline):
        captions = level_captions(levels, seed)
    images = generate(family_or_pipeline, levels, captions, guidance_scale, num_inference_steps, seed, scheduler,
                      ddpm_variance=ddpm_variance, precision=precision)
    return image_grid(images, NUM_LEVELS, row_labels=list(ATTRIBUTES))
