"""The one training engine every model family uses (see models.family.DiffusionFamily).

Divergence: a NaN or infinite training loss stops `fit` with `models.errors.DivergedError` (one line:
epoch, step, loss, the fix) before that epoch's checkpoint is written or `on_epoch` runs. The check
reads the running loss sum, which stays NaN/inf once any step's loss was: on the CPU after every
optimizer step (reading a CPU scalar costs nothing), on an accelerator every DIVERGENCE_CHECK_EVERY
steps -- where the progress bar already reads the loss, so the check adds no synchronisation -- and at
the end of every epoch. There a diverged run is caught at most DIVERGENCE_CHECK_EVERY - 1 steps late.

Loss per step: `EpochReport.step_losses` holds (optimizer step, mean training loss over the window of
`loss_every` optimizer steps that ends there). Windows end at the multiples of `loss_every` (counted
over the whole run) and at the end of each epoch, so each epoch's report covers exactly its own steps.
On an accelerator the window means stay on the device until the end of the epoch (one transfer).

Data parallel: when torch.distributed is initialised (e.g. by Ray Train's TorchTrainer: gloo on the CPU, nccl on
GPUs) with W processes, `fit` trains one model on all of them with the same GLOBAL batch as one process:
parameters are broadcast from rank 0 at the start, every micro-batch of `batch_size` items is split into W equal
contiguous shares (rank r takes the r-th; `batch_size` must divide by W), each sample keeps the noise, timestep
and condition drop it gets in a single process (they are drawn from its index in the epoch), and the gradients
are averaged over the ranks (one all-reduce per optimizer step, what DistributedDataParallel does) before
clipping and the AdamW step, so every rank takes the same step. The reported losses are the means over all
ranks. Only rank 0 writes checkpoints (`EpochReport.checkpoint` is None elsewhere); every rank calls `on_epoch`
(see `distributed()` for the rank). The module itself is not wrapped in DistributedDataParallel: the families
call their module with its attributes (config, dtype), which a wrapper hides. The loss is checked for NaN/inf
at the end of each epoch, on all ranks at once; `epoch_time_budget_s` is refused (ranks would stop apart).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Subset
from tqdm.auto import tqdm

from models.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from models.errors import ConfigError, DivergedError
from models.family import DiffusionFamily
from models.objective import heldout_loss, training_loss
from models.runtime import cpu_supports_bf16, resolve_device

DIVERGENCE_CHECK_EVERY = 10  # on an accelerator: optimizer steps between checks of the loss for NaN/inf
# CPU defaults of the "auto" settings. `python -m models.bench_cpu [--threads 1]` on an idle 2-core AVX512-BF16 AMD EPYC
# (2026-11-26, load 0.2-0.9; cpu-16 DDPM, batch 32), engine training img/s at 2 threads / 1 thread:
#   fp32 505 / 334 (67 % / 75 % of the measured fp32 peak), channels_last 508 / 326, compile 511 / 333,
#   bf16 543 / 384, all three 592 / 404; sampling (DPM-Solver++ 20, CFG) fp32 40.9 / 27.0, bf16 46.6 / 32.2,
#   all three 64.7 / 42.9.
# * bf16 off on CPUs (opt in: TrainConfig.mixed_precision="bf16", the sweep's --mixed-precision bf16): it pays only
#   8-15 % in training, and `python -m evaluation.ablation --variant fp32 mixed_precision=no --variant bf16
#   mixed_precision=bf16 --samples 300` found no quality cost (balanced accuracy fp32 0.247 / 0.260, bf16 0.251 /
#   0.242; held-out loss 0.0474 vs 0.0471-0.0474), but its
#   rounding blurs what the engine guarantees in fp32 (on, it failed the tests that grad_accum 4 x 8 = batch 32 and
#   two DDP workers = one process) and adds noise to the held-out loss the CPU presets rank trials by.
# * channels_last off: no gain at these sizes. compile off: 1-2 % in training for a 62-85 s first warm-up per
#   process (7 s once inductor's on-disk cache holds the graph) -- more than it saves in a 20-60 s grid trial.
CPU_AUTO_BF16 = False
MIXED_PRECISIONS = ("auto", "bf16", "no")  # TrainConfig.mixed_precision; also sampling's and the estimator's
CPU_AUTO_CHANNELS_LAST = False


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
    # "auto": bf16 autocast on cuda; on the CPU per CPU_AUTO_BF16 and only where models.runtime.cpu_supports_bf16()
    # (AVX512-BF16/AMX); "bf16": always (a CPU without native bf16 emulates it, slowly); "no": fp32
    mixed_precision: str = "auto"
    channels_last: bool | None = None  # None: auto (cuda yes, CPU per CPU_AUTO_CHANNELS_LAST); True/False: any device
    compile: bool = False  # torch.compile the family's module (cuda: inductor/triton; CPU: inductor's C++ backend)
    threads: int | None = None  # torch intra-op threads for this run (None: leave the process's setting)
    num_workers: int = 0
    max_steps_per_epoch: int | None = None  # cap optimizer steps per epoch (short CPU trials)
    epoch_time_budget_s: float | None = None  # end an epoch after this many seconds (not reproducible)
    val_samples: int = 256  # held-out denoising loss on this many fixed val items (0: off)
    val_batch_size: int = 64
    log_every: int = 0  # also print a line every N optimizer steps (0: per-epoch lines only)
    loss_every: int = 10  # EpochReport.step_losses: mean training loss per window of N optimizer steps (0: off)
    progress: bool = True  # tqdm bar per epoch
    verbose: bool = True  # one printed line per epoch

    def __post_init__(self) -> None:
        _validate(self)


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
    # (optimizer step, mean training loss of the loss_every-step window ending there), for this epoch's steps
    step_losses: list[tuple[int, float]] = field(default_factory=list)
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
    step_losses: list[tuple[int, float]] = field(default_factory=list)  # every epoch's, in order (this call's)


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

    checkpoint_dir: a checkpoint is written there after every epoch (atomically), before `on_epoch`.
    resume: True -> continue from the latest checkpoint in checkpoint_dir if there is one;
    a path -> continue from that checkpoint directory; False -> start fresh.
    val_dataset: the first `config.val_samples` items give the held-out denoising loss (EMA weights).
    At the end the family holds the EMA weights (when EMA is on), ready for sampling / save_pretrained.
    """
    cfg = config
    device = resolve_device(cfg.device)
    amp = _autocast_dtype(cfg.mixed_precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    family.to(device)
    module = family.module
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if use_channels_last(cfg.channels_last, device):
        module.to(memory_format=torch.channels_last)

    named = family.trainable_parameters()
    params = list(named.values())
    if not params:
        raise ConfigError(f"family {family.name!r} has no trainable parameters")
    steps_per_epoch = _steps_per_epoch(len(train_dataset), cfg)
    rank, world = distributed()
    share = cfg.batch_size // world  # this rank's items of every micro-batch
    if world > 1:
        if cfg.batch_size % world:
            raise ConfigError(f"batch_size {cfg.batch_size} does not divide among {world} data-parallel workers: "
                              f"use a multiple of {world} (the global batch stays batch_size x grad_accum)")
        if cfg.epoch_time_budget_s is not None:
            raise ConfigError("epoch_time_budget_s cannot be used with data-parallel workers (they would stop at "
                              "different steps): cap epochs with max_steps_per_epoch instead")
        _broadcast_from_rank0(params)
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None
    )
    lr_sched = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=cfg.epochs * steps_per_epoch,
    )
    ema = (
        EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=cfg.ema_warmup, power=cfg.ema_power,
                 foreach=device.type == "cuda")
        if cfg.ema else None
    )

    start_epoch, step, sample_index = 0, 0, 0
    source = _resume_source(checkpoint_dir, resume)
    if source is not None:
        start_epoch, step, sample_index = _restore(source, family, named, optimizer, lr_sched, ema, device)
        if cfg.verbose:
            print(f"resumed from {source} (epoch {start_epoch}, step {step})", flush=True)
    if cfg.compile and getattr(module, "_compiled_call_impl", None) is None:  # not twice (fit called again)
        module.compile()
    val_batches = _val_batches(val_dataset, cfg)

    history: list[dict[str, float]] = []
    all_step_losses: list[tuple[int, float]] = []
    stopped = False
    epoch = start_epoch - 1
    check_every = 1 if device.type == "cpu" else DIVERGENCE_CHECK_EVERY
    for epoch in range(start_epoch, cfg.epochs):
        module.train()
        if hasattr(train_dataset, "set_epoch"):  # e.g. to reseed augmentation per epoch (exact resume)
            train_dataset.set_epoch(epoch)
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        if world > 1:  # the same shuffled global batches as one process; this rank's share of each
            batches_of = _RankShare(BatchSampler(RandomSampler(train_dataset, generator=generator), cfg.batch_size,
                                                 drop_last=True), rank, world)
            # the loader draws its base seed from `generator` before the sampler shuffles, as with shuffle=True
            loader = DataLoader(train_dataset, batch_sampler=batches_of, num_workers=cfg.num_workers,
                                generator=generator, pin_memory=device.type == "cuda")
        else:
            loader = DataLoader(
                train_dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
                generator=generator, pin_memory=device.type == "cuda",
            )
        batches = iter(loader)
        loss_sum = torch.zeros((), device=device)
        window_sum, window_steps = torch.zeros((), device=device), 0
        windows: list[tuple[int, torch.Tensor]] = []  # (last step, window mean), still on the device
        done = 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                   leave=False, dynamic_ncols=True)
        start = time.perf_counter()
        for _ in range(steps_per_epoch):
            for _ in range(cfg.grad_accum):
                loss = training_loss(family, next(batches), cfg.seed, sample_index + rank * share, cfg.p_uncond,
                                     cfg.min_snr_gamma, amp)
                (loss / cfg.grad_accum).backward()
                part = loss.detach() / cfg.grad_accum
                loss_sum += part
                if cfg.loss_every:
                    window_sum += part
                sample_index += cfg.batch_size
            if world > 1:
                _average_gradients(params, world)
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(params)
            step += 1
            done += 1
            window_steps += 1
            bar.update(1)
            if cfg.loss_every and step % cfg.loss_every == 0:
                windows.append((step, window_sum / window_steps))
                window_sum, window_steps = torch.zeros((), device=device), 0
            show = done % 10 == 0 or done == steps_per_epoch
            log = bool(cfg.log_every) and step % cfg.log_every == 0
            if show or log or done % check_every == 0:
                running = loss_sum.item() / done
                if world == 1:  # data parallel: checked at the end of the epoch, on every rank at once
                    _check_finite(running, epoch, step, cfg, bar)
                if show:
                    bar.set_postfix(loss=f"{running:.4f}")
                if log:
                    print(f"  step {step}  loss {running:.4f}", flush=True)
            if cfg.epoch_time_budget_s is not None and time.perf_counter() - start > cfg.epoch_time_budget_s:
                break
        del batches
        if cfg.loss_every and window_steps:
            windows.append((step, window_sum / window_steps))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if world > 1:  # the means over every rank's shares
            loss_sum = _mean_across_ranks(loss_sum, world)
            if windows:
                means = _mean_across_ranks(torch.stack([v for _, v in windows]), world)
                windows = [(s, means[i]) for i, (s, _) in enumerate(windows)]
        train_loss = loss_sum.item() / done
        _check_finite(train_loss, epoch, step, cfg, bar)
        bar.close()
        step_losses = (list(zip([s for s, _ in windows], torch.stack([v for _, v in windows]).tolist()))
                       if windows else [])
        all_step_losses.extend(step_losses)
        val_loss = None
        if val_batches:
            with ema_weights(family, ema):
                val_loss = heldout_loss(family, val_batches, amp)

        checkpoint = None
        if checkpoint_dir is not None and rank == 0:
            checkpoint = _save(checkpoint_dir, epoch, family, named, optimizer, lr_sched, ema, step, sample_index, cfg)
        report = EpochReport(
            epoch=epoch, epochs=cfg.epochs, step=step, train_loss=train_loss, val_loss=val_loss,
            epoch_seconds=seconds, images_per_second=done * cfg.grad_accum * cfg.batch_size / seconds,
            lr=lr_sched.get_last_lr()[0], checkpoint=checkpoint, family=family, step_losses=step_losses, _ema=ema,
        )
        history.append({"epoch": float(epoch), **report.metrics()})
        val_text = f"  val {val_loss:.4f}" if val_loss is not None else ""
        if cfg.verbose:
            print(
                f"epoch {epoch + 1}/{cfg.epochs}  step {step}  loss {train_loss:.4f}{val_text}  {seconds:.1f}s  "
                f"{report.images_per_second:.0f} img/s  lr {report.lr:.2e}",
                flush=True,
            )
        if on_epoch is not None and on_epoch(report):
            stopped = True
            break

    if ema is not None:
        ema.copy_to(params)
    module.eval()
    return FitResult(epochs_completed=epoch + 1, step=step, stopped_early=stopped, history=history,
                     ema_applied=ema is not None, step_losses=all_step_losses)


# --- helpers ---------------------------------------------------------------------------------------
def distributed() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group this process trains in; (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _RankShare:
    """A batch sampler: rank r's contiguous share of every batch of `batches` (all ranks draw the same batches)."""

    def __init__(self, batches: BatchSampler, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self):
        for indices in self.batches:
            k = len(indices) // self.world
            yield indices[self.rank * k:(self.rank + 1) * k]

    def __len__(self) -> int:
        return len(self.batches)


def _broadcast_from_rank0(params: list[torch.nn.Parameter]) -> None:
    with torch.no_grad():
        for p in params:
            torch.distributed.broadcast(p.data, src=0)


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """All ranks' gradients averaged, in one all-reduce of one flat buffer (DDP's semantics, one bucket)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n


def _mean_across_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    value = value.detach().clone()
    torch.distributed.all_reduce(value)
    return value / world


def _check_finite(mean_loss: float, epoch: int, step: int, cfg: TrainConfig, bar: tqdm) -> None:
    if not math.isfinite(mean_loss):
        bar.close()
        raise DivergedError(epoch, step, mean_loss, cfg.lr, cfg.grad_clip)


def _validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.epochs >= 0, f"epochs must be >= 0, got {cfg.epochs}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.grad_accum >= 1, f"grad_accum must be >= 1, got {cfg.grad_accum}"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (cfg.loss_every >= 0, f"loss_every must be >= 0 (0: off), got {cfg.loss_every}"),
        (0.0 <= cfg.p_uncond <= 1.0, f"p_uncond must be in [0, 1], got {cfg.p_uncond}"),
        (cfg.min_snr_gamma is None or cfg.min_snr_gamma > 0, f"min_snr_gamma must be > 0, got {cfg.min_snr_gamma}"),
        (cfg.max_steps_per_epoch is None or cfg.max_steps_per_epoch >= 1,
         f"max_steps_per_epoch must be >= 1, got {cfg.max_steps_per_epoch}"),
        (cfg.threads is None or cfg.threads >= 1, f"threads must be >= 1 (None: the process's setting), got {cfg.threads}"),
        (cfg.mixed_precision in MIXED_PRECISIONS,
         f"mixed_precision must be auto, bf16 or no, got {cfg.mixed_precision!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    return torch.bfloat16 if use_bf16(mode, device) else None


def use_bf16(mode: str, device: torch.device | str, cpu_auto: bool | None = None) -> bool:
    """Whether a run with `mixed_precision=mode` autocasts to bf16 on `device` (see TrainConfig). `cpu_auto`: what
    "auto" means on a CPU with native bf16 (default: this engine's CPU_AUTO_BF16; other trainers pass their own)."""
    device = torch.device(device)
    if mode == "bf16":
        return True
    if mode != "auto":
        return False
    if device.type == "cuda":
        return True
    cpu_auto = CPU_AUTO_BF16 if cpu_auto is None else cpu_auto
    return device.type == "cpu" and cpu_auto and cpu_supports_bf16()


def use_channels_last(setting: bool | None, device: torch.device | str, cpu_auto: bool | None = None) -> bool:
    """Whether a run with `channels_last=setting` converts the module to channels_last on `device`."""
    if setting is not None:
        return setting
    kind = torch.device(device).type
    cpu_auto = CPU_AUTO_CHANNELS_LAST if cpu_auto is None else cpu_auto
    return kind == "cuda" or (kind == "cpu" and cpu_auto)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _steps_per_epoch(n: int, cfg: TrainConfig) -> int:
    steps = (n // cfg.batch_size) // cfg.grad_accum
    if steps == 0:
        raise ConfigError(
            f"the training set has {n} items, fewer than batch_size x grad_accum = {cfg.batch_size * cfg.grad_accum}; "
            "lower the batch size or use more data"
        )
    return min(steps, cfg.max_steps_per_epoch or steps)


def _val_batches(dataset: Dataset | None, cfg: TrainConfig) -> list[dict[str, Any]]:
    if dataset is None or cfg.val_samples <= 0:
        return []
    n = min(cfg.val_samples, len(dataset))
    loader = DataLoader(Subset(dataset, range(n)), batch_size=cfg.val_batch_size, shuffle=False)
    return list(loader)


def _resume_source(checkpoint_dir: str | Path | None, resume: bool | str | Path) -> Path | None:
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


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_gauss": (int(np_state["has_gauss"]), float(np_state["gauss"])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": state["numpy_key"].cpu().numpy().astype(np.uint32), "pos": state["numpy_pos"]},
        "has_gauss": state["numpy_gauss"][0],
        "gauss": state["numpy_gauss"][1],
    })
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def _save(
    root: str | Path, epoch: int, family: DiffusionFamily, named: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer, lr_sched: Any, ema: EMAModel | None, step: int, sample_index: int,
    cfg: TrainConfig,
) -> Path:
    tensors = {"trainable": dict(named)}
    if ema is not None:
        tensors["ema"] = dict(zip(named, ema.shadow_params))
    state = {
        "epoch": epoch + 1,
        "step": step,
        "sample_index": sample_index,
        "family": family.name,
        "parameter_names": list(named),
        "lr_scheduler": lr_sched.state_dict(),
        "ema_optimization_step": ema.optimization_step if ema is not None else 0,
        "rng": _rng_state(),
        "train_config": {k: v for k, v in asdict(cfg).items() if isinstance(v, int | float | str | bool | None)},
    }
    return save_checkpoint(root, epoch, tensors, {"optimizer": optimizer.state_dict(), "state": state})


def _restore(
    path: Path, family: DiffusionFamily, named: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
    lr_sched: Any, ema: EMAModel | None, device: torch.device,
) -> tuple[int, int, int]:
    ckpt = load_checkpoint(path, device="cpu")
    state = ckpt["state"]
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
        if ema is not None and "ema" in ckpt:
            for shadow, name in zip(ema.shadow_params, named):
                shadow.copy_(ckpt["ema"][name])
            ema.optimization_step = state["ema_optimization_step"]
    optimizer.load_state_dict(ckpt["optimizer"])
    lr_sched.load_state_dict(state["lr_scheduler"])
    _set_rng_state(state["rng"])
    return int(state["epoch"]), int(state["step"]), int(state["sample_index"])
