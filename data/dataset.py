"""A torch Dataset over an image cache: image in [-1, 1], the five levels, the 30-vector, the caption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data.augment import build_augmentation
from data.cache import FaceCache
from data.errors import DataError
from data.schema import levels_to_cond


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.array(images, dtype=np.uint8))  # copy: cache rows are read-only memmap views
    return t.movedim(-1, -3).float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3)."""
    t = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return t.movedim(-3, -1).cpu().numpy()


class FaceDataset(Dataset):
    """Items: {"image": float32 (3,H,W) in [-1,1], "levels": int64 (5,), "cond": float32 (30,), "caption": str}.

    Augmentation is seeded per item from torch's seed in the process that made the dataset or called
    `set_epoch` (before the DataLoader starts its workers), the epoch and the item's index: the same images
    come out with any number of DataLoader workers, and a run seeded with torch.manual_seed, interrupted and
    resumed at an epoch boundary, draws the same augmentations.
    """

    def __init__(
        self, cache: FaceCache | str | Path, split: str = "train", augment: str = "none", limit: int | None = None
    ):
        self.cache = cache if isinstance(cache, FaceCache) else FaceCache.open(cache)
        self.indices = self.cache.indices(split)
        if limit is not None:
            self.indices = self.indices[:limit]
        if len(self.indices) == 0:
            raise DataError(f"split {split!r} of {self.cache.root} is empty: rebuild the cache or choose another split")
        self.split, self.augment_name = split, augment
        self.augment = build_augmentation(augment)
        self.epoch, self.seed = 0, torch.initial_seed()

    def set_epoch(self, epoch: int) -> None:
        """Reseed the augmentation for this epoch (the training engine calls it), so a resumed run repeats it."""
        self.epoch, self.seed = epoch, torch.initial_seed()

    def __len__(self) -> int:
        return len(self.indices)

    def _seed_item(self, i: int) -> None:
        self.augment.set_random_seed(int(np.random.SeedSequence((self.seed, self.epoch, i)).generate_state(1)[0]))

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        image = np.asarray(self.cache.images[j])
        if self.augment is not None:
            self._seed_item(i)
            image = self.augment(image=image)["image"]
        levels = self.cache.levels[j]
        return {
            "image": to_model_range(image),
            "levels": torch.from_numpy(levels.astype(np.int64)),
            "cond": torch.from_numpy(levels_to_cond(levels)),
            "caption": self.cache.captions[j],
        }


def resolve_data(spec: str | Path, size: int | None = None) -> Path:
    """`toy` -> the embedded synthetic faces at `size` px (generated on first use); else a cache directory."""
    if str(spec) == "toy":
        from data.synthetic import toy_cache

        return toy_cache(size=size or 64)
    path = Path(spec)
    cache = FaceCache.open(path)  # raises a DataError naming the fix
    if size is not None and cache.size != size:
        raise DataError(
            f"cache {path} holds {cache.size}px images but {size}px were asked: prepare it with --size {size}"
        )
    return path
