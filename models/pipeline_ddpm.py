"""Sampling pipeline of the attribute DDPM with classifier-free guidance."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from data.schema import as_cond


class AttributeDiffusionPipeline(DiffusionPipeline):
    """Generate faces for attribute levels (B, 5) or condition vectors (B, 30).

    Components: `unet` (models.ddpm.AttributeUNet) and `scheduler` (any diffusers scheduler; swap
    with `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)` or
    `models.schedulers.make_scheduler`, which also sets pixel-space clipping).
    """

    model_cpu_offload_seq = "unet"

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        import models.ddpm  # noqa: F401  (diffusers finds a component's class only in an imported module)

        return super().from_pretrained(*args, **kwargs)

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
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample one image per row of `attributes`.

        guidance_scale: 1 = purely conditional (one forward per step, no CFG), 0 = unconditional,
        > 1 = guided (the study found 3-4 best). output_type: "pil" (list of PIL images),
        "np" (float32 (B, H, W, 3) in [0, 1]) or "pt" (float (B, 3, H, W) in [0, 1]).
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        device, dtype = self._execution_device, self.unet.dtype
        cond = as_cond(attributes).to(device=device, dtype=dtype)
        size = self.unet.config.sample_size
        shape = (cond.shape[0], self.unet.config.in_channels, size, size)
        image = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * self.scheduler.init_noise_sigma

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
