"""DeepFloyd IF stage I + LoRA: the study's proposed pixel-space text-to-image family, trained by the one engine.

The base is a diffusers `IFPipeline` loaded with `from_pretrained` from a hub id or a local folder (default
`DeepFloyd/IF-I-M-v1.0`: T5 v1.1 XXL text encoder, a 400M-parameter U-Net that works on 64 px images --
the data's own size, no VAE), without its safety checker and watermarker, the hub offline (the weights must
already be in the local cache or folder; IF's licence must have been accepted to download them). With
`pretrained=None` the family uses the tiny offline base of `models.tiny_if_base`, saved in the same
pipeline layout and loaded by the same code.

Every base weight is frozen; peft LoRA adapters (rank r, alpha = r, B initialised to zero so training
starts exactly at the base) sit on every attention projection of the U-Net: `to_q`, `to_k`, `to_v`,
`to_out.0` and, because IF's attention reads the text through added key/value projections
(`AttnAddedKVProcessor`), `add_k_proj` and `add_v_proj` -- the targets of diffusers' IF LoRA training
script. They train in fp32 under the engine's bf16 autocast.

Captions, their cached T5 embeddings (in memory, once per distinct caption, per trial), the empty-caption
"no condition" and the learned-variance handling are `models.if_family`'s. Only the LoRA weights are
saved (diffusers LoRA format, safetensors); `load_pipeline(dir)` loads them onto a fresh base with
`pipe.load_lora_weights` and the schedule they trained with.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, IFPipeline

from data.io import atomic_dir
from models.errors import ConfigError
from models.if_family import (
    SENTENCEPIECE_MISSING,
    IFFamily,
    IFLoRAPipeline,
    if_training_scheduler,
    sentencepiece_missing,
)
from models.lora import LORA_TARGETS, add_lora, check_lora_settings, lora_state_dict, read_lora_info
from models.schedulers import make_scheduler
from models.tiny_base import BASE_INFO_FILE
from models.tiny_if_base import PRESETS as TINY
from models.tiny_if_base import ensure_tiny_if_base

IF_I_M_ID = "DeepFloyd/IF-I-M-v1.0"
IF_LORA_TARGETS = (*LORA_TARGETS, "add_k_proj", "add_v_proj")
IF_LORA_INFO_FILE = "condface_if_lora.json"  # beside the weights; its name tells an if-lora folder from an sd-lora one
REAL_BASE_HINT = (
    f"to use the real base, pass --if-pretrained {IF_I_M_ID} (or a local folder) after accepting its licence on the "
    f"Hub and `huggingface-cli download {IF_I_M_ID}` on a connected machine"
)


@dataclass(frozen=True)
class IFLoRAConfig:
    """The base to adapt, the LoRA rank, the training schedule's T and the caption cache's bound."""

    preset: str = "custom"
    pretrained: str | None = IF_I_M_ID  # hub id or local folder; None -> the tiny offline base
    tiny_base: str = "cpu-16"  # models.tiny_if_base preset, used when pretrained is None
    image_size: int = 64  # IF stage I's native size
    rank: int = 4  # the study's grid for SD: 2, 4, 8; alpha = rank
    num_train_timesteps: int = 1000
    prediction_type: str | None = None  # None: the base scheduler's (IF: epsilon)
    beta_rescale: bool = False  # refused for IF's cosine schedule (models.if_family)
    caption_cache_mb: int = 4096  # in-memory T5 embeddings (T5-XXL: 1.2 MB a caption in fp32)

    def __post_init__(self) -> None:
        check_lora_settings(self.rank, self.num_train_timesteps, self.prediction_type)
        if self.caption_cache_mb < 1:
            raise ConfigError(f"caption_cache_mb must be >= 1, got {self.caption_cache_mb}")
        if self.pretrained is None:
            if self.tiny_base not in TINY:
                raise ConfigError(f"unknown tiny IF base {self.tiny_base!r}; choose one of {sorted(TINY)}")
            if TINY[self.tiny_base].image_size != self.image_size:
                raise ConfigError(
                    f"the tiny IF base {self.tiny_base!r} works at {TINY[self.tiny_base].image_size}px, not "
                    f"image_size={self.image_size}; set image_size to {TINY[self.tiny_base].image_size}"
                )

    @property
    def alpha(self) -> int:
        return self.rank


PRESETS: dict[str, IFLoRAConfig] = {
    "study": IFLoRAConfig("study", IF_I_M_ID, image_size=64),
    "cpu-tiny": IFLoRAConfig("cpu-tiny", None, "cpu-32", image_size=32),
    "cpu-16": IFLoRAConfig("cpu-16", None, "cpu-16", image_size=16),
    "test": IFLoRAConfig("test", None, "test", image_size=16),
}


def if_lora_config(preset: str, **overrides: Any) -> IFLoRAConfig:
    """A preset by name with field overrides, e.g. if_lora_config("cpu-16", rank=8)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown if-lora preset {preset!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def base_summary(config: IFLoRAConfig) -> str:
    """Which base `config` adapts, in one line, without loading it."""
    if config.pretrained is None:
        return (f"tiny offline IF base '{config.tiny_base}' (models.tiny_if_base: built here from IF stage I's "
                "classes and pretrained on the synthetic faces, cached), not DeepFloyd IF-I-M")
    return f"{config.pretrained} (pretrained DeepFloyd IF stage I base)"


def load_if_folder(id_or_path: str | Path) -> IFPipeline:
    """`IFPipeline.from_pretrained` offline in fp32, without safety checker or watermarker; one-line error."""
    if sentencepiece_missing(id_or_path):
        raise ConfigError(f"cannot load the IF stage I base {str(id_or_path)!r}: {SENTENCEPIECE_MISSING}")
    try:
        pipe = IFPipeline.from_pretrained(
            str(id_or_path), safety_checker=None, feature_extractor=None, watermarker=None,
            requires_safety_checker=False, dtype=torch.float32,
        )
    except (OSError, ValueError) as err:
        if sentencepiece_missing(id_or_path, err):
            raise ConfigError(f"cannot load the IF stage I base {str(id_or_path)!r}: {SENTENCEPIECE_MISSING}") from None
        raise ConfigError(
            f"cannot load the IF stage I base {str(id_or_path)!r} offline ({type(err).__name__}); download it first "
            f"(`huggingface-cli download {id_or_path}`) or pass a local IFPipeline folder, or omit --pretrained to "
            "use the tiny offline base"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_base(config: IFLoRAConfig) -> tuple[IFPipeline, str]:
    """(the base pipeline in fp32 on CPU, a one-line description of which base it is)."""
    if config.pretrained is None:
        path, description = ensure_tiny_if_base(TINY[config.tiny_base])
        return load_if_folder(path), description
    info = Path(config.pretrained) / BASE_INFO_FILE  # a tiny base passed by path describes itself
    if info.is_file():
        return load_if_folder(config.pretrained), json.loads(info.read_text()).get(
            "description", f"tiny offline IF base at {config.pretrained}")
    return load_if_folder(config.pretrained), base_summary(config)


class IFLoRAFamily(IFFamily):
    """The IF base frozen, LoRA (rank r, alpha r) on every U-Net attention projection; only LoRA trains."""

    name = "if-lora"

    def __init__(self, config: IFLoRAConfig, base: tuple[IFPipeline, str] | None = None, verbose: bool = True):
        pipe, description = base if base is not None else load_base(config)
        super().__init__(pipe, config.image_size, description, config.num_train_timesteps, config.prediction_type,
                         config.beta_rescale, caption_cache_bytes=config.caption_cache_mb * 1024**2)
        self.config = config
        add_lora(self.module, config.rank, config.alpha, IF_LORA_TARGETS)
        if verbose:
            counts = self.parameter_counts()
            print(
                f"if-lora: base {description}\n"
                f"if-lora: U-Net {counts['unet'] / 1e6:.2f}M params (all frozen), LoRA r={config.rank} trains "
                f"{counts['trainable']:,} ({100 * counts['trainable'] / counts['total']:.3f}% of "
                f"{counts['total'] / 1e6:.2f}M in U-Net + text encoder)",
                flush=True,
            )
            if config.pretrained is None:
                print(f"if-lora: {REAL_BASE_HINT}", flush=True)

    def save_pretrained(self, directory: str | Path) -> None:
        """Only the LoRA weights (safetensors, diffusers format) + which base, settings and schedule they belong to."""
        info = {"family": self.name, "lora_config": dataclasses.asdict(self.config),
                "base_description": self.base_description, "scheduler": dict(self.noise_scheduler.config)}
        with atomic_dir(directory) as tmp:
            IFPipeline.save_lora_weights(tmp, unet_lora_layers=lora_state_dict(self.module, peft_names=True), safe_serialization=True)
            (tmp / IF_LORA_INFO_FILE).write_text(json.dumps(info, indent=2, default=str))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **{f"lora_{k}": v for k, v in dataclasses.asdict(self.config).items()}}


def load_pipeline(lora_dir: str | Path, sampler: str = "ddpm", ddpm_variance: str = "fixed_small",
                  base: str | Path | None = None) -> IFLoRAPipeline:
    """A fresh base with the saved LoRA weights loaded (`load_lora_weights`) and sampler `sampler`, built from the
    training schedule saved with the weights. base: a folder or hub id to load the base from instead of the one
    the weights name (e.g. the tiny base shipped inside an MLflow model)."""
    info = read_lora_info(lora_dir, "if-lora", IF_LORA_INFO_FILE)
    config = IFLoRAConfig(**info["lora_config"])
    if base is not None:
        config = dataclasses.replace(config, pretrained=str(base))
    loaded, _ = load_base(config)
    pipe = IFLoRAPipeline(**loaded.components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.register_to_config(sample_size=config.image_size)
    pipe.load_lora_weights(lora_dir)
    trained = DDPMScheduler.from_config(info["scheduler"]) if info.get("scheduler") else if_training_scheduler(
        pipe.scheduler.config, config.num_train_timesteps, config.prediction_type, config.beta_rescale)
    pipe.scheduler = make_scheduler(sampler, trained, space="pixel", ddpm_variance=ddpm_variance)
    return pipe


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m models.if_lora",
                                     description="List the if-lora presets and which base each adapts.")
    parser.parse_args(argv)
    for name, cfg in PRESETS.items():
        print(f"{name:9s} {cfg.image_size:3d}px rank={cfg.rank} T={cfg.num_train_timesteps} base={base_summary(cfg)}")
    print(f"LoRA targets: {', '.join(IF_LORA_TARGETS)}")
    print(REAL_BASE_HINT)


if __name__ == "__main__":
    main()
