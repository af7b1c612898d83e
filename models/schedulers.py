"""Noise schedules and samplers, all diffusers schedulers.

Training schedule (`training_scheduler`): `DDPMScheduler` with the study's linear betas
1e-4..0.02 or the cosine schedule ("squaredcos_cap_v2", Nichol & Dhariwal). For T other than
1000 the linear betas are rescaled by 1000/T (T = 10,000 -> 1e-5..0.002): the sum of the betas,
and so alpha_bar at the same *fraction* of the chain, stays what it is at T = 1000, so a larger T
means a finer discretisation of the same noise process rather than a different, much noisier
one. The cosine schedule is already defined on t/T and needs no rescaling.

Samplers (`make_scheduler`): DDPM (the study), DDIM and DPM-Solver++, built with `from_config`
from the training scheduler's config and set up for the space they sample in. In pixel space the
predicted clean image is clipped to [-1, 1] at every step (DDPM/DDIM `clip_sample`, DPM-Solver++
`thresholding` with `sample_max_value=1.0`, which clips at exactly 1). Without it, DPM-Solver++'s
defaults turned a small model's samples into saturated noise. In latent space nothing is clipped.
"""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, SchedulerMixin

from models.errors import ConfigError

SAMPLERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
}
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
REFERENCE_T = 1000


def training_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    prediction_type: str = "epsilon",
) -> DDPMScheduler:
    """The training `DDPMScheduler`; `beta_start`/`beta_end` are given for T = 1000 and rescaled for other T."""
    if beta_schedule not in BETA_SCHEDULES:
        raise ConfigError(f"unknown beta schedule {beta_schedule!r}; choose one of {sorted(BETA_SCHEDULES)}")
    if num_train_timesteps < 2:
        raise ConfigError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    scale = REFERENCE_T / num_train_timesteps
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=BETA_SCHEDULES[beta_schedule],
        beta_start=beta_start * scale,
        beta_end=beta_end * scale,
        prediction_type=prediction_type,
        clip_sample=True,
        clip_sample_range=1.0,
        variance_type="fixed_small",
        timestep_spacing="trailing",
    )


def make_scheduler(name: str, base_config: Any, space: str = "pixel") -> SchedulerMixin:
    """A sampler `name` ("ddpm", "ddim", "dpm++") with the betas/T/prediction type of `base_config`
    (a scheduler or its config), configured for `space` ("pixel" in [-1, 1] or "latent")."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    if space not in ("pixel", "latent"):
        raise ConfigError(f"space must be 'pixel' or 'latent', got {space!r}")
    config = getattr(base_config, "config", base_config)
    pixel = space == "pixel"
    if name == "ddpm":
        overrides = dict(clip_sample=pixel, clip_sample_range=1.0, thresholding=False, variance_type="fixed_small",
                         timestep_spacing="trailing")
    elif name == "ddim":
        overrides = dict(clip_sample=pixel, clip_sample_range=1.0, thresholding=False, set_alpha_to_one=True,
                         timestep_spacing="trailing")
    else:
        overrides = dict(algorithm_type="dpmsolver++", solver_order=2, thresholding=pixel, sample_max_value=1.0,
                         lower_order_final=True, final_sigmas_type="zero")
    return SAMPLERS[name].from_config(config, **overrides)
