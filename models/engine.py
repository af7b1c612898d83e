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
GPUs) with W processes, the module is wrapped in torch's DistributedDataParallel and a DistributedSampler gives
each rank an interleaved share of every global micro-batch of `batch_size` items (`batch_size` must divide by W),
so the GLOBAL batch is the one a single process uses. Each sample keeps the noise, timestep and condition drop it
gets in one process (drawn from its index in the epoch); gradient accumulation runs under `no_sync` until the last
micro-step. The reported losses are the means over all ranks. Only rank 0 writes checkpoints (the others wait for
it); every rank calls `on_epoch`. `epoch_time_budget_s` is refused with W > 1 (ranks would stop apart).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.optimization import TYPE_TO_SCHEDULER_FUNCTION, get_scheduler
from diffusers.training_utils import EMAModel
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from models.checkpoint import Progress, TrainingState, restore_training, resume_source, save_training, seed_everything
from models.errors import ConfigError, DivergedError
from models.family import DiffusionFamily
from models.objective import heldout_loss, training_loss
from models.runtime import MIXED_PRECISIONS, autocast_dtype, resolve_device, use_channels_last

DIVERGENCE_CHECK_EVERY = 10  # on an accelerator: optimizer steps between checks of the loss for NaN/inf
LR_SCHEDULERS = tuple(str(k.value) for k in TYPE_TO_SCHEDULER_FUNCTION)
DEFAULT_WARMUP_STEPS = 500  # diffusers' training examples' --lr_warmup_steps


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
    # any name diffusers.optimization.get_scheduler knows; the study names none ("una tasa de aprendizaje inicial
    # de 10^-4"): constant is this project's reading, cosine with warm-up what diffusers' training examples use
    lr_scheduler: str = "constant"
    lr_warmup_steps: int | None = None  # None: DEFAULT_WARMUP_STEPS, at most a tenth of the run (ignored by constant)
    grad_clip: float | None = 1.0
    min_snr_gamma: float | None = None  # the study's grid: None (off) or 5.0
    p_uncond: float = 0.1  # classifier-free guidance: probability of training with the empty condition
    ema: bool = True
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay = min(ema_decay, 1 - (1 + step)^-ema_power): short runs stay near the weights
    ema_power: float = 2 / 3
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    # "auto": models.runtime's policy for training (bf16 autocast on GPUs with native bf16, fp32 on CPUs); "bf16":
    # always (emulated, slowly, where not native); "no": fp32
    mixed_precision: str = "auto"
    channels_last: bool | None = None  # None: auto (models.runtime's policy); True/False: on any device
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
    run = _set_up(family, config, len(train_dataset), checkpoint_dir, resume)
    val_batches = _val_batches(val_dataset, config)
    history: list[dict[str, float]] = []
    step_losses: list[tuple[int, float]] = []
    stopped = False
    epoch = run.done.epoch - 1
    for epoch in range(run.done.epoch, config.epochs):
        stats = _train_epoch(run, train_dataset, epoch)
        report = _end_of_epoch(run, stats, epoch, val_batches, checkpoint_dir)
        history.append({"epoch": float(epoch), **report.metrics()})
        step_losses.extend(report.step_losses)
        if on_epoch is not None and on_epoch(report):
            stopped = True
            break
    if run.train.ema is not None:
        run.train.ema.copy_to(run.params)
    family.module.eval()
    return FitResult(epochs_completed=epoch + 1, step=run.done.step, stopped_early=stopped, history=history,
                     ema_applied=run.train.ema is not None, step_losses=step_losses)


# --- set-up ----------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What `fit` sets up once and every step uses."""

    cfg: TrainConfig
    device: torch.device
    amp: torch.dtype | None  # the autocast dtype (None: fp32)
    train: TrainingState
    params: list[torch.nn.Parameter]
    done: Progress  # advanced by every optimizer step and epoch
    steps_per_epoch: int
    rank: int
    world: int
    ddp: DistributedDataParallel | None  # the module's data-parallel wrapper when world > 1

    @property
    def family(self) -> DiffusionFamily:
        return self.train.family


def _set_up(family: DiffusionFamily, cfg: TrainConfig, n_train: int, checkpoint_dir: str | Path | None,
            resume: bool | str | Path) -> _Run:
    """Device and precision, the optimizer, LR schedule and EMA, the resumed state, and the data-parallel wrapper."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    family.to(device)
    module = family.module
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if use_channels_last(cfg.channels_last, device, "train"):
        module.to(memory_format=torch.channels_last)
    named = family.trainable_parameters()
    params = list(named.values())
    if not params:
        raise ConfigError(f"family {family.name!r} has no trainable parameters")
    steps_per_epoch = _steps_per_epoch(n_train, cfg)
    rank, world = distributed()
    _check_data_parallel(cfg, world)
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None
    )
    total = cfg.epochs * steps_per_epoch
    lr_sched = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup_steps(cfg, total),
                             num_training_steps=total)
    ema = (EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=cfg.ema_warmup, power=cfg.ema_power,
                    foreach=device.type == "cuda") if cfg.ema else None)
    train = TrainingState(family, named, optimizer, lr_sched, ema)
    done = Progress()
    source = resume_source(checkpoint_dir, resume)
    if source is not None:
        done = restore_training(source, train)
        if cfg.verbose:
            print(f"resumed from {source} (epoch {done.epoch}, step {done.step})", flush=True)
    if cfg.compile and getattr(module, "_compiled_call_impl", None) is None:  # not twice (fit called again)
        module.compile()
    # DDP broadcasts rank 0's weights now and averages the gradients in backward; buffers are not trained
    ddp = (DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                   forward_sync_buffers=False) if world > 1 else None)
    return _Run(cfg, device, autocast_dtype(cfg.mixed_precision, device, "train"), train, params, done,
                steps_per_epoch, rank, world, ddp)


def _check_data_parallel(cfg: TrainConfig, world: int) -> None:
    if world == 1:
        return
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} does not divide among {world} data-parallel workers: "
                          f"use a multiple of {world} (the global batch stays batch_size x grad_accum)")
    if cfg.epoch_time_budget_s is not None:
        raise ConfigError("epoch_time_budget_s cannot be used with data-parallel workers (they would stop at "
                          "different steps): cap epochs with max_steps_per_epoch instead")


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """The learning-rate warm-up of a run of `total_steps` optimizer steps: `lr_warmup_steps` when given, else
    diffusers' examples' 500 steps, shortened to a tenth of the run (a 300-step CPU run warms up for 30)."""
    if cfg.lr_warmup_steps is not None:
        return cfg.lr_warmup_steps
    return min(DEFAULT_WARMUP_STEPS, total_steps // 10)


def distributed() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group this process trains in; (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# --- one epoch -------------------------------------------------------------------------------------
@dataclass
class _EpochStats:
    """One epoch's training: its optimizer steps, summed loss and loss windows (on the device), and wall time."""

    steps: int = 0
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    windows: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (last step, window mean)
    seconds: float = 0.0


def _loader(run: _Run, dataset: Dataset, epoch: int) -> DataLoader:
    """This rank's share of the epoch's shuffled global batches: rank r takes items r, r + W, ... of each batch of
    `batch_size`, so W ranks see together what one process sees (DistributedSampler's interleaved split)."""
    cfg = run.cfg
    sampler = DistributedSampler(dataset, num_replicas=run.world, rank=run.rank, shuffle=True,
                                 seed=cfg.seed * 100_003, drop_last=True)
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # the workers' base seed
    return DataLoader(dataset, batch_size=cfg.batch_size // run.world, sampler=sampler, drop_last=True,
                      num_workers=cfg.num_workers, generator=generator, pin_memory=run.device.type == "cuda")


def _train_epoch(run: _Run, dataset: Dataset, epoch: int) -> _EpochStats:
    cfg, device = run.cfg, run.device
    run.family.module.train()
    if hasattr(dataset, "set_epoch"):  # e.g. to reseed augmentation per epoch (exact resume)
        dataset.set_epoch(epoch)
    batches = iter(_loader(run, dataset, epoch))
    stats = _EpochStats(loss_sum=torch.zeros((), device=device))
    window_sum, window_steps = torch.zeros((), device=device), 0
    check_every = 1 if device.type == "cpu" else DIVERGENCE_CHECK_EVERY
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
               leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    with _forward_through(run):
        for _ in range(run.steps_per_epoch):
            loss = _optimizer_step(run, batches)
            stats.loss_sum += loss
            window_sum, window_steps, stats.steps = window_sum + loss, window_steps + 1, stats.steps + 1
            bar.update(1)
            if cfg.loss_every and run.done.step % cfg.loss_every == 0:
                stats.windows.append((run.done.step, window_sum / window_steps))
                window_sum, window_steps = torch.zeros((), device=device), 0
            _show_progress(run, stats, epoch, bar, check_every)
            if cfg.epoch_time_budget_s is not None and time.perf_counter() - start > cfg.epoch_time_budget_s:
                break
    del batches
    bar.close()
    if cfg.loss_every and window_steps:
        stats.windows.append((run.done.step, window_sum / window_steps))
    if device.type == "cuda":
        torch.cuda.synchronize()
    stats.seconds = time.perf_counter() - start
    return stats


@contextlib.contextmanager
def _forward_through(run: _Run) -> Iterator[None]:
    """The family calls its network as `family.module`; data parallel, that is the DDP wrapper while training."""
    if run.ddp is None:
        yield
        return
    module, run.family.module = run.family.module, run.ddp
    try:
        yield
    finally:
        run.family.module = module


def _optimizer_step(run: _Run, batches: Iterator[dict[str, Any]]) -> torch.Tensor:
    """grad_accum micro-batches, then one clipped AdamW step (and EMA); the step's mean loss, on the device."""
    cfg, train = run.cfg, run.train
    total = torch.zeros((), device=run.device)
    for micro in range(cfg.grad_accum):
        last = micro == cfg.grad_accum - 1
        with run.ddp.no_sync() if run.ddp is not None and not last else contextlib.nullcontext():
            loss = training_loss(run.family, next(batches), cfg.seed, run.done.sample_index + run.rank, cfg.p_uncond,
                                 cfg.min_snr_gamma, run.amp, stride=run.world)
            (loss / cfg.grad_accum).backward()
        total += loss.detach() / cfg.grad_accum
        run.done.sample_index += cfg.batch_size
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
    train.optimizer.step()
    train.lr_sched.step()
    train.optimizer.zero_grad(set_to_none=True)
    if train.ema is not None:
        train.ema.step(run.params)
    run.done.step += 1
    return total


def _show_progress(run: _Run, stats: _EpochStats, epoch: int, bar: tqdm, check_every: int) -> None:
    """The bar's loss, the --log-every line, and the divergence check, where they fall due (reading the loss)."""
    cfg, step = run.cfg, run.done.step
    show = stats.steps % 10 == 0 or stats.steps == run.steps_per_epoch
    log = bool(cfg.log_every) and step % cfg.log_every == 0
    if not (show or log or stats.steps % check_every == 0):
        return
    running = stats.loss_sum.item() / stats.steps
    if run.world == 1:  # data parallel: checked at the end of the epoch, on every rank at once
        _check_finite(running, epoch, step, cfg, bar)
    if show:
        bar.set_postfix(loss=f"{running:.4f}")
    if log:
        print(f"  step {step}  loss {running:.4f}", flush=True)


# --- end of epoch ----------------------------------------------------------------------------------
def _end_of_epoch(run: _Run, stats: _EpochStats, epoch: int, val_batches: list[dict[str, Any]],
                  checkpoint_dir: str | Path | None) -> EpochReport:
    """The epoch's losses (means over every rank), the divergence check, validation, the checkpoint, the report."""
    cfg = run.cfg
    loss_sum, window_means = stats.loss_sum, [v for _, v in stats.windows]
    if run.world > 1:
        loss_sum = _mean_across_ranks(loss_sum, run.world)
        if window_means:
            window_means = list(_mean_across_ranks(torch.stack(window_means), run.world))
    train_loss = loss_sum.item() / stats.steps
    _check_finite(train_loss, epoch, run.done.step, cfg)
    step_losses = (list(zip([s for s, _ in stats.windows], torch.stack(window_means).tolist()))
                   if window_means else [])
    val_loss = None
    if val_batches:
        with ema_weights(run.family, run.train.ema):
            val_loss = heldout_loss(run.family, val_batches, run.amp)
    run.done.epoch = epoch + 1
    checkpoint = None
    if checkpoint_dir is not None and run.rank == 0:
        checkpoint = save_training(checkpoint_dir, run.train, run.done, asdict(cfg))
    if checkpoint_dir is not None and run.world > 1:
        torch.distributed.barrier()  # rank 0's checkpoint is on disk before any rank reports (or resumes from) it
    report = EpochReport(
        epoch=epoch, epochs=cfg.epochs, step=run.done.step, train_loss=train_loss, val_loss=val_loss,
        epoch_seconds=stats.seconds,
        images_per_second=stats.steps * cfg.grad_accum * cfg.batch_size / stats.seconds,
        lr=run.train.lr_sched.get_last_lr()[0], checkpoint=checkpoint, family=run.family, step_losses=step_losses,
        _ema=run.train.ema,
    )
    if cfg.verbose:
        val_text = f"  val {val_loss:.4f}" if val_loss is not None else ""
        print(f"epoch {epoch + 1}/{cfg.epochs}  step {run.done.step}  loss {train_loss:.4f}{val_text}  "
              f"{stats.seconds:.1f}s  {report.images_per_second:.0f} img/s  lr {report.lr:.2e}", flush=True)
    return report


# --- helpers ---------------------------------------------------------------------------------------
def _mean_across_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    value = value.detach().clone()
    torch.distributed.all_reduce(value)
    return value / world


def _check_finite(mean_loss: float, epoch: int, step: int, cfg: TrainConfig, bar: tqdm | None = None) -> None:
    if not math.isfinite(mean_loss):
        if bar is not None:
            bar.close()
        raise DivergedError(epoch, step, mean_loss, cfg.lr, cfg.grad_clip)


def _validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.epochs >= 0, f"epochs must be >= 0, got {cfg.epochs}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.grad_accum >= 1, f"grad_accum must be >= 1, got {cfg.grad_accum}"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (cfg.lr_scheduler in LR_SCHEDULERS,
         f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {cfg.lr_scheduler!r}"),
        (cfg.lr_warmup_steps is None or cfg.lr_warmup_steps >= 0,
         f"lr_warmup_steps must be >= 0 (None: {DEFAULT_WARMUP_STEPS}, at most a tenth of the run), got "
         f"{cfg.lr_warmup_steps}"),
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
