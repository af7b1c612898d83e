"""Sampling pipeline of the attribute DDPM with classifier-free guidance.

It imports its U-Net class (`models.unet_attribute`) itself, so `AttributeDiffusionPipeline.from_pretrained`
works in a process that imported nothing else (diffusers finds a saved component's class only in an
imported module). Pipelines saved before the U-Net had its own module name it `models.ddpm.AttributeUNet`;
`from_pretrained` loads those too, without importing `models.ddpm` (which imports this module).
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from data.schema import as_cond
from models.schedulers import float64_alpha_bar
from models.unet_attribute import AttributeUNet

LEGACY_UNET_MODULES = ("models.ddpm",)  # where saved model_index.json files may say AttributeUNet lives


class AttributeDiffusionPipeline(DiffusionPipeline):
    """Generate faces for attribute levels (B, 5) or condition vectors (B, 30).

    Components: `unet` (models.unet_attribute.AttributeUNet) and `scheduler` (any diffusers scheduler;
    swap with `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)` or
    `models.schedulers.make_scheduler`, which also sets pixel-space clipping).

    Cost: one U-Net forward pass per step (both classifier-free-guidance halves in one batch of 2B).
    """

    model_cpu_offload_seq = "unet"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        folder = Path(pretrained_model_name_or_path)
        if (folder / "model_index.json").is_file():
            index = json.loads((folder / "model_index.json").read_text())
            library = index.get("unet", [None])[0]
            if library in LEGACY_UNET_MODULES and library not in sys.modules:
                return cls._from_legacy_folder(folder, index, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _from_legacy_folder(cls, folder: Path, index: dict, **kwargs) -> AttributeDiffusionPipeline:
        """A local folder whose model_index.json names `models.ddpm` for the U-Net: diffusers would refuse it
        unless that module were imported, so its two components are loaded directly."""
        import diffusers

        unet = kwargs.get("unet") or AttributeUNet.from_pretrained(folder / "unet")
        scheduler = kwargs.get("scheduler") or getattr(diffusers, index["scheduler"][1]).from_pretrained(
            folder / "scheduler")
        dtype = kwargs.get("torch_dtype") or kwargs.get("dtype")
        if dtype is not None:
            unet.to(dtype)
        return cls(unet=unet, scheduler=scheduler)

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def guided_prediction(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor, guidance_scale: float
    ) -> torch.Tensor:
        """eps = s * eps(x|c) + (1 - s) * eps(x|0), both halves in ONE batched forward pass."""
        both = self.unet(torch.cat([sample, sample]), timestep, torch.cat([cond, torch.zeros_like(cond)])).sample
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
        cond = as_cond(attributes).to(device=device, dtype=dtype)
        size = self.unet.config.sample_size
        shape = (cond.shape[0], self.unet.config.in_channels, size, size)
        image = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * self.scheduler.init_noise_sigma

        float64_alpha_bar(self.scheduler)  # no NaN from alpha_bar flushed to 0 at T = 10,000 (models.schedulers)
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
