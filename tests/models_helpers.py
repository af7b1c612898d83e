"""Shared tiny fixtures for the models tests: a micro DDPM config and an in-memory face-item dataset."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from data.schema import levels_to_cond
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
