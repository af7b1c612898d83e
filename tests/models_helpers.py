"""Shared tiny fixtures for the models tests: a micro DDPM config, an in-memory face-item dataset, captioned faces."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from data.dataset import to_model_range
from data.schema import levels_to_cond
from data.synthetic import draw_faces, sample_levels
from models.ddpm import DDPMConfig, DDPMFamily, ddpm_config

MICRO = ddpm_config("cpu-16", block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=32)


class RandomFaces(Dataset):
    """Items in the data layer's format with random pixels and levels (no structure to learn)."""

    def __init__(self, n: int, size: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.levels = torch.randint(0, 6, (n, 5), generator=g)
        self.images = torch.rand(n, 3, size, size, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "levels": self.levels[i], "cond": levels_to_cond(self.levels[i]),
                "caption": "a face"}


def micro_family(seed: int = 0, config: DDPMConfig = MICRO) -> DDPMFamily:
    torch.manual_seed(seed)
    return DDPMFamily(config)


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


FACE_SIZE = 16  # the captioned families' tests (sd-lora, if-lora) train at this size


def captioned_faces(n: int, seed: int = 0) -> list[dict]:
    """`n` synthetic face items with their levels, condition vector and caption, at FACE_SIZE."""
    levels = sample_levels(n, np.random.default_rng(seed), "uniform")
    images, captions = draw_faces(levels, FACE_SIZE, seed)
    return [
        {"image": to_model_range(images[i]), "levels": torch.from_numpy(levels[i]),
         "cond": torch.from_numpy(levels_to_cond(levels[i])), "caption": captions[i]}
        for i in range(n)
    ]
