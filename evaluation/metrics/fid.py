"""Frechet distances between generated and real images: Inception FID, or the estimator stand-in.

Both go through torchmetrics' `FrechetInceptionDistance` on uint8 images:
- `fid`: its Inception-v3 (2048 features; the metric resizes to 299 px itself). It needs the optional
  `torch-fidelity` package (which pulls torchvision) and the weights file
  `weights-inception-2015-12-05-6726825d.pth` (given as a path, or in torch hub's checkpoint cache).
  When either is missing `fid` is recorded as unavailable with the reason.
- `fd_estimator`: the same class with a custom `feature` module, the attribute estimator's pooled
  backbone features. It is not comparable with published FIDs, only with itself.

Paired (the study) or unpaired is decided by which real images the caller passes with each batch
(see evaluation.conditions). The sample counts of both halves are recorded with every value: FID on
100-250 samples (the study's protocol) is strongly biased upward compared with 10k samples.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from evaluation.estimator import AttributeEstimator
from evaluation.metrics.base import EvalBatch, Outcome, State, compute_loaded, restore, snapshot

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class EstimatorFeatures(nn.Module):
    """uint8 (B, 3, H, W) -> the estimator's pooled features (B, C): a `feature` module for torchmetrics FID."""

    def __init__(self, estimator: AttributeEstimator):
        super().__init__()
        self.estimator = estimator
        self.num_features = estimator.num_features  # torchmetrics reads this instead of probing with a dummy image

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.estimator.features(images.float() / 255.0)


def find_inception(weights: str | None) -> tuple[Path | None, str | None]:
    """(weights path, None) when Inception FID can run here, else (None, reason)."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return None, ("torch-fidelity is not installed (optional extra: `pip install condface[fid]`, "
                      "it pulls torchvision); fd_estimator stands in")
    path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        where = f"{path} does not exist" if weights else f"not in torch hub's cache ({path})"
        return None, f"Inception weights {INCEPTION_FILE} {where}: pass --inception-weights PATH"
    return path, None


class FrechetDistance:
    """One Frechet distance (`fid` or `fd_estimator`) accumulated over batches of generated + real images."""

    def __init__(self, name: str, metric: FrechetInceptionDistance):
        self.name = name
        self.metric = metric

    @classmethod
    def inception(cls, weights: Path, device: torch.device) -> FrechetDistance:
        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights))
        return cls("fid", metric.to(device))

    @classmethod
    def estimator(cls, estimator: AttributeEstimator, device: torch.device) -> FrechetDistance:
        """The stand-in on the estimator's features; its state tensors live on `device`, with the estimator."""
        metric = FrechetInceptionDistance(feature=EstimatorFeatures(estimator))
        return cls("fd_estimator", metric.to(device))

    def reset(self) -> None:
        self.metric.reset()

    def update(self, batch: EvalBatch) -> None:
        device = self.metric.fake_features_sum.device
        self.metric.update(batch.images.to(device), real=False)
        if batch.real is not None and len(batch.real):
            self.metric.update(batch.real.to(device), real=True)

    def state(self) -> State:
        return snapshot(self.metric)

    def compute(self, state: State) -> Outcome:
        restore(self.metric, state)
        n_fake = int(self.metric.fake_features_num_samples)
        n_real = int(self.metric.real_features_num_samples)
        out = Outcome(counts={f"{self.name}_n": n_fake, f"{self.name}_n_real": n_real})
        if n_real < 2 or n_fake < 2:
            what = "no real images were given" if n_real == 0 else f"{n_fake} generated / {n_real} real images"
            out.unavailable[self.name] = f"needs at least 2 generated and 2 real images ({what})"
        else:
            out.values[self.name] = float(compute_loaded(self.metric))
        return out
