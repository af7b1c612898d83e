"""The attribute DDPM's sampling pipeline as self-contained code (numpy, torch and diffusers only).

A saved DDPM folder carries this file as `pipeline.py` and `models/unet_attribute.py` as
`unet/unet_attribute.py`, and its `model_index.json` names them (`"_class_name": ["pipeline",
"AttributeDiffusionPipeline"]`, `"unet": ["unet_attribute", "AttributeUNet"]`) -- diffusers' convention
for custom pipelines and components shared on the Hub -- so that plain diffusers loads the folder in a
process that has never imported this project:

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    images = pipe([[0, 1, 2, 3, 4]], guidance_scale=3.0, num_inference_steps=25).images  # PIL images

Nothing here may import `data.` or `models.` (the saved copy could not find them): the little it needs
from them -- the attribute order, the 30-value condition vector, alpha_bar in float64 -- is written out
here, and tests check that it agrees with `data.schema` and `models.schedulers`.
`models.pipeline_ddpm.AttributeDiffusionPipeline` is this class plus the project's loading and saving.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

ATTRIBUTES = ("bangs", "eyeglasses", "beard", "smiling", "age")  # data.schema.ATTRIBUTES
NUM_LEVELS = 6  # levels 0..5 of each attribute
COND_DIM = len(ATTRIBUTES) * NUM_LEVELS  # five one-hot blocks; all zeros = unconditional


def as_cond(attributes) -> torch.Tensor:
    """Levels (B, 5), integers 0..5 in ATTRIBUTES order, or condition vectors (B, 30) -> float (B, 30)."""
    t = torch.as_tensor(np.asarray(attributes) if not isinstance(attributes, torch.Tensor) else attributes)
    if t.ndim != 2 or t.shape[-1] not in (len(ATTRIBUTES), COND_DIM):
        raise ValueError(f"attributes must be levels (B, {len(ATTRIBUTES)}) or condition vectors (B, {COND_DIM}), "
                         f"got {tuple(t.shape)}")
    if t.shape[-1] == COND_DIM:
        return t.to(torch.float32)
    if t.numel() and (t.min() < 0 or t.max() >= NUM_LEVELS):
        raise ValueError(f"attribute levels must be in 0..{NUM_LEVELS - 1}, got {t.min().item()}..{t.max().item()}")
    if t.numel() and t.is_floating_point() and not torch.equal(t, t.round()):
        raise ValueError("attribute levels must be integers")
    return torch.nn.functional.one_hot(t.long(), NUM_LEVELS).to(torch.float32).flatten(-2)


def float64_alpha_bar(scheduler):
    """Recompute a DDPM/DDIM/DPM-Solver scheduler's alpha_bar (and what DPM-Solver derives from it) in float64,
    in place, so that alpha_bar ~1e-44 (T = 10,000, unscaled betas) is not flushed to 0. Idempotent; other
    schedulers, and zero-terminal-SNR schedules (which end at exactly 0 by design), are returned unchanged.
    (Why: `models.schedulers`, which re-exports this function.)"""
    if not isinstance(scheduler, DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler):
        return scheduler
    if getattr(scheduler.config, "rescale_betas_zero_snr", False):
        return scheduler
    alpha_bar = scheduler.alphas_cumprod
    if alpha_bar.dtype == torch.float64:
        return scheduler
    alpha_bar = torch.cumprod(1.0 - scheduler.betas.to(torch.float64), dim=0)
    scheduler.alphas_cumprod = alpha_bar
    if isinstance(scheduler, DPMSolverMultistepScheduler):
        scheduler.alpha_t = alpha_bar.sqrt()
        scheduler.sigma_t = (1 - alpha_bar).sqrt()
        scheduler.lambda_t = scheduler.alpha_t.log() - scheduler.sigma_t.log()
        scheduler.sigmas = ((1 - alpha_bar) / alpha_bar) ** 0.5
    return scheduler


class AttributeDiffusionPipeline(DiffusionPipeline):
    """Generate faces for attribute levels (B, 5) or condition vectors (B, 30).

    Components: `unet` (AttributeUNet: `unet/unet_attribute.py` in a saved folder, `models.unet_attribute`
    in the project) and `scheduler` (any diffusers scheduler; swap with
    `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`; in the project
    `models.schedulers.make_scheduler` also sets pixel-space clipping).

    Cost: one U-Net forward pass per step (both classifier-free-guidance halves in one batch of 2B).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def encode_condition(self, attributes) -> torch.Tensor:
        """The network's condition input for the rows asked for: here the (B, 30) attribute vectors."""
        return as_cond(attributes)

    def unconditional(self, cond: torch.Tensor) -> torch.Tensor:
        """The "no condition" input of the same shape as `cond`, the one classifier-free guidance trained: zeros."""
        return torch.zeros_like(cond)

    def guided_prediction(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor, guidance_scale: float
    ) -> torch.Tensor:
        """eps = s * eps(x|c) + (1 - s) * eps(x|0), both halves in ONE batched forward pass."""
        both = self.unet(torch.cat([sample, sample]), timestep, torch.cat([cond, self.unconditional(cond)])).sample
        eps_cond, eps_uncond = both.chunk(2)
        return guidance_scale * eps_cond + (1.0 - guidance_scale) * eps_uncond

    @torch.no_grad()
    def __call__(
        self,
        attributes: np.ndarray | torch.Tensor,
        guidance_scale: float = 3.0,
        num_inference_steps: int | None = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample one image per row of `attributes`.

        guidance_scale: 1 = purely conditional (one forward per step, no CFG), 0 = unconditional,
        > 1 = guided (the study found 3-4 best). output_type: "pil" (list of PIL images),
        "np" (float32 (B, H, W, 3) in [0, 1]) or "pt" (float (B, 3, H, W) in [0, 1]).
        num_inference_steps: None = the whole chain (the scheduler's num_train_timesteps, the study's DDPM).
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if num_inference_steps is None:
            num_inference_steps = self.scheduler.config.num_train_timesteps
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        device, dtype = self._execution_device, self.unet.dtype
        cond = self.encode_condition(attributes).to(device=device, dtype=dtype)
        size = self.unet.config.sample_size
        shape = (cond.shape[0], self.unet.config.in_channels, size, size)
        image = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * self.scheduler.init_noise_sigma

        float64_alpha_bar(self.scheduler)  # no NaN from alpha_bar flushed to 0 at T = 10,000
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(image, t)
            if guidance_scale == 1.0:
                eps = self.unet(model_input, t, cond).sample
            else:
                eps = self.guided_prediction(model_input, t, cond, guidance_scale)
            image = self.scheduler.step(eps, t, image, **step_kwargs).prev_sample

        image = (image.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            out = image
        else:
            out = image.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                out = self.numpy_to_pil(out)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)
