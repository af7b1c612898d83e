"""The denoising objective: per-sample random draws, the (Min-SNR weighted) loss, the held-out loss.

Each training sample's timestep, classifier-free-guidance drop and noise come from its own
generator, seeded by (run seed, the sample's position in the run's sample stream). The random
stream is then the same whatever the batch size or gradient accumulation, so 4 x 8 accumulated
equals one batch of 32 exactly (up to float summation order), and a resumed run draws what an
uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from models.family import DiffusionFamily

HELDOUT_SEED = 1_000_003  # fixed for every run: the held-out loss is comparable across trials


def sample_generators(seed: int, first_index: int, n: int, stride: int = 1) -> list[torch.Generator]:
    """One CPU generator per sample, keyed by (seed, position in the sample stream): the samples are at positions
    first_index, first_index + stride, ... (a data-parallel rank's share of a batch is every stride-th item)."""
    base = (seed % 2**23) << 40
    return [torch.Generator().manual_seed(base + first_index + i * stride) for i in range(n)]


def draw_noise(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Per-sample noise. On CPU from the samples' generators; on an accelerator from device generators with
    the same keys (drawing 128 x 3 x 64 x 64 normals on the CPU would take ~10 ms a step and starve a GPU)."""
    if device.type == "cpu":
        return torch.stack([torch.randn(shape, generator=g) for g in generators])
    return torch.stack([
        torch.randn(shape, generator=torch.Generator(device).manual_seed(g.initial_seed()), device=device)
        for g in generators
    ])


def min_snr_weights(scheduler: Any, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, g)/SNR for epsilon, min(SNR, g)/(SNR+1) for v.

    The epsilon weight is computed as min(g/SNR, 1): at the end of a long chain (T = 10,000 with the study's
    unscaled betas) alpha_bar, and so the SNR, is 0 in float32, and min(0, g)/0 would be NaN; its limit is 1.
    """
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return torch.clamp(gamma / snr, max=1.0)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"Min-SNR weighting needs prediction_type epsilon or v_prediction, got {prediction_type!r}")


def regression_target(scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}; use epsilon or v_prediction")


def _per_sample_mse(
    family: DiffusionFamily, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: dict[str, Any],
    autocast_dtype: torch.dtype | None,
) -> torch.Tensor:
    sched = family.noise_scheduler
    noisy = sched.add_noise(x0, noise, t)
    target = regression_target(sched, x0, noise, t, family.prediction_type)
    amp = (
        torch.autocast(x0.device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    )
    with amp:
        pred = family.predict(noisy, t, cond)
    return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)


def training_loss(
    family: DiffusionFamily,
    batch: dict[str, Any],
    seed: int,
    first_index: int,
    p_uncond: float,
    min_snr_gamma: float | None,
    autocast_dtype: torch.dtype | None = None,
    stride: int = 1,
) -> torch.Tensor:
    """Mean (optionally Min-SNR weighted) loss of one micro-batch whose samples are at positions first_index,
    first_index + stride, ... of the run's sample stream."""
    n = len(batch["levels"]) if "levels" in batch else len(batch["image"])
    gens = sample_generators(seed, first_index, n, stride)
    num_t = family.noise_scheduler.config.num_train_timesteps
    t = torch.cat([torch.randint(0, num_t, (1,), generator=g) for g in gens])
    uncond = torch.cat([torch.rand(1, generator=g) < p_uncond for g in gens])
    x0, cond = family.training_inputs(batch, uncond, torch.Generator().manual_seed(seed + first_index))
    noise = draw_noise(gens, tuple(x0.shape[1:]), x0.device).to(x0.dtype)
    t = t.to(x0.device)
    loss = _per_sample_mse(family, x0, noise, t, cond, autocast_dtype)
    if min_snr_gamma is not None:
        loss = loss * min_snr_weights(family.noise_scheduler, t, min_snr_gamma, family.prediction_type)
    return loss.mean()


@torch.no_grad()
def heldout_loss(
    family: DiffusionFamily, batches: list[dict[str, Any]], autocast_dtype: torch.dtype | None = None
) -> float:
    """Unweighted denoising loss on fixed items, fixed noise and fixed *noise levels* (conditional).

    The noise levels are those of the family's schedule at T = 1000, drawn uniformly over that chain; a
    model with another T is asked at its timesteps of the same alpha_bar. So the loss measures denoising
    at the same noise levels whatever T is: with the study's unscaled betas a T = 10,000 chain is pure
    noise after its first ~30% (alpha_bar < 1e-4), where predicting epsilon is trivial, and a loss over
    uniform fractions of T would reward exactly that. Cheap and deterministic, so it ranks short trials
    (whose samples are still near chance) across T, Min-SNR on/off and accumulation settings.
    """
    t_of_level = _matched_timesteps(family.noise_scheduler, bool(family.describe().get("beta_rescale", False)))
    total, count = 0.0, 0
    for batch in batches:
        n = len(batch["levels"]) if "levels" in batch else len(batch["image"])
        gens = sample_generators(HELDOUT_SEED, count, n)
        frac = torch.cat([torch.rand(1, generator=g) for g in gens])
        t = t_of_level[(frac * len(t_of_level)).long().clamp(max=len(t_of_level) - 1)]
        x0, cond = family.training_inputs(batch, torch.zeros(n, dtype=torch.bool), torch.Generator().manual_seed(0))
        noise = draw_noise(gens, tuple(x0.shape[1:]), x0.device).to(x0.dtype)
        total += float(_per_sample_mse(family, x0, noise, t.to(x0.device), cond, autocast_dtype).sum())
        count += n
    return total / max(count, 1)


REFERENCE_T = 1000


def _matched_timesteps(scheduler: Any, rescaled: bool) -> torch.Tensor:
    """For each timestep of the schedule at T = 1000, the timestep of `scheduler` with the nearest alpha_bar."""
    from diffusers import DDPMScheduler

    config = dict(scheduler.config)
    num_t = config["num_train_timesteps"]
    if num_t == REFERENCE_T:
        return torch.arange(REFERENCE_T)
    scale = num_t / REFERENCE_T if rescaled else 1.0  # undo a 1000/T beta rescaling for the reference chain
    ref = DDPMScheduler.from_config({**config, "num_train_timesteps": REFERENCE_T,
                                     "beta_start": config.get("beta_start", 1e-4) * scale,
                                     "beta_end": config.get("beta_end", 0.02) * scale})
    # log alpha_bar in float64: the study's T = 10,000 chain reaches alpha_bar ~ 1e-44
    own = torch.cumsum(torch.log1p(-scheduler.betas.double()), 0)
    target = torch.cumsum(torch.log1p(-ref.betas.double()), 0)
    # own is decreasing; searchsorted needs increasing
    idx = torch.searchsorted(-own, -target).clamp(max=num_t - 1)
    prev = (idx - 1).clamp(min=0)
    closer_prev = (own[prev] - target).abs() < (own[idx] - target).abs()
    return torch.where(closer_prev, prev, idx)
