"""Small real inputs for the evaluation tests: synthetic-face caches and tiny random-weight estimators."""

from __future__ import annotations

from pathlib import Path

import torch

from data.synthetic import write_synthetic_cache
from evaluation.estimator import AttributeEstimator, EstimatorConfig

TINY_ESTIMATOR = EstimatorConfig(
    preset="test", embedding_size=8, hidden_sizes=(8, 16), depths=(1, 1), layer_type="basic", input_size=16,
    pretrained=None, heads_epochs=0, full_epochs=1, full_lr=3e-3, batch_size=32, augment="none",
)


def face_cache(root: Path, size: int = 16, n_train: int = 64, n_val: int = 48, n_test: int = 48, seed: int = 0,
               distribution: str = "uniform") -> Path:
    return write_synthetic_cache(root / f"faces-{size}-{n_train}-{seed}", size=size, n_train=n_train, n_val=n_val,
                                 n_test=n_test, seed=seed, distribution=distribution, workers=1, progress=False)


def random_estimator(out: Path, seed: int = 0, config: EstimatorConfig = TINY_ESTIMATOR) -> Path:
    torch.manual_seed(seed)
    return AttributeEstimator(config).eval().save(out)
