"""Train the attribute estimator once per data cache and config, and reuse it: `ensure_estimator`.

    from evaluation.estimator_cache import ensure_estimator
    estimator_dir = ensure_estimator(cache_root)          # trains the small preset on first use only

Imports point one way: this module uses both `evaluation.estimator` (the model and its presets) and
`evaluation.train_estimator` (the training run); neither of them imports it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from data.cache import FaceCache, manifest_key
from data.catalogue import condface_home
from data.dataset import resolve_data
from data.io import file_lock
from evaluation.estimator import WEIGHTS_NAME, EstimatorConfig, estimator_preset


def estimator_cache_dir(cache_root: Path, config: EstimatorConfig) -> Path:
    """Where `ensure_estimator` keeps the estimator for this data cache and config (content-addressed)."""
    blob = manifest_key(cache_root) + json.dumps(config.to_json(), sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return condface_home() / "estimators" / f"{config.preset}-{key}"


def ensure_estimator(data: FaceCache | str | Path = "toy", preset: str = "small", size: int | None = None,
                     progress: bool = True, device: str | torch.device = "auto", **overrides) -> Path:
    """Return the directory of an estimator trained on `data` (a cache or its dir, or "toy" at `size` px).

    Trained on first use (on `device`, see `evaluation.config.eval_device`) and cached under
    $CONDFACE_HOME/estimators/ (keyed by the data cache's manifest, less its write time, and the estimator config,
    not the device); a file lock makes concurrent callers wait for one training run.
    """
    cache_root = data.root if isinstance(data, FaceCache) else resolve_data(str(data), size)
    config = estimator_preset(preset, **overrides)
    out = estimator_cache_dir(cache_root, config)
    if (out / WEIGHTS_NAME).is_file():
        return out
    with file_lock(out.parent / f".{out.name}.lock",
                   wait_message=f"waiting for another process to finish training the estimator {out} ..."):
        if not (out / WEIGHTS_NAME).is_file():
            from evaluation.train_estimator import train_estimator  # its torchmetrics and Albumentations: only to train

            train_estimator(cache_root, config, out, progress=progress, device=device)
    return out
