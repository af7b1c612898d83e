"""CLIP score between each generated image and its caption (torchmetrics `CLIPScore`).

torchmetrics 1.9 calls `model.get_image_features(pixel_values)` / `model.get_text_features(ids, mask)`
and expects tensors; with transformers 5.x those methods return a `BaseModelOutputWithPooling` whose
`pooler_output` holds the projected embedding. `_TensorFeatures` is the small adapter that returns
that tensor, and `_TruncatingProcessor` makes the tokenizer truncate captions to the text model's
context (torchmetrics would otherwise cut the ids itself and drop the end-of-text token CLIP pools
on). They reach `CLIPScore` through the callable form of its `model_name_or_path` argument, which
accepts any model id or local directory.

Weights are read with `local_files_only=True` unless hub downloads are allowed, so an offline run
reports "unavailable" at once instead of retrying the Hub.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.multimodal.clip_score import CLIPScore
from transformers import CLIPModel, CLIPProcessor

from evaluation.metrics.base import EvalBatch, Outcome, State, compute_loaded, restore, snapshot


class _TensorFeatures(nn.Module):
    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model
        self.config = model.config  # torchmetrics reads text_config.max_position_embeddings

    @staticmethod
    def _tensor(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


class _TruncatingProcessor:
    def __init__(self, processor: CLIPProcessor, max_length: int):
        self.processor, self.max_length = processor, max_length

    def __call__(self, text=None, images=None, **kwargs):
        if text is not None:
            kwargs.update(truncation=True, max_length=self.max_length)
        return self.processor(text=text, images=images, **kwargs)


def load_clip(name_or_path: str, hub_download: bool = False) -> tuple[nn.Module, _TruncatingProcessor]:
    model = CLIPModel.from_pretrained(name_or_path, local_files_only=not hub_download).eval()
    processor = CLIPProcessor.from_pretrained(name_or_path, local_files_only=not hub_download)
    return _TensorFeatures(model), _TruncatingProcessor(processor, model.config.text_config.max_position_embeddings)


class CaptionAgreement:
    name = "clip_score"

    def __init__(self, name_or_path: str, device: torch.device, hub_download: bool = False):
        model, processor = load_clip(name_or_path, hub_download)
        self.metric = CLIPScore(model_name_or_path=lambda: (model, processor)).to(device)
        self.device = device

    def reset(self) -> None:
        self.metric.reset()

    @torch.no_grad()
    def update(self, batch: EvalBatch) -> None:
        if batch.captions is None:
            return
        if len(batch.captions) != len(batch.images):
            raise ValueError(f"{len(batch.images)} images but {len(batch.captions)} captions")
        self.metric.update(batch.images.to(self.device), list(batch.captions))

    def state(self) -> State:
        return snapshot(self.metric)

    def compute(self, state: State) -> Outcome:
        restore(self.metric, state)
        n = int(self.metric.n_samples)
        out = Outcome(counts={"clip_score_n": n})
        if n == 0:
            out.unavailable[self.name] = "no captions were given with the images"
        else:
            out.values[self.name] = float(compute_loaded(self.metric))
        return out
