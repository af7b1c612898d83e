"""The conditions to generate for an evaluation, and the real images that pair with them.

Paired (the study's FID protocol): n rows are drawn from a split; the generator is asked for each
row's levels / caption, and that row's real image is the real half of FID, so both halves share the
same attribute distribution. Unpaired: the real half is an independent draw of n rows from the split.
Real images are read from the cache's memory map in chunks (`batches`), so a 10k-sample protocol
never holds all of them at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.cache import FaceCache
from evaluation.config import FID_PROTOCOLS
from evaluation.errors import EvalError


@dataclass(frozen=True)
class PairedSet:
    cache: FaceCache
    indices: np.ndarray  # rows whose conditions are generated
    real_indices: np.ndarray  # rows whose images are the real half (== indices when paired)
    levels: np.ndarray  # (n, 5) int64
    captions: list[str]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def real_images(self) -> np.ndarray:
        """All real images, uint8 (n, H, W, 3). For large n iterate `batches` instead."""
        return np.asarray(self.cache.images[self.real_indices])

    def condition_images(self, batch_size: int) -> Iterator[np.ndarray]:
        """The real images of the condition rows themselves, in chunks (the "ground truth" answer)."""
        for i in range(0, len(self), batch_size):
            yield np.asarray(self.cache.images[self.indices[i : i + batch_size]])

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
        """(levels, captions, real images) chunks in order."""
        for i in range(0, len(self), batch_size):
            real = np.asarray(self.cache.images[self.real_indices[i : i + batch_size]])
            yield self.levels[i : i + batch_size], self.captions[i : i + batch_size], real


def paired_conditions(cache: FaceCache | str | Path, n: int, split: str = "val", seed: int = 0,
                      protocol: str = "paired") -> PairedSet:
    """n distinct rows of `split` drawn with `seed`: their levels and captions, and the real half of FID."""
    cache = cache if isinstance(cache, FaceCache) else FaceCache.open(cache)
    if protocol not in FID_PROTOCOLS:
        raise EvalError(f"unknown FID protocol {protocol!r}: use one of {', '.join(FID_PROTOCOLS)}")
    pool = cache.indices(split)
    if n < 1 or n > len(pool):
        raise EvalError(f"asked for {n} evaluation samples but split {split!r} of {cache.root} has {len(pool)} images: "
                        f"choose 1..{len(pool)} samples or a larger split")
    rng = np.random.default_rng(seed)
    indices = rng.choice(pool, size=n, replace=False)
    real = indices if protocol == "paired" else rng.choice(pool, size=n, replace=False)
    return PairedSet(
        cache=cache,
        indices=indices,
        real_indices=real,
        levels=np.asarray(cache.levels[indices], dtype=np.int64),
        captions=[cache.captions[i] for i in indices],
    )
