"""Training checkpoints on disk: written atomically, loaded safely.

Layout: `<root>/epoch-NNNN/` holds `<name>.safetensors` files (tensors by name) and `<name>.pt`
files (small states: optimizer, LR scheduler, counters, RNG), loaded with
`torch.load(weights_only=True)`. Each epoch directory is first written under a temporary name
and then renamed (`data.io.atomic_dir`); `<root>/latest` (written with `data.io.atomic_write_text`)
names the newest complete one. A crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from data.io import atomic_dir, atomic_write_text

LATEST = "latest"


def save_checkpoint(
    root: str | Path,
    epoch: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    states: dict[str, Any],
    keep: int = 1,
) -> Path:
    """Write `tensors` (file name -> {tensor name -> tensor}) and `states` (file name -> object) for `epoch`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{epoch:04d}"
    with atomic_dir(final) as tmp:
        for name, group in tensors.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in group.items()}, str(tmp / f"{name}.safetensors"))
        for name, obj in states.items():
            torch.save(obj, tmp / f"{name}.pt")
    atomic_write_text(root / LATEST, final.name)
    _prune(root, keep, final)
    return final


def _prune(root: Path, keep: int, newest: Path) -> None:
    done = sorted(p for p in root.glob("epoch-*") if p.is_dir())
    for old in done[: max(len(done) - max(keep, 1), 0)]:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """{file name: contents} for every .safetensors and .pt file in a checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    out: dict[str, Any] = {}
    for f in sorted(path.glob("*.safetensors")):
        out[f.stem] = load_file(str(f), device=str(device))
    for f in sorted(path.glob("*.pt")):
        out[f.stem] = torch.load(f, map_location=device, weights_only=True)
    return out
