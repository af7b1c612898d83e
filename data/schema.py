"""The five CelebA-Dialog attributes, their six levels, and the 30-value condition vector.

This is the one place that knows the attribute order. Levels are integers 0..5; the
condition vector is the concatenation of five one-hot vectors (5 x 6 = 30 values), and the
all-zero vector means "unconditional" (classifier-free guidance).
"""

from __future__ import annotations

import numpy as np
import torch

ATTRIBUTES: tuple[str, ...] = ("bangs", "eyeglasses", "beard", "smiling", "age")
# CelebA-Dialog column names, same order. No_Beard and Young already rise with more beard / more age.
DIALOG_COLUMNS: tuple[str, ...] = ("Bangs", "Eyeglasses", "No_Beard", "Smiling", "Young")
NUM_ATTRIBUTES = len(ATTRIBUTES)
NUM_LEVELS = 6
COND_DIM = NUM_ATTRIBUTES * NUM_LEVELS


def check_levels(levels: np.ndarray | torch.Tensor) -> None:
    """Raise ValueError unless `levels` has shape (..., 5) with integer values in 0..5."""
    shape = tuple(levels.shape)
    if not shape or shape[-1] != NUM_ATTRIBUTES:
        raise ValueError(f"attribute levels must have shape (..., {NUM_ATTRIBUTES}), got {shape}")
    arr = levels.detach().cpu().numpy() if isinstance(levels, torch.Tensor) else np.asarray(levels)
    if arr.size and (arr.min() < 0 or arr.max() >= NUM_LEVELS):
        raise ValueError(f"attribute levels must be in 0..{NUM_LEVELS - 1}, got {arr.min()}..{arr.max()}")
    if arr.size and not np.all(arr == np.round(arr)):
        raise ValueError("attribute levels must be integers")


def levels_to_cond(levels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(..., 5) integer levels -> (..., 30) float32 concatenated one-hot; keeps numpy/torch type."""
    check_levels(levels)
    if isinstance(levels, torch.Tensor):
        onehot = torch.nn.functional.one_hot(levels.long(), NUM_LEVELS).to(torch.float32)
        return onehot.flatten(-2)
    arr = np.asarray(levels).astype(np.int64)
    onehot = np.eye(NUM_LEVELS, dtype=np.float32)[arr]
    return onehot.reshape(*arr.shape[:-1], COND_DIM)


def cond_to_levels(cond: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(..., 30) condition vectors -> (..., 5) int64 levels (argmax per attribute).

    The all-zero (unconditional) vector has no levels; it raises ValueError.
    """
    if tuple(cond.shape)[-1:] != (COND_DIM,):
        raise ValueError(f"condition vectors must have shape (..., {COND_DIM}), got {tuple(cond.shape)}")
    grouped = cond.reshape(*cond.shape[:-1], NUM_ATTRIBUTES, NUM_LEVELS)
    if isinstance(cond, torch.Tensor):
        if bool((grouped.abs().sum(-1) == 0).any()):
            raise ValueError("an all-zero condition block is unconditional and has no level")
        return grouped.argmax(-1)
    if np.any(np.abs(grouped).sum(-1) == 0):
        raise ValueError("an all-zero condition block is unconditional and has no level")
    return grouped.argmax(-1).astype(np.int64)


def unconditional(batch_size: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """The all-zero condition batch (B, 30)."""
    if like is not None:
        return torch.zeros(batch_size, COND_DIM, dtype=like.dtype, device=like.device)
    return torch.zeros(batch_size, COND_DIM)


def as_cond(attributes: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Accept levels (B, 5) or condition vectors (B, 30); return float (B, 30) condition vectors."""
    t = torch.as_tensor(np.asarray(attributes) if not isinstance(attributes, torch.Tensor) else attributes)
    if t.ndim != 2 or t.shape[-1] not in (NUM_ATTRIBUTES, COND_DIM):
        raise ValueError(
            f"attributes must be levels (B, {NUM_ATTRIBUTES}) or condition vectors (B, {COND_DIM}), "
            f"got {tuple(t.shape)}"
        )
    if t.shape[-1] == NUM_ATTRIBUTES:
        return levels_to_cond(t.long())
    return t.to(torch.float32)
