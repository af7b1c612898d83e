"""Training checkpoints on disk: written atomically, loaded safely.

Layout: `<root>/epoch-NNNN/` holds `<name>.safetensors` files (tensors by name) and `<name>.pt`
files (small states: optimizer, LR scheduler, counters, RNG), loaded with
`torch.load(weights_only=True)`. Each epoch directory is first written under a temporary name
and then renamed (`data.io.atomic_dir`); `<root>/latest` (written with `data.io.atomic_write_text`)
names the newest complete one. A crash mid-write leaves the previous checkpoint intact.

The training engine's state (`TrainingState`: trainable weights, EMA, optimizer, LR schedule) is saved
with the counters and every RNG's state, so a resumed run draws what an uninterrupted one would have.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from data.io import atomic_dir, atomic_write_text
from models.errors import ConfigError
from models.family import DiffusionFamily

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


# --- the training engine's state ---------------------------------------------------------------
@dataclass
class TrainingState:
    """What a training checkpoint holds besides its counters (epoch, step, sample index)."""

    family: DiffusionFamily
    named: dict[str, torch.nn.Parameter]  # the trainable parameters by name
    optimizer: torch.optim.Optimizer
    lr_sched: Any
    ema: EMAModel | None


@dataclass
class Progress:
    """Where a run stands: the next epoch to train, optimizer steps so far, and the next sample's index."""

    epoch: int = 0
    step: int = 0
    sample_index: int = 0


def resume_source(checkpoint_dir: str | Path | None, resume: bool | str | Path) -> Path | None:
    """The checkpoint `fit(resume=...)` continues from: True -> the latest in checkpoint_dir (if any), a path ->
    that checkpoint (or the latest under that root), False -> None."""
    if resume is False:
        return None
    if resume is True:
        return latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    path = Path(resume)
    if path.is_dir() and latest_checkpoint(path) is not None:  # a checkpoint root rather than one epoch's directory
        return latest_checkpoint(path)
    if not (path / "state.pt").is_file():
        raise ConfigError(f"cannot resume: no checkpoint at {path} (expected state.pt or a 'latest' pointer)")
    return path


def save_training(root: str | Path, train: TrainingState, done: Progress, train_config: dict[str, Any]) -> Path:
    """Checkpoint `train` after epoch `done.epoch - 1` (written atomically under `root`)."""
    tensors = {"trainable": dict(train.named)}
    if train.ema is not None:
        tensors["ema"] = dict(zip(train.named, train.ema.shadow_params))
    state = {
        "epoch": done.epoch,
        "step": done.step,
        "sample_index": done.sample_index,
        "family": train.family.name,
        "parameter_names": list(train.named),
        "lr_scheduler": train.lr_sched.state_dict(),
        "ema_optimization_step": train.ema.optimization_step if train.ema is not None else 0,
        "rng": rng_state(),
        "train_config": {k: v for k, v in train_config.items() if isinstance(v, int | float | str | bool | None)},
    }
    return save_checkpoint(root, done.epoch - 1, tensors, {"optimizer": train.optimizer.state_dict(), "state": state})


def restore_training(path: Path, train: TrainingState) -> Progress:
    """Load the checkpoint at `path` into `train` (and the RNGs); where the run it was written by stood."""
    ckpt = load_checkpoint(path, device="cpu")
    state, named, family = ckpt["state"], train.named, train.family
    shapes_match = all(
        name in ckpt["trainable"] and ckpt["trainable"][name].shape == p.shape for name, p in named.items()
    )
    if state["family"] != family.name or state["parameter_names"] != list(named) or not shapes_match:
        raise ConfigError(
            f"checkpoint {path} is of family {state['family']!r} with other parameters than this "
            f"{family.name!r} model; point --resume/checkpoint_dir at a matching run or start fresh"
        )
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(ckpt["trainable"][name])
        if train.ema is not None and "ema" in ckpt:
            for shadow, name in zip(train.ema.shadow_params, named):
                shadow.copy_(ckpt["ema"][name])
            train.ema.optimization_step = state["ema_optimization_step"]
    train.optimizer.load_state_dict(ckpt["optimizer"])
    train.lr_sched.load_state_dict(state["lr_scheduler"])
    set_rng_state(state["rng"])
    return Progress(int(state["epoch"]), int(state["step"]), int(state["sample_index"]))


# --- random number generators ------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global generator's state, in a form `torch.load(weights_only=True)` reads back."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_gauss": (int(np_state["has_gauss"]), float(np_state["gauss"])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()  # one state per visible GPU, in device order
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": state["numpy_key"].cpu().numpy().astype(np.uint32), "pos": state["numpy_pos"]},
        "has_gauss": state["numpy_gauss"][0],
        "gauss": state["numpy_gauss"][1],
    })
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        # a resumed trial or worker may see fewer (or more) GPUs than the run that saved (Ray sets
        # CUDA_VISIBLE_DEVICES per worker): restore the devices both have; a CPU-only run ignores the GPUs' states
        for index, saved in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(saved.cpu(), index)


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x
