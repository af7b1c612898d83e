"""The attribute-conditioned DDPM: config presets and its family adapter.

The denoiser (`AttributeUNet`, defined in `models.unet_attribute` and importable from here) is
diffusers' `UNet2DModel` (ResNet blocks with `resnet_time_scale_shift="scale_shift"`, i.e. AdaGN:
the embedding gives a scale and shift after each group norm) with a learned `Linear(30,
time_embed_dim)` in front of its identity class embedding, so the projected attribute vector c is
added to the time embedding as class conditioning is in "Diffusion models beat GANs". The all-zero
c is the unconditional input for classifier-free guidance.

Noise schedule: the study's linear betas 1e-4..0.02 for every T (T = 10,000 is a longer chain, not
a finer one; `beta_rescale=True` scales them by 1000/T instead -- see `models.schedulers` for why
the default is what §3.5 measures). `save_pretrained` writes the pipeline plus this config
(`condface_ddpm.json`), so `DDPMFamily.from_pretrained(dir)` gives back the same family.

Presets (parameters counted with `python -m models.ddpm`):
  study-large  64px  (256, 512, 768, 768)  2 ResNets/level, attention at every level   284.94M
  study-small  64px  (128, 256, 512, 512)  2 ResNets/level, attention at every level   112.18M
  cpu-tiny     32px  (32, 64, 64, 64)      1 ResNet/level, attention at the lowest level  1.63M
  cpu-16       16px  (32, 64, 64)          1 ResNet/level, attention at the lowest level  1.20M
The study reports 112.10M trained parameters for its DDPM: that is the small channel set
(study-small, 112.18M here); the large set has 2.5x as many.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data.io import atomic_dir
from models.errors import ConfigError
from models.family import DiffusionFamily
from models.pipeline_ddpm import AttributeDiffusionPipeline
from models.schedulers import make_scheduler, training_scheduler
from models.unet_attribute import AttributeUNet

ATTENTION_CHOICES = ("all", "lowest", "none")
DDPM_INFO_FILE = "condface_ddpm.json"  # the DDPMConfig, beside the saved pipeline


@dataclass(frozen=True)
class DDPMConfig:
    """Everything that defines an attribute DDPM (network + training noise schedule)."""

    preset: str = "custom"
    image_size: int = 64
    block_out_channels: tuple[int, ...] = (256, 512, 768, 768)
    layers_per_block: int = 2
    attention: str = "all"  # where the self-attention blocks are: "all" levels, "lowest" level only, "none"
    attention_head_dim: int = 64
    norm_num_groups: int = 32
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # "linear" (the study: 1e-4..0.02 for every T) or "cosine"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_rescale: bool = False  # True: linear betas scaled by 1000/T (a finer chain, not the study's longer one)
    prediction_type: str = "epsilon"  # or "v_prediction"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_CHOICES:
            raise ConfigError(f"attention must be one of {ATTENTION_CHOICES}, got {self.attention!r}")
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(
                f"every channel count in {self.block_out_channels} must be a multiple of "
                f"norm_num_groups={self.norm_num_groups}"
            )
        if self.image_size % 2 ** (len(self.block_out_channels) - 1):
            raise ConfigError(
                f"image_size {self.image_size} must be divisible by 2^{len(self.block_out_channels) - 1} "
                f"for {len(self.block_out_channels)} levels"
            )
        attn_channels = {"all": self.block_out_channels, "lowest": self.block_out_channels[-1:], "none": ()}
        if any(c % self.attention_head_dim for c in attn_channels[self.attention]):
            raise ConfigError(
                f"attention_head_dim={self.attention_head_dim} must divide the channels of every level with "
                f"attention ({attn_channels[self.attention]})"
            )
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")

    def unet_kwargs(self) -> dict[str, Any]:
        return dict(
            sample_size=self.image_size,
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            attention=self.attention,
            attention_head_dim=self.attention_head_dim,
            norm_num_groups=self.norm_num_groups,
            dropout=self.dropout,
        )


PRESETS: dict[str, DDPMConfig] = {
    "study-large": DDPMConfig("study-large", 64, (256, 512, 768, 768), 2, "all"),
    "study-small": DDPMConfig("study-small", 64, (128, 256, 512, 512), 2, "all"),
    "cpu-tiny": DDPMConfig("cpu-tiny", 32, (32, 64, 64, 64), 1, "lowest", norm_num_groups=16),
    "cpu-16": DDPMConfig("cpu-16", 16, (32, 64, 64), 1, "lowest", norm_num_groups=16),
}


def ddpm_config(preset: str, **overrides: Any) -> DDPMConfig:
    """A preset by name with field overrides, e.g. ddpm_config("cpu-tiny", num_train_timesteps=10000)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown ddpm preset {preset!r}; choose one of {sorted(PRESETS)}")
    if "block_out_channels" in overrides:
        overrides["block_out_channels"] = tuple(int(c) for c in overrides["block_out_channels"])
    return dataclasses.replace(PRESETS[preset], **overrides)


class DDPMFamily(DiffusionFamily):
    """The attribute DDPM as a family the engine trains: x0 = pixels, cond = the 30-vector."""

    name = "ddpm"

    def __init__(self, config: DDPMConfig, unet: AttributeUNet | None = None):
        self.config = config
        self.module = unet if unet is not None else AttributeUNet(**config.unet_kwargs())
        self.beta_rescale = config.beta_rescale
        self.noise_scheduler = training_scheduler(
            config.num_train_timesteps, config.beta_schedule, config.beta_start, config.beta_end,
            config.prediction_type, beta_rescale=config.beta_rescale,
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DDPMFamily:
        """The family `save_pretrained` wrote to `directory`: its config and (EMA) weights."""
        return cls(load_ddpm_config(directory), AttributeUNet.from_pretrained(Path(directory) / "unet"))

    def training_inputs(
        self, batch: dict[str, Any], uncond: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        x0 = batch["image"]
        self.check_image_size(x0, self.config.image_size, f"ddpm preset {self.config.preset!r}")
        cond = batch["cond"].to(torch.float32).masked_fill(uncond.view(-1, 1), 0.0)
        device = self.device
        return x0.to(device, non_blocking=True), {"cond": cond.to(device, non_blocking=True)}

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return self.module(noisy, timesteps, cond["cond"]).sample

    def pipeline(self, sampler: str = "ddpm", ddpm_variance: str = "fixed_small") -> AttributeDiffusionPipeline:
        scheduler = make_scheduler(sampler, self.noise_scheduler, ddpm_variance=ddpm_variance)
        return AttributeDiffusionPipeline(unet=self.module, scheduler=scheduler)

    def save_pretrained(self, directory: str | Path) -> None:
        """The pipeline (`AttributeDiffusionPipeline.from_pretrained` loads it) and `condface_ddpm.json`, written
        to a temporary folder that then replaces `directory` whole."""
        with atomic_dir(directory) as tmp:
            self.pipeline().save_pretrained(tmp)
            (tmp / DDPM_INFO_FILE).write_text(json.dumps(dataclasses.asdict(self.config), indent=2))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **{f"ddpm_{k}": v for k, v in dataclasses.asdict(self.config).items()}}


def load_ddpm_config(directory: str | Path) -> DDPMConfig:
    """The DDPMConfig a `DDPMFamily.save_pretrained` folder was trained with."""
    path = Path(directory) / DDPM_INFO_FILE
    if not path.is_file():
        raise ConfigError(f"{directory} holds no saved ddpm config ({DDPM_INFO_FILE}); point at a folder "
                          "DDPMFamily.save_pretrained wrote")
    fields = {f.name for f in dataclasses.fields(DDPMConfig)}
    saved = {k: v for k, v in json.loads(path.read_text()).items() if k in fields}
    saved["block_out_channels"] = tuple(saved.get("block_out_channels", DDPMConfig.block_out_channels))
    return DDPMConfig(**saved)


def count_parameters(config: DDPMConfig) -> int:
    """Parameters of the network a config builds (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        net = AttributeUNet(**config.unet_kwargs())
    return sum(p.numel() for p in net.parameters())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m models.ddpm", description="List the attribute-DDPM presets and their parameter counts."
    )
    parser.add_argument("--list", action="store_true", help="print every preset with its parameter count (default)")
    parser.parse_args(argv)
    for name, cfg in PRESETS.items():
        print(
            f"{name:12s} {cfg.image_size:3d}px channels={cfg.block_out_channels} layers/level={cfg.layers_per_block} "
            f"attention={cfg.attention:6s} params={count_parameters(cfg) / 1e6:.2f}M"
        )


if __name__ == "__main__":
    main()
