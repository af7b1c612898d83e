"""Stable Diffusion Nano 2.1 + LoRA: the text-conditioned family, trained by the one engine.

The base is a diffusers `StableDiffusionPipeline` loaded with `from_pretrained` from a hub id or a
local folder (default `bguisard/stable-diffusion-nano-2-1`; its VAE was trained at 128 px and turns
64 px images into 8x8x4 latents), with no safety checker and the hub offline (`HF_HUB_OFFLINE=1`:
the weights must already be in the local cache or folder). With `pretrained=None` the family uses the
tiny offline base of `models.tiny_base`, saved in the same pipeline format and loaded by the same code.

Every base weight is frozen; peft LoRA adapters (rank r, alpha = r, B initialised to zero so training
starts exactly at the base) sit on every attention projection of the U-Net -- `to_q`, `to_k`, `to_v`,
`to_out.0` of self- and cross-attention -- and are the only weights that train, in fp32 under the
engine's bf16 autocast. Captions come from the data items; the engine's classifier-free-guidance drop
replaces them with the empty caption, which is what the pipeline uses as its unconditional prompt.

Noise schedule (`models.sd_family.training_scheduler`): the base's own scheduler config (betas,
prediction type: epsilon or v) with `num_train_timesteps` = T. The study's caution holds: the base was
trained with T = 1000. For another T the base's betas are kept as they are by default (diffusers'
`DDPMScheduler` with T = 10,000 steps: a longer chain whose q(x_T) is closer to an isotropic Gaussian,
which is what §3.5 varies T to measure); `beta_rescale=True` scales them by T_base/T instead (the same
noise level at the same fraction of the chain, a finer chain). Either way the U-Net then receives
timesteps 0..T-1 its time embedding never saw in pretraining, and the LoRA adapters must make up for it.

Module layout: `StableDiffusionFamily`, `training_scheduler` and `set_resolution` live in
`models.sd_family` (so `models.tiny_base` can pretrain with the family without importing this module)
and are re-exported here.

Only the LoRA weights are saved (diffusers LoRA format, safetensors); `load_pipeline(dir)` loads them
onto a fresh base with `pipe.load_lora_weights`, and any diffusers scheduler swaps in by `from_config`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline

from data.io import atomic_dir
from models.errors import ConfigError
from models.lora import LORA_INFO_FILE, LORA_TARGETS, add_lora, check_lora_settings, lora_state_dict, read_lora_info
from models.schedulers import make_scheduler
from models.sd_family import StableDiffusionFamily, set_resolution, training_scheduler
from models.tiny_base import PRESETS as TINY
from models.tiny_base import ensure_tiny_base

NANO_ID = "bguisard/stable-diffusion-nano-2-1"
TUNED_VAE_DIR = "vae"  # in a saved LoRA folder: the tuned VAE the adapters trained with (when there was one)
# The U-Net of Stable Diffusion 2.x (stabilityai/stable-diffusion-2-1 unet/config.json; Nano 2.1 keeps the
# architecture of 2-1-base): 865,910,724 parameters, the study's 865.91M. Used to count without weights.
SD2_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, upcast_attention=True,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
)
REAL_BASE_HINT = (
    f"to use the real base, pass --pretrained {NANO_ID} (or a local folder) after "
    f"`huggingface-cli download {NANO_ID}` on a connected machine"
)


@dataclass(frozen=True)
class LoRAConfig:
    """The base to adapt, the LoRA rank and the training schedule's T."""

    preset: str = "custom"
    pretrained: str | None = NANO_ID  # hub id or local folder; None -> the tiny offline base below
    tiny_base: str = "cpu-32"  # models.tiny_base preset, used when pretrained is None
    image_size: int = 64
    rank: int = 4  # the study's grid: 2, 4, 8; alpha = rank
    num_train_timesteps: int = 1000
    prediction_type: str | None = None  # None: the base scheduler's (what the base was trained for)
    beta_rescale: bool = False  # True: the base's betas scaled by T_base/T (a finer chain, not the study's longer one)
    vae: str | None = None  # a tuned AutoencoderKL folder (models.vae_tune) replacing the base's VAE; None: the base's

    def __post_init__(self) -> None:
        check_lora_settings(self.rank, self.num_train_timesteps, self.prediction_type)
        if self.pretrained is None:
            if self.tiny_base not in TINY:
                raise ConfigError(f"unknown tiny base {self.tiny_base!r}; choose one of {sorted(TINY)}")
            if TINY[self.tiny_base].image_size != self.image_size:
                raise ConfigError(
                    f"the tiny base {self.tiny_base!r} works at {TINY[self.tiny_base].image_size}px, not "
                    f"image_size={self.image_size}; set image_size to {TINY[self.tiny_base].image_size}"
                )

    @property
    def alpha(self) -> int:
        return self.rank


PRESETS: dict[str, LoRAConfig] = {
    "study": LoRAConfig("study", NANO_ID, image_size=64),
    "cpu-tiny": LoRAConfig("cpu-tiny", None, "cpu-32", image_size=32),
    "cpu-16": LoRAConfig("cpu-16", None, "cpu-16", image_size=16),
    "test": LoRAConfig("test", None, "test", image_size=16),
}


def base_summary(config: LoRAConfig) -> str:
    """Which base `config` adapts, in one line, without loading it."""
    if config.pretrained is None:
        return (f"tiny offline SD base '{config.tiny_base}' (models.tiny_base: built here from the SD classes and "
                "pretrained on the synthetic faces, cached), not SD Nano 2.1")
    return f"{config.pretrained} (pretrained Stable Diffusion base)"


def lora_config(preset: str, **overrides: Any) -> LoRAConfig:
    """A preset by name with field overrides, e.g. lora_config("cpu-tiny", rank=8, num_train_timesteps=10000)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown sd-lora preset {preset!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def count_sd2_parameters(rank: int) -> tuple[int, int]:
    """(U-Net parameters, LoRA parameters at `rank`) of SD 2.x, built on the meta device (no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD2_UNET_CONFIG)
        total = sum(p.numel() for p in unet.parameters())
        add_lora(unet, rank)
    return total, sum(p.numel() for p in unet.parameters() if p.requires_grad)


def load_base(config: LoRAConfig) -> tuple[StableDiffusionPipeline, str]:
    """(the base pipeline in fp32 on CPU, a one-line description of which base it is), with `config.vae` in place
    of the base's VAE when set."""
    pipe, description = _load_base_pipeline(config)
    if config.vae is not None:
        from models.vae_tune import load_vae

        pipe.register_modules(vae=load_vae(config.vae))
        description += f", with its VAE tuned at {config.image_size}px ({config.vae})"
    return pipe, description


def _load_base_pipeline(config: LoRAConfig) -> tuple[StableDiffusionPipeline, str]:
    if config.pretrained is None:
        path, description = ensure_tiny_base(TINY[config.tiny_base])
        return load_pipeline_folder(path), description
    info = Path(config.pretrained) / "condface_base.json"  # a tiny base passed by path describes itself
    if info.is_file():
        return load_pipeline_folder(config.pretrained), json.loads(info.read_text()).get(
            "description", f"tiny offline SD base at {config.pretrained}")
    return load_pipeline_folder(config.pretrained), f"{config.pretrained} (pretrained Stable Diffusion base)"


def load_pipeline_folder(id_or_path: str | Path) -> StableDiffusionPipeline:
    """`StableDiffusionPipeline.from_pretrained` offline, without a safety checker; one-line error if missing."""
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(id_or_path), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            dtype=torch.float32,
        )
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot load the Stable Diffusion base {str(id_or_path)!r} offline ({type(err).__name__}); download it "
            f"first (`huggingface-cli download {id_or_path}`) or pass a local pipeline folder, or omit --pretrained "
            "to use the tiny offline base"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


class SDLoRAFamily(StableDiffusionFamily):
    """The base frozen, LoRA (rank r, alpha r) on every U-Net attention projection; only LoRA trains."""

    name = "sd-lora"

    def __init__(self, config: LoRAConfig, base: tuple[StableDiffusionPipeline, str] | None = None,
                 verbose: bool = True):
        pipe, description = base if base is not None else load_base(config)
        super().__init__(pipe, config.image_size, description, config.num_train_timesteps, config.prediction_type,
                         config.beta_rescale)
        self.config = config
        add_lora(self.module, config.rank, config.alpha)
        if verbose:
            counts = self.parameter_counts()
            print(
                f"sd-lora: base {description}\n"
                f"sd-lora: U-Net {counts['unet'] / 1e6:.2f}M params (all frozen), LoRA r={config.rank} trains "
                f"{counts['trainable']:,} ({100 * counts['trainable'] / counts['total']:.3f}% of "
                f"{counts['total'] / 1e6:.2f}M in U-Net + VAE + text encoder)",
                flush=True,
            )
            if config.pretrained is None:
                print(f"sd-lora: {REAL_BASE_HINT}", flush=True)

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapters in the diffusers LoRA format (what `save_lora_weights` writes)."""
        return lora_state_dict(self.module)

    def save_pretrained(self, directory: str | Path) -> None:
        """Only the LoRA weights (safetensors, diffusers format) + which base and settings they belong to."""
        info = {"family": self.name, "lora_config": dataclasses.asdict(self.config), "base_description": self.base_description,
                "scheduler": dict(self.noise_scheduler.config)}

        with atomic_dir(directory) as tmp:
            StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=self.lora_state_dict(),
                                                      safe_serialization=True)
            if self.config.vae is not None:  # the tuned VAE travels with the adapters that trained on its latents
                self.vae.save_pretrained(tmp / TUNED_VAE_DIR, safe_serialization=True)
            (tmp / LORA_INFO_FILE).write_text(json.dumps(info, indent=2, default=str))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **{f"lora_{k}": v for k, v in dataclasses.asdict(self.config).items()}}


def load_pipeline(lora_dir: str | Path, sampler: str = "ddpm", ddpm_variance: str = "fixed_small",
                  base: str | Path | None = None) -> StableDiffusionPipeline:
    """A fresh base with the saved LoRA weights loaded (`load_lora_weights`) and sampler `sampler`, built
    from the training schedule saved with the weights (so the betas are those the adapters trained with).

    base: a folder or hub id to load the base from instead of the one the weights name (e.g. the tiny base
    shipped inside an MLflow model)."""
    lora_dir = Path(lora_dir)
    info = read_lora_info(lora_dir, "sd-lora")
    config = LoRAConfig(**info["lora_config"])
    if base is not None:
        config = dataclasses.replace(config, pretrained=str(base))
    if (lora_dir / TUNED_VAE_DIR).is_dir():
        config = dataclasses.replace(config, vae=str(lora_dir / TUNED_VAE_DIR))
    pipe, _ = load_base(config)
    set_resolution(pipe, config.image_size)
    pipe.load_lora_weights(lora_dir)
    if info.get("scheduler"):
        base_sched = DDPMScheduler.from_config(info["scheduler"])
    else:
        base_sched = training_scheduler(pipe.scheduler.config, config.num_train_timesteps, config.prediction_type,
                                        config.beta_rescale)
    pipe.scheduler = make_scheduler(sampler, base_sched, space="latent", ddpm_variance=ddpm_variance)
    return pipe


__all__ = ["LORA_INFO_FILE", "LORA_TARGETS", "LoRAConfig", "PRESETS", "SDLoRAFamily", "StableDiffusionFamily",
           "add_lora", "base_summary", "count_sd2_parameters", "load_base", "load_pipeline", "load_pipeline_folder",
           "lora_config", "set_resolution", "training_scheduler"]


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m models.sd_lora",
        description="List the sd-lora presets and the parameter counts of SD 2.x's U-Net with LoRA (no weights needed).",
    )
    parser.add_argument("--list", action="store_true", help="print presets and parameter counts (default)")
    parser.parse_args(argv)
    try:
        unet, _ = count_sd2_parameters(4)
        print(f"Stable Diffusion 2.x / Nano 2.1 U-Net: {unet:,} parameters ({unet / 1e6:.2f}M; the study: 865.91M)")
        for rank in (2, 4, 8):
            lora = count_sd2_parameters(rank)[1]
            print(f"  LoRA r={rank} (alpha={rank}) on to_q/to_k/to_v/to_out.0: {lora:,} trainable "
                  f"({100 * lora / unet:.3f}%)")
        for name, cfg in PRESETS.items():
            base = cfg.pretrained or f"tiny offline base '{cfg.tiny_base}' (models.tiny_base)"
            print(f"{name:9s} {cfg.image_size:3d}px rank={cfg.rank} T={cfg.num_train_timesteps} "
                  f"beta_rescale={cfg.beta_rescale} base={base}")
        print(REAL_BASE_HINT)
    except ConfigError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()

