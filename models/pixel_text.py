"""A text-conditioned DDPM trained from scratch in pixel space: the comparison the study's conclusion rests on.

The study (§3.1.2) tried text-conditioned U-Nets "in the data space" only briefly and then claims (§5) that the
attribute DDPM beats such a model; this family is that model, trained by the same engine, on the same grid axes
(GA, T, Min-SNR, the two channel sets) and the same captions as sd-lora, so the claim gets a number.

Network: diffusers' `UNet2DConditionModel` on RGB pixels, built from this config's channels, ResNet blocks per
level and attention levels (cross-attention to the caption, as Stable Diffusion's U-Net; `attention` as the
attribute DDPM's self-attention: every level, the lowest, or none), with AdaGN (`scale_shift`) time conditioning
like the attribute DDPM's. With `pooled_text` the attention-pooled caption embedding is also added to the time
embedding (diffusers' `addition_embed_type="text"`, what DeepFloyd IF's and Imagen's pixel U-Nets do), so the
caption reaches every ResNet block as the attribute vector does in the attribute DDPM.

Text encoder: Stable Diffusion's frozen CLIP text encoder and tokenizer, loaded from the `text_encoder/` and
`tokenizer/` folders of a Stable Diffusion base (`pretrained`: a hub id, offline from the local cache, or a local
pipeline folder; default SD Nano 2.1, sd-lora's base); with `pretrained=None`, those of the tiny offline SD base
(`models.tiny_base`, built and cached as sd-lora's is, and said so in the output and the tags). Captions are
embedded as `StableDiffusionPipeline.encode_prompt` does (`models.text_condition`); classifier-free guidance drops
a caption to the empty caption, whose embedding is the sampler's unconditional input.

Noise schedule: the attribute DDPM's (`models.schedulers.training_scheduler`: the study's linear betas for every T,
`beta_rescale` the alternative). `save_pretrained` writes a whole `PixelTextPipeline` (U-Net, text encoder,
tokenizer, training scheduler) plus `condface_pixel_text.json` (this config), so the folder needs no base to load.

Presets (U-Net parameters counted with `python -m models.pixel_text`; the sweep replaces channels and size):
  study     64px  (256, 512, 768, 768)  2 ResNets/level, cross-attention at every level   444.48M (SD 2.x's encoder)
  cpu-16    16px  (32, 64, 64)          1 ResNet/level, cross-attention at the lowest level  1.51M (tiny base's)
The transformer blocks (self- and cross-attention, feed-forward) make it heavier than the attribute DDPM at the
same channels (284.94M / 1.20M).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel

from data.io import atomic_dir
from models.attribute_pipeline import AttributeDiffusionPipeline
from models.ddpm import DDPMConfig
from models.errors import ConfigError
from models.family import DiffusionFamily
from models.schedulers import make_scheduler, training_scheduler
from models.sd_lora import NANO_ID
from models.text_condition import UNCONDITIONAL, caption_embeddings, dropped_captions
from models.tiny_base import BASE_INFO_FILE, ensure_tiny_base
from models.tiny_base import PRESETS as TINY

PIXEL_TEXT_INFO_FILE = "condface_pixel_text.json"  # the config, beside the saved pipeline (marks the folder)
REAL_TEXT_ENCODER_HINT = (
    f"to use Stable Diffusion's CLIP text encoder, pass --pretrained {NANO_ID} (or a local pipeline folder) after "
    f"`huggingface-cli download {NANO_ID}` on a connected machine"
)


@dataclass(frozen=True)
class PixelTextConfig(DDPMConfig):
    """The attribute DDPM's network and noise-schedule settings (`models.ddpm.DDPMConfig`), and the text encoder."""

    pretrained: str | None = NANO_ID  # a Stable Diffusion base (hub id or folder) whose text encoder conditions
    tiny_base: str = "cpu-32"  # models.tiny_base preset whose text encoder is used when pretrained is None
    pooled_text: bool = True  # also add the pooled caption embedding to the time embedding (IF's "text" embedding)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pretrained is None and self.tiny_base not in TINY:
            raise ConfigError(f"unknown tiny base {self.tiny_base!r}; choose one of {sorted(TINY)}")

    def unet_kwargs(self, text_hidden: int) -> dict[str, Any]:
        """UNet2DConditionModel's arguments for a text encoder of `text_hidden` features."""
        levels = len(self.block_out_channels)
        attend = {"all": [True] * levels, "lowest": [False] * (levels - 1) + [True], "none": [False] * levels}
        attend = attend[self.attention]
        return dict(
            sample_size=self.image_size, in_channels=3, out_channels=3,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attend),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend)),
            mid_block_type="UNetMidBlock2DCrossAttn" if self.attention != "none" else "UNetMidBlock2D",
            block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block,
            # diffusers' attention_head_dim is the number of heads (diffusers issue 2011): channels / head width
            attention_head_dim=tuple(max(1, c // self.attention_head_dim) for c in self.block_out_channels),
            norm_num_groups=self.norm_num_groups, dropout=self.dropout, cross_attention_dim=text_hidden,
            resnet_time_scale_shift="scale_shift",
            addition_embed_type="text" if self.pooled_text else None,
            addition_embed_type_num_heads=max(1, text_hidden // 64),
        )


PRESETS: dict[str, PixelTextConfig] = {
    "study": PixelTextConfig("study", 64, (256, 512, 768, 768), 2, "all", pretrained=NANO_ID),
    "cpu-tiny": PixelTextConfig("cpu-tiny", 32, (32, 64, 64, 64), 1, "lowest", norm_num_groups=16, pretrained=None,
                                tiny_base="cpu-32"),
    "cpu-16": PixelTextConfig("cpu-16", 16, (32, 64, 64), 1, "lowest", norm_num_groups=16, pretrained=None,
                              tiny_base="cpu-16"),
    # seconds to build and train a step: for tests (the tiny base "test" draws noise, its text encoder is untrained)
    "test": PixelTextConfig("test", 16, (16, 32), 1, "lowest", attention_head_dim=16, norm_num_groups=8,
                            pretrained=None, tiny_base="test"),
}


def pixel_text_config(preset: str, **overrides: Any) -> PixelTextConfig:
    """A preset by name with field overrides, e.g. pixel_text_config("cpu-16", num_train_timesteps=10000)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown pixel-text preset {preset!r}; choose one of {sorted(PRESETS)}")
    if "block_out_channels" in overrides:
        overrides["block_out_channels"] = tuple(int(c) for c in overrides["block_out_channels"])
    return dataclasses.replace(PRESETS[preset], **overrides)


def text_encoder_summary(config: PixelTextConfig) -> str:
    """Which text encoder `config` conditions on, in one line, without loading it."""
    if config.pretrained is None:
        return (f"the CLIP text encoder of the tiny offline SD base '{config.tiny_base}' (models.tiny_base: trained "
                "here on the synthetic captions, cached), not Stable Diffusion's")
    if (Path(config.pretrained) / BASE_INFO_FILE).is_file():  # a tiny base passed by its folder
        return f"the CLIP text encoder of the tiny offline SD base at {config.pretrained}, not Stable Diffusion's"
    return f"the CLIP text encoder of {config.pretrained} (a Stable Diffusion base), frozen"


def load_text_encoder(config: PixelTextConfig):
    """(tokenizer, frozen CLIP text encoder in fp32 on CPU) from the `tokenizer/` and `text_encoder/` folders of
    the configured Stable Diffusion base, or of the tiny offline base; one-line ConfigError when absent."""
    from transformers import AutoTokenizer, CLIPTextModel

    source = str(ensure_tiny_base(TINY[config.tiny_base])[0]) if config.pretrained is None else config.pretrained
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot load the text encoder of {source!r} offline ({type(err).__name__}); download the Stable "
            f"Diffusion base first (`huggingface-cli download {source}`) or pass a local pipeline folder, or omit "
            "--pretrained to use the tiny offline base's"
        ) from None
    return tokenizer, text_encoder.requires_grad_(False).eval()


class PixelTextPipeline(AttributeDiffusionPipeline):
    """Generate faces for captions: `pipe(["A smiling man with glasses."], guidance_scale=3.0).images`.

    Components: `unet` (UNet2DConditionModel on pixels), `text_encoder` (CLIPTextModel, frozen), `tokenizer` and
    `scheduler` (any diffusers scheduler). The sampling loop is the attribute DDPM's (both guidance halves in one
    batched forward pass per step; guidance 1 = conditional only, 0 = unconditional); the condition is the
    captions' embedding and the unconditional input the empty caption's, as in training.
    """

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        DiffusionPipeline.__init__(self)  # not the attribute pipeline's: its components differ
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    def encode_condition(self, prompt) -> torch.Tensor:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return caption_embeddings(self.tokenizer, self.text_encoder, prompts)

    def unconditional(self, cond: torch.Tensor) -> torch.Tensor:
        empty = caption_embeddings(self.tokenizer, self.text_encoder, [UNCONDITIONAL])
        return empty.to(device=cond.device, dtype=cond.dtype).expand_as(cond)

    def __call__(self, prompt: str | list[str], guidance_scale: float = 3.0, num_inference_steps: int | None = 50,
                 generator=None, output_type: str = "pil", return_dict: bool = True):
        """Sample one image per caption (arguments and outputs as the attribute DDPM's pipeline)."""
        return super().__call__(prompt, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                                generator=generator, output_type=output_type, return_dict=return_dict)


class PixelTextFamily(DiffusionFamily):
    """The pixel text DDPM as a family the engine trains: x0 = pixels, cond = the caption's embedding."""

    name = "pixel-text"

    def __init__(self, config: PixelTextConfig, text: tuple[Any, torch.nn.Module] | None = None,
                 unet: UNet2DConditionModel | None = None, verbose: bool = True):
        self.config = config
        self.tokenizer, self.text_encoder = text if text is not None else load_text_encoder(config)
        self.text_encoder.requires_grad_(False).eval()
        self.module = unet if unet is not None else UNet2DConditionModel(
            **config.unet_kwargs(self.text_encoder.config.hidden_size))
        self.beta_rescale = config.beta_rescale
        self.noise_scheduler = training_scheduler(
            config.num_train_timesteps, config.beta_schedule, config.beta_start, config.beta_end,
            config.prediction_type, beta_rescale=config.beta_rescale,
        )
        if verbose:
            counts = self.parameter_counts()
            print(f"pixel-text: U-Net {counts['unet'] / 1e6:.2f}M params (all train), text encoder: "
                  f"{text_encoder_summary(config)}", flush=True)
            if "tiny offline" in text_encoder_summary(config):
                print(f"pixel-text: {REAL_TEXT_ENCODER_HINT}", flush=True)

    def to(self, device: str | torch.device) -> PixelTextFamily:
        self.module.to(device)
        self.text_encoder.to(device)
        return self

    def training_inputs(
        self, batch: dict[str, Any], uncond: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        x0 = batch["image"]
        self.check_image_size(x0, self.config.image_size, f"pixel-text preset {self.config.preset!r}")
        embeddings = caption_embeddings(self.tokenizer, self.text_encoder, dropped_captions(batch["caption"], uncond))
        return x0.to(self.device, non_blocking=True), {"encoder_hidden_states": embeddings.to(self.device)}

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return self.module(noisy, timesteps, encoder_hidden_states=cond["encoder_hidden_states"]).sample

    def pipeline(self, sampler: str = "ddpm", ddpm_variance: str = "fixed_small") -> PixelTextPipeline:
        scheduler = make_scheduler(sampler, self.noise_scheduler, space="pixel", ddpm_variance=ddpm_variance)
        pipe = PixelTextPipeline(unet=self.module, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                 scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_pretrained(self, directory: str | Path) -> None:
        """The whole pipeline (`PixelTextPipeline.from_pretrained` loads it) and `condface_pixel_text.json`."""
        info = {"config": dataclasses.asdict(self.config), "text_encoder": text_encoder_summary(self.config)}
        with atomic_dir(directory) as tmp:
            self.pipeline().save_pretrained(tmp)
            (tmp / PIXEL_TEXT_INFO_FILE).write_text(json.dumps(info, indent=2))

    def parameter_counts(self) -> dict[str, int]:
        unet = sum(p.numel() for p in self.module.parameters())
        return {"total": unet + sum(p.numel() for p in self.text_encoder.parameters()),
                "trainable": sum(p.numel() for p in self.trainable_parameters().values()), "unet": unet}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_size": self.config.image_size, "base": text_encoder_summary(self.config),
                **{f"pixel_text_{k}": v for k, v in dataclasses.asdict(self.config).items()}}


def count_parameters(config: PixelTextConfig, text_hidden: int = 1024) -> int:
    """U-Net parameters of `config` for a text encoder of `text_hidden` features (SD 2.x: 1024), on the meta device."""
    with torch.device("meta"):
        net = UNet2DConditionModel(**config.unet_kwargs(text_hidden))
    return sum(p.numel() for p in net.parameters())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m models.pixel_text",
        description="List the pixel text DDPM presets and their U-Net parameter counts (no weights needed).")
    parser.add_argument("--list", action="store_true", help="print every preset with its parameter count (default)")
    parser.parse_args(argv)
    for name, cfg in PRESETS.items():
        hidden = 1024 if cfg.pretrained else TINY[cfg.tiny_base].text_hidden
        print(f"{name:9s} {cfg.image_size:3d}px channels={cfg.block_out_channels} layers/level={cfg.layers_per_block} "
              f"attention={cfg.attention:6s} U-Net params={count_parameters(cfg, hidden) / 1e6:.2f}M "
              f"text encoder={cfg.pretrained or f'tiny offline base {cfg.tiny_base!r}'}")


if __name__ == "__main__":
    main()
