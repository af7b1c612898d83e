"""The one training engine every model family uses (see models.family.DiffusionFamily)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline
from diffusers.training_utils import EMAModel
from torch.utils.data import Dataset

from models.family import DiffusionFamily


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every family. `batch_size` is the micro-batch; the
    effective batch per optimizer step is batch_size * grad_accum (the study: 32, or 32 x 4)."""

    epochs: int = 5
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_scheduler: str = "constant"  # any name diffusers.optimization.get_scheduler knows
    lr_warmup_steps: int = 0
    grad_clip: float | None = 1.0
    min_snr_gamma: float | None = None  # the study's grid: None (off) or 5.0
    p_uncond: float = 0.1  # classifier-free guidance: probability of training with the empty condition
    ema: bool = True
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay = min(ema_decay, 1 - (1 + step)^-ema_power): short runs stay near the weights
    ema_power: float = 2 / 3
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    mixed_precision: str = "auto"  # "auto" (bf16 on cuda, none on cpu), "bf16", "no"
    channels_last: bool = True  # applied on cuda only
    compile: bool = False  # torch.compile the family's module; applied on cuda only
    num_workers: int = 0
    max_steps_per_epoch: int | None = None  # cap optimizer steps per epoch (short CPU trials)
    epoch_time_budget_s: float | None = None  # end an epoch after this many seconds (not reproducible)
    val_samples: int = 256  # held-out denoising loss on this many fixed val items (0: off)
    val_batch_size: int = 64
    log_every: int = 0  # also print a line every N optimizer steps (0: per-epoch lines only)
    progress: bool = True  # tqdm bar per epoch


@dataclass
class EpochReport:
    """What `on_epoch` receives after every epoch. Return True from the hook to stop training."""

    epoch: int  # 0-based index of the epoch just finished
    epochs: int
    step: int  # optimizer steps so far
    train_loss: float
    val_loss: float | None
    epoch_seconds: float
    images_per_second: float
    lr: float
    checkpoint: Path | None  # the checkpoint directory written for this epoch, if any
    family: DiffusionFamily
    _ema: EMAModel | None = field(default=None, repr=False)

    def metrics(self) -> dict[str, float]:
        out = {
            "train_loss": self.train_loss,
            "epoch_seconds": self.epoch_seconds,
            "images_per_second": self.images_per_second,
            "lr": self.lr,
            "step": float(self.step),
        }
        if self.val_loss is not None:
            out["val_loss"] = self.val_loss
        return out

    @contextlib.contextmanager
    def sampling(self) -> Iterator[DiffusionPipeline]:
        """The family's pipeline with EMA weights swapped in (eval mode); training weights come back after."""
        with ema_weights(self.family, self._ema):
            yield self.family.pipeline()


@dataclass
class FitResult:
    epochs_completed: int
    step: int
    stopped_early: bool
    history: list[dict[str, float]]
    ema_applied: bool  # True: the family now holds the EMA weights (what pipeline()/save_pretrained use)


@contextlib.contextmanager
def ema_weights(family: DiffusionFamily, ema: EMAModel | None) -> Iterator[None]:
    """Temporarily load EMA weights into the family (no-op without EMA), in eval mode."""
    params = list(family.trainable_parameters().values())
    was_training = family.module.training
    family.module.eval()
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        yield
    finally:
        if ema is not None:
            ema.restore(params)
        family.module.train(was_training)


def fit(
    family: DiffusionFamily,
    config: TrainConfig,
    train_dataset: Dataset,
    on_epoch: Callable[[EpochReport], bool | None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool | str | Path = True,
    val_dataset: Dataset | None = None,
) -> FitResult:
    """Train `family` on `train_dataset` (items: {"image", "levels", "cond", "caption"}).

    checkpoint_dir: a checkpoint is written there after every epoch (atomically).
    resume: True -> continue from the latest checkpoint in checkpoint_dir if there is one;
    a path -> continue from that checkpoint directory; False -> start fresh.
    """
    raise NotImplementedError("engine body in progress")


__all__: list[Any] = ["TrainConfig", "EpochReport", "FitResult", "fit", "ema_weights"]
