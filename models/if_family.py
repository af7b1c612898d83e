"""A DeepFloyd IF stage I pipeline as an engine family: pixel space, T5 caption embeddings, learned variance.

`IFFamily` trains the whole U-Net of a diffusers `IFPipeline` (how `models.tiny_if_base` pretrains its
base); `models.if_lora.IFLoRAFamily` builds on it, freezes the base and trains LoRA adapters. Imports
point one way: if_family <- tiny_if_base <- if_lora.

Conditioning: T5 encoder hidden states, computed by `IFPipeline.encode_prompt` itself (lower-cased, padded
to 77 tokens, the attention mask passed to T5; no caption cleaning, in training and in sampling alike). The text encoder is frozen, so a
caption's embedding never changes: `CaptionEmbeddings` computes it once per distinct caption and keeps
it IN MEMORY for the life of the family (one trial's process, every epoch of it; nothing on disk), up
to a byte bound (least recently used evicted first). The empty caption's embedding is the "no
condition" of classifier-free guidance, as it is the pipeline's default negative prompt.

Learned variance: IF's U-Net predicts 6 channels, epsilon and the interpolation of its variance
(`variance_type="learned_range"` in its scheduler). Training uses the epsilon half only (the
denoising loss, as diffusers' IF fine-tuning scripts do); the variance half is left to drift with the
shared LoRA weights and is not used: the training scheduler, and every sampler built from it, uses a
fixed variance ("fixed_small" for the DDPM sampler, which diffusers' IF docs prescribe for models
fine-tuned on epsilon only), and `IFPipeline` then drops the variance half before each step.

Noise schedule: the base's own (IF: the cosine schedule, "squaredcos_cap_v2", over T = 1000, epsilon)
with `num_train_timesteps` = T; a cosine schedule is defined on t/T, so another T is a finer or coarser
chain of the same process (`beta_rescale` needs (scaled-)linear betas and is refused here).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, IFPipeline

from data.io import atomic_dir
from models.family import DiffusionFamily
from models.schedulers import make_scheduler
from models.sd_family import training_scheduler as sd_training_scheduler
from models.text_condition import dropped_captions

IF_PROMPT_TOKENS = 77  # IFPipeline.encode_prompt pads and truncates every prompt to 77 T5 tokens
SENTENCEPIECE_MISSING = (
    "IF's T5 tokenizer (tokenizer/spiece.model, a sentencepiece model) needs the sentencepiece package, which is not "
    "installed here: `pip install sentencepiece` (a dependency of condface: `pip install -e .` installs it)"
)


def sentencepiece_missing(source: str | Path, err: BaseException | None = None) -> bool:
    """Whether loading IF's tokenizer from `source` fails (or failed with `err`) for want of sentencepiece.

    The real IF folders hold the T5 tokenizer as tokenizer/spiece.model only; without sentencepiece transformers
    cannot read it and reports an unrelated tiktoken error. A folder with tokenizer.json (the tiny bases) needs none.
    """
    from transformers.utils import is_sentencepiece_available

    if is_sentencepiece_available():
        return False
    tokenizer = Path(source).expanduser() / "tokenizer"
    if (tokenizer / "spiece.model").is_file() and not (tokenizer / "tokenizer.json").is_file():
        return True
    return err is not None and any(word in str(err).lower() for word in ("sentencepiece", "tiktoken"))


class IFLoRAPipeline(IFPipeline):
    """`IFPipeline` whose captions are used as given (clean_caption=False, as in training): IF's default
    cleaning lower-cases and rewrites captions when bs4 and ftfy are installed."""

    def __call__(self, *args: Any, clean_caption: bool = False, **kwargs: Any):
        return super().__call__(*args, clean_caption=clean_caption, **kwargs)


def if_training_scheduler(base_scheduler_config: Any, num_train_timesteps: int,
                          prediction_type: str | None = None, beta_rescale: bool = False) -> DDPMScheduler:
    """The base's schedule with T = num_train_timesteps and a fixed variance (see the module docstring)."""
    sched = sd_training_scheduler(base_scheduler_config, num_train_timesteps, prediction_type, beta_rescale)
    return DDPMScheduler.from_config(sched.config, variance_type="fixed_small", thresholding=False)


class CaptionEmbeddings:
    """Caption -> frozen text-encoder embedding (CPU tensor), each computed once, kept in memory up to
    `max_bytes` (least recently used evicted first). `hits` / `misses` count lookups."""

    def __init__(self, encode: Any, max_bytes: int):
        self.encode, self.max_bytes = encode, max_bytes
        self.table: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(c for c in captions if c not in self.table))
        self.misses += len(missing)
        self.hits += len(captions) - len(missing)
        fresh = dict(zip(missing, self.encode(missing).cpu())) if missing else {}
        rows = [fresh[c] if c in fresh else self.table[c] for c in captions]
        for c, row in zip(captions, rows):  # after the lookups: keeping may evict a row this batch uses
            self._keep(c, row)
        return torch.stack(rows)

    def _keep(self, caption: str, row: torch.Tensor) -> None:
        if caption in self.table:
            self.table.move_to_end(caption)
            return
        self.table[caption] = row
        self.bytes += row.numel() * row.element_size()
        while self.bytes > self.max_bytes and len(self.table) > 1:
            _, old = self.table.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


class IFFamily(DiffusionFamily):
    """An IF stage I pipeline as an engine family: x0 = pixels in [-1, 1], cond = T5 caption embeddings.

    As is, the whole U-Net trains (how `models.tiny_if_base` pretrains its base); `IFLoRAFamily`
    freezes it and trains adapters.
    """

    name = "if"

    def __init__(self, pipe: IFPipeline, image_size: int, base_description: str, num_train_timesteps: int = 1000,
                 prediction_type: str | None = None, beta_rescale: bool = False,
                 caption_cache_bytes: int = 2 * 1024**3):
        self.base = pipe
        self.text_encoder, self.tokenizer = pipe.text_encoder, pipe.tokenizer
        self.module = pipe.unet
        self.image_size = image_size
        self.base_description = base_description
        self.text_encoder.requires_grad_(False).eval()
        self.beta_rescale = beta_rescale
        self.noise_scheduler = if_training_scheduler(pipe.scheduler.config, num_train_timesteps, prediction_type,
                                                     beta_rescale)
        self.module.register_to_config(sample_size=image_size)  # the pipeline's default height and width
        self.captions = CaptionEmbeddings(self._encode, caption_cache_bytes)

    def to(self, device: str | torch.device) -> IFFamily:
        for net in (self.module, self.text_encoder):
            net.to(device)
        return self

    def _encode(self, captions: list[str]) -> torch.Tensor:
        """T5 hidden states computed by `IFPipeline.encode_prompt` itself, without caption cleaning."""
        device = next(self.text_encoder.parameters()).device
        return self.base.encode_prompt(captions, do_classifier_free_guidance=False, device=device,
                                       clean_caption=False)[0]

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """Caption embeddings on the family's device, from the in-memory cache where already computed."""
        return self.captions(list(captions)).to(self.device)

    def training_inputs(
        self, batch: dict[str, Any], uncond: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        images = batch["image"]
        self.check_image_size(images, self.image_size, "this IF base")
        captions = dropped_captions(batch["caption"], uncond)
        return images.to(self.device), {"encoder_hidden_states": self.encode_captions(captions)}

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        out = self.module(noisy, timesteps, encoder_hidden_states=cond["encoder_hidden_states"]).sample
        return out[:, : noisy.shape[1]]  # the epsilon half of IF's (epsilon, variance) output

    def pipeline(self, sampler: str = "ddpm", ddpm_variance: str = "fixed_small") -> IFLoRAPipeline:
        """The IF pipeline over this family's networks with sampler `sampler` (pixel space: x0 clipped to [-1, 1])."""
        pipe = self._assemble(IFLoRAPipeline, make_scheduler(sampler, self.noise_scheduler, space="pixel",
                                                             ddpm_variance=ddpm_variance))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_pretrained(self, directory: str | Path) -> None:
        """The whole pipeline as a plain `IFPipeline` folder with the training schedule."""
        with atomic_dir(directory) as tmp:
            self._assemble(IFPipeline, self.noise_scheduler).save_pretrained(tmp)

    def _assemble(self, cls: type[IFPipeline], scheduler: Any) -> IFPipeline:
        return cls(text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.module, scheduler=scheduler,
                   safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)

    def parameter_counts(self) -> dict[str, int]:
        nets = (self.module, self.text_encoder)
        return {
            "total": sum(p.numel() for net in nets for p in net.parameters()),
            "trainable": sum(p.numel() for p in self.trainable_parameters().values()),
            "unet": sum(p.numel() for n, p in self.module.named_parameters() if "lora_" not in n),
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_size": self.image_size, "base": self.base_description}


__all__ = ["CaptionEmbeddings", "IFFamily", "IFLoRAPipeline", "IF_PROMPT_TOKENS", "SENTENCEPIECE_MISSING",
           "if_training_scheduler", "sentencepiece_missing"]
