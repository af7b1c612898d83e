"""Caption conditioning shared by the text-conditioned families: the classifier-free-guidance drop and the
frozen text encoder's embeddings, computed as `StableDiffusionPipeline.encode_prompt` computes them.

The unconditional input of every text family is the empty caption's embedding (what SD's pipeline uses as its
unconditional prompt), so the engine's drop mask turns a caption into "".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

UNCONDITIONAL = ""  # the caption a dropped condition becomes


def dropped_captions(captions: Sequence[str], uncond: torch.Tensor) -> list[str]:
    """The batch's captions with the rows the engine dropped (`uncond` True) replaced by the empty caption."""
    return [UNCONDITIONAL if drop else str(c) for c, drop in zip(captions, uncond.tolist())]


@torch.no_grad()
def caption_embeddings(tokenizer, text_encoder: torch.nn.Module, captions: Sequence[str]) -> torch.Tensor:
    """(B, tokens, hidden) last hidden states of `text_encoder` for `captions`, padded to the tokenizer's
    model_max_length (no clip skip), on the encoder's device -- `StableDiffusionPipeline.encode_prompt`'s."""
    device = next(text_encoder.parameters()).device
    ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    mask = ids.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(ids.input_ids.to(device), attention_mask=mask)[0]
