"""A Stable Diffusion pipeline as an engine family, and the noise schedule it trains with.

`StableDiffusionFamily` trains the whole U-Net of a `StableDiffusionPipeline` (how `models.tiny_base`
pretrains its base); `models.sd_lora.SDLoRAFamily` builds on it, freezes the base and trains LoRA
adapters. It lives in its own module so that imports point one way:
sd_family <- tiny_base <- sd_lora (all of these names stay importable from `models.sd_lora`).

Noise schedule (`training_scheduler`): the base's own scheduler config (betas, prediction type:
epsilon or v) with `num_train_timesteps` = T. For T other than the base's (1000 for SD), the base's
beta_start/beta_end are kept, as diffusers' `DDPMScheduler.from_config(base, num_train_timesteps=T)`
gives them and as the study trained: T = 10,000 is a longer chain, whose q(x_T) is closer to an
isotropic Gaussian (the effect §3.5 measures), not a finer one. `beta_rescale=True` scales the
(scaled-)linear betas by T_base/T instead, so the noise level at a given fraction of the chain is the
base's. Either way the U-Net then sees timesteps 0..T-1 its time embedding never saw in pretraining
(the study's caution, §3.5), and the LoRA adapters must make up for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline

from data.io import atomic_dir
from models.errors import ConfigError
from models.family import DiffusionFamily
from models.schedulers import make_scheduler
from models.text_condition import caption_embeddings, dropped_captions


def set_resolution(pipe: StableDiffusionPipeline, image_size: int) -> None:
    """Make `image_size` the pipeline's default output size (Nano was fine-tuned at 128 px; the study samples 64).

    The U-Net is convolutional: `sample_size` only sets the default height/width of `pipe(...)`.
    """
    factor = pipe.vae_scale_factor
    if image_size % factor:
        raise ConfigError(f"image_size {image_size} must be a multiple of the VAE's downsampling factor {factor}")
    if pipe.unet.config.sample_size != image_size // factor:
        pipe.unet.register_to_config(sample_size=image_size // factor)


def training_scheduler(
    base_scheduler_config: Any, num_train_timesteps: int, prediction_type: str | None, beta_rescale: bool = False
) -> DDPMScheduler:
    """DDPMScheduler with the base's betas (unchanged for any T by default) and prediction type; with
    `beta_rescale` the (scaled-)linear betas are scaled by T_base/T for another T."""
    cfg = dict(base_scheduler_config)
    base_t = cfg.get("num_train_timesteps", 1000)
    overrides: dict[str, Any] = {"num_train_timesteps": num_train_timesteps, "clip_sample": False}
    if num_train_timesteps != base_t:
        if cfg.get("trained_betas") is not None:
            raise ConfigError(
                f"T={num_train_timesteps} differs from the base's T={base_t} and its betas are a fixed list "
                f"(trained_betas); keep num_train_timesteps={base_t}"
            )
        if beta_rescale:
            if cfg.get("beta_schedule") not in ("linear", "scaled_linear"):
                raise ConfigError(
                    f"beta_rescale needs a (scaled-)linear schedule, the base's is {cfg.get('beta_schedule')!r}; "
                    "turn beta_rescale off"
                )
            scale = base_t / num_train_timesteps  # scales every (scaled-)linear beta by the same factor
            overrides.update(beta_start=cfg.get("beta_start", 0.00085) * scale,
                             beta_end=cfg.get("beta_end", 0.012) * scale)
    if prediction_type is not None:
        overrides["prediction_type"] = prediction_type
    return DDPMScheduler.from_config(cfg, **overrides)


class StableDiffusionFamily(DiffusionFamily):
    """A Stable Diffusion pipeline as an engine family: x0 = VAE latents, cond = caption embeddings.

    As is, the whole U-Net trains (how `models.tiny_base` pretrains its base); `SDLoRAFamily`
    freezes it and trains adapters.
    """

    name = "sd"

    def __init__(self, pipe: StableDiffusionPipeline, image_size: int, base_description: str,
                 num_train_timesteps: int = 1000, prediction_type: str | None = None, beta_rescale: bool = False):
        self.base = pipe
        self.vae, self.text_encoder, self.tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
        self.module = pipe.unet
        self.image_size = image_size
        self.base_description = base_description
        self.vae.requires_grad_(False).eval()
        self.text_encoder.requires_grad_(False).eval()
        self.beta_rescale = beta_rescale
        self.noise_scheduler = training_scheduler(pipe.scheduler.config, num_train_timesteps, prediction_type,
                                                  beta_rescale)
        set_resolution(pipe, image_size)

    def to(self, device: str | torch.device) -> StableDiffusionFamily:
        for net in (self.module, self.vae, self.text_encoder):
            net.to(device)
        return self

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """Caption embeddings exactly as StableDiffusionPipeline.encode_prompt computes them (no clip skip)."""
        return caption_embeddings(self.tokenizer, self.text_encoder, captions)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (a sample of the VAE posterior, as SD training does)."""
        vae_dtype = next(self.vae.parameters()).dtype
        latents = self.vae.encode(images.to(self.device, vae_dtype)).latent_dist.sample(generator=generator)
        return latents * self.vae.config.scaling_factor

    def training_inputs(
        self, batch: dict[str, Any], uncond: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        images = batch["image"]
        self.check_image_size(images, self.image_size, "this sd-lora base")
        captions = dropped_captions(batch["caption"], uncond)
        return self.encode_images(images, generator), {"encoder_hidden_states": self.encode_captions(captions)}

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return self.module(noisy, timesteps, encoder_hidden_states=cond["encoder_hidden_states"]).sample

    def pipeline(self, sampler: str = "ddpm", ddpm_variance: str = "fixed_small") -> StableDiffusionPipeline:
        """The standard StableDiffusionPipeline over this family's networks with sampler `sampler`."""
        scheduler = make_scheduler(sampler, self.noise_scheduler, space="latent", ddpm_variance=ddpm_variance)
        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.module,
            scheduler=scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_pretrained(self, directory: str | Path) -> None:
        with atomic_dir(directory) as tmp:
            self.pipeline().save_pretrained(tmp)

    def parameter_counts(self) -> dict[str, int]:
        nets = (self.module, self.vae, self.text_encoder)
        return {
            "total": sum(p.numel() for net in nets for p in net.parameters()),
            "trainable": sum(p.numel() for p in self.trainable_parameters().values()),
            "unet": sum(p.numel() for n, p in self.module.named_parameters() if "lora_" not in n),
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_size": self.image_size, "base": self.base_description}



__all__ = ["StableDiffusionFamily", "set_resolution", "training_scheduler"]
