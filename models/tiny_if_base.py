"""A small offline stand-in for DeepFloyd IF stage I, built from the same diffusers/transformers classes.

The real base (`DeepFloyd/IF-I-M-v1.0`, gated on the Hub) cannot be downloaded on offline machines, so the
`if-lora` family falls back to this one, saved as a real `IFPipeline` folder (model_index.json, tokenizer/,
text_encoder/, unet/, scheduler/) and loaded by the same `IFPipeline.from_pretrained(path)` as the real one:

- tokenizer: `T5Tokenizer` (IF: T5 v1.1's) over a Unigram vocabulary made here from the training captions:
  their words (at most `vocab_size`), scored by frequency, with single characters as the fallback, so a
  synthetic caption is at most ~50 tokens and fits IF's 77 (the tokenizers library's Unigram trainer
  left these captions nearly character-level, >77 tokens, and the truncation cut off their last sentence);
- text encoder: `T5EncoderModel` (gated-GELU feed-forward as T5 v1.1), trained briefly to read the five
  levels out of a caption, then frozen (`models.tiny_base.pretrain_text_encoder`, with the attention
  mask IF passes to T5) -- a stand-in for T5's pretrained semantics;
- U-Net: `UNet2DConditionModel` with IF stage I's architecture keys -- a ResNet down block, then
  `SimpleCrossAttn*` blocks and mid block, text projected in (`encoder_hid_dim`, "text_proj") and pooled
  into the time embedding (`addition_embed_type="text"`), group-norm cross-attention, scale-shift
  ResNets, GELU, and 6 output channels (epsilon and the learned variance);
- scheduler: IF's `DDPMScheduler` (cosine "squaredcos_cap_v2" betas over T = 1000, epsilon prediction,
  dynamic thresholding) except `variance_type`: "fixed_small", not IF's "learned_range", because this
  U-Net is pretrained on the epsilon loss only and its variance half is untrained.

Pretraining: the U-Net is trained in pixel space with the one training engine on captions SHUFFLED across
images (10% empty), as `models.tiny_base` does for the SD stand-in: it learns to draw faces and the real
distribution of text contexts, but no caption tells it anything about its image, so what the LoRA
adapters learn about the condition shows above the base's reference row. Cached under
`$CONDFACE_HOME/if-base/<name>-<hash>`, written atomically under a file lock.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from data.catalogue import condface_home
from data.io import atomic_dir
from models.if_family import IFFamily
from models.tiny_base import (
    BASE_INFO_FILE,
    build_cli,
    content_key,
    dataset_labels,
    ensure_built,
    pretrain_text_encoder,
    pretrain_unet,
)


@dataclass(frozen=True)
class TinyIFBaseConfig:
    """Architecture and pretraining budget of the tiny offline IF base (the fields `models.tiny_base`'s
    pretraining loops read have the same names)."""

    name: str = "cpu-16"
    image_size: int = 16
    unet_channels: tuple[int, ...] = (32, 64)
    attention_head_dim: int = 16  # channels per head (IF-I: 64)
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 512  # the caption tokenizer's vocabulary (words + characters + 4 special pieces)
    text_steps: int = 300
    text_lr: float = 2e-3
    # A training step of this pixel-space U-Net costs ~7x one of the SD stand-in's latent U-Net (docs/measurements.md),
    # so it pretrains on half the images for one epoch (untuned: a first budget, not a measured optimum)
    unet_epochs: int = 1
    unet_lr: float = 2e-3
    batch_size: int = 32
    train_images: int | None = 10000
    p_uncond: float = 0.1
    caption_truth: float = 0.0  # fraction of pretraining images shown with their own caption (the rest: shuffled)
    seed: int = 0

    def key(self) -> str:
        return content_key(self)


PRESETS: dict[str, TinyIFBaseConfig] = {
    "cpu-16": TinyIFBaseConfig(),
    "cpu-32": TinyIFBaseConfig(name="cpu-32", image_size=32),
    # Seconds to build: for tests only (it draws noise, not faces).
    "test": TinyIFBaseConfig(name="test", image_size=16, unet_channels=(16, 32), attention_head_dim=8, text_hidden=16,
                             text_layers=1, text_heads=2, vocab_size=300, text_steps=2, unet_epochs=1, batch_size=8,
                             train_images=16),
}


def tiny_if_base_dir(config: TinyIFBaseConfig, root: str | Path | None = None) -> Path:
    return Path(root) if root is not None else condface_home() / "if-base" / config.key()


def describe(config: TinyIFBaseConfig, path: Path) -> str:
    return (f"tiny offline IF base '{config.name}' ({config.image_size}px, IF stage I's classes, pretrained here on "
            f"the synthetic faces with shuffled captions; not DeepFloyd IF-I-M) at {path}")


def build_components(config: TinyIFBaseConfig, captions: list[str]):
    """Untrained tokenizer (trained on `captions`), T5 text encoder, IF-style U-Net and IF's scheduler."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    from models.if_family import IF_PROMPT_TOKENS

    torch.manual_seed(config.seed)
    tokenizer = caption_tokenizer(T5Tokenizer, captions, config.vocab_size)
    tokenizer.model_max_length = IF_PROMPT_TOKENS
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=config.text_hidden, d_kv=config.text_hidden // config.text_heads,
        d_ff=2 * config.text_hidden, num_layers=config.text_layers, num_heads=config.text_heads,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    ))
    m = len(config.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=config.image_size, in_channels=3, out_channels=6, layers_per_block=1,
        block_out_channels=config.unet_channels,
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * (m - 1),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D",) * (m - 1) + ("ResnetUpsampleBlock2D",),
        cross_attention_dim=config.unet_channels[-1], encoder_hid_dim=config.text_hidden,
        encoder_hid_dim_type="text_proj", attention_head_dim=config.attention_head_dim,
        addition_embed_type="text", addition_embed_type_num_heads=2, cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift", act_fn="gelu", norm_num_groups=min(16, config.unet_channels[0]),
    )
    # IF stage I's schedule (its scheduler/scheduler_config.json), with a fixed variance (module docstring)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02,
        prediction_type="epsilon", variance_type="fixed_small", thresholding=True, dynamic_thresholding_ratio=0.95,
        sample_max_value=1.5, clip_sample=True,
    )
    return tokenizer, text_encoder, unet, scheduler


def caption_tokenizer(cls, captions: list[str], vocab_size: int):
    """A `cls` (T5Tokenizer) whose Unigram vocabulary is the captions' most frequent lower-cased words (IFPipeline
    lower-cases prompts), scored by log frequency, plus their characters as a low-scored fallback."""
    words = Counter(w for c in captions for w in c.lower().split())
    chars = Counter(ch for c in captions for ch in c.lower() if not ch.isspace())
    total = sum(words.values()) + sum(chars.values())
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, math.log(n / total)) for w, n in words.most_common(max(1, vocab_size - len(chars) - 4))]
    vocab += [(ch, math.log(n / total) - 10.0) for ch, n in chars.most_common()] + [("\u2581", -20.0)]
    return cls(vocab=vocab, extra_ids=0)


def build_tiny_if_base(config: TinyIFBaseConfig, dataset, out: str | Path) -> Path:
    """Build, pretrain and save the tiny IF base as an IFPipeline folder at `out` (atomically)."""
    from diffusers import IFPipeline

    start = time.perf_counter()
    captions, levels = dataset_labels(dataset)
    image = dataset[0]["image"]
    if tuple(image.shape[-2:]) != (config.image_size,) * 2:
        raise ValueError(f"tiny IF base {config.name!r} needs {config.image_size}px images, got "
                         f"{tuple(image.shape[-2:])}")
    tokenizer, text_encoder, unet, scheduler = build_components(config, captions)
    text_acc = pretrain_text_encoder(text_encoder, tokenizer, captions, levels, config, attention_mask=True)
    print(f"tiny IF base: T5 encoder trained ({config.text_steps} steps, reads the levels from captions with "
          f"batch accuracy {text_acc:.3f}, {time.perf_counter() - start:.0f}s)", flush=True)
    pipe = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
                      safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    family = IFFamily(pipe, config.image_size, "tiny IF base (being pretrained)")
    last = pretrain_unet(family, dataset, captions, config)
    seconds = time.perf_counter() - start
    info = {"description": describe(config, Path(out)), "config": dataclasses.asdict(config),
            "text_level_accuracy": text_acc, "unet_train_loss": last.get("train_loss"),
            "pretrain_seconds": round(seconds, 1), "train_images": len(dataset),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(out)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp)
        (tmp / BASE_INFO_FILE).write_text(json.dumps(info, indent=2))
    print(f"tiny IF base: pretrained in {seconds:.0f}s, saved to {out}", flush=True)
    return out


def ensure_tiny_if_base(config: TinyIFBaseConfig, root: str | Path | None = None, dataset=None) -> tuple[Path, str]:
    """(folder, description) of the cached tiny IF base, building it first if needed (once, under a lock)."""
    path = tiny_if_base_dir(config, root)
    ensure_built(path, config, build_tiny_if_base, dataset)
    return path, describe(config, path)


def offline_if_base(config) -> Path | None:
    """The tiny IF base an if-lora config falls back to when its `pretrained` is None, built first if needed; None
    when it names real weights."""
    return None if config.pretrained is not None else ensure_tiny_if_base(PRESETS[config.tiny_base])[0]


def main(argv: list[str] | None = None) -> None:
    build_cli(argv, prog="python -m models.tiny_if_base", what="DeepFloyd IF stage I", presets=PRESETS,
              ensure=ensure_tiny_if_base, cache="if-base", pipeline="IFPipeline")


if __name__ == "__main__":
    main()
