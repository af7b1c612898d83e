"""Noise schedules and samplers, all diffusers schedulers.

Training schedule (`training_scheduler`): `DDPMScheduler` with the study's linear betas 1e-4..0.02
or the cosine schedule ("squaredcos_cap_v2", Nichol & Dhariwal). By default the linear betas are
the same for every T, as diffusers' `DDPMScheduler(num_train_timesteps=T)` gives them and as the
study trained: T = 10,000 means betas = linspace(1e-4, 0.02, 10000), a *longer* chain whose
alpha_bar_T is ~1e-44 instead of ~4e-5 at T = 1000. That is the point of the study's T axis (§3.5:
the larger T, the closer q(x_T) is to an isotropic Gaussian, and the better the samples should fit
the data). `beta_rescale=True` is the explicit alternative: betas scaled by 1000/T (T = 10,000 ->
1e-5..0.002), so the sum of the betas, and alpha_bar at the same *fraction* of the chain, stay what
they are at T = 1000 -- a finer discretisation of the same process, which removes exactly the effect
§3.5 measures. The cosine schedule is defined on t/T already; `beta_rescale` does not change it.

Samplers (`make_scheduler`): DDPM (the study), DDIM and DPM-Solver++, built with `from_config`
from the training scheduler's config and set up for the space they sample in. In pixel space the
predicted clean image is clipped to [-1, 1] at every step (DDPM/DDIM `clip_sample`, DPM-Solver++
`thresholding` with `sample_max_value=1.0`, which clips at exactly 1). Without it, DPM-Solver++'s
defaults turned a small model's samples into saturated noise. In latent space nothing is clipped.
The DDPM sampler's variance is "fixed_small" (sigma_t^2 = beta-tilde_t, diffusers' default) or
"fixed_large" (sigma_t^2 = beta_t, the formula of the study's §2.1 and of Ho et al.'s sampler).

alpha_bar in float64 (`float64_alpha_bar`): with the unscaled betas at T = 10,000, alpha_bar falls
below float32's smallest normal number (1.2e-38) for the last ~700 timesteps; with denormals flushed
to zero (`models.runtime.configure_torch`, every entry point) it becomes exactly 0 there and a DDPM
step from t = T-1 divides 0 by 0 (NaN images). Every sampler `make_scheduler` builds, and the one
`AttributeDiffusionPipeline` calls, therefore keeps alpha_bar (and DPM-Solver's sigmas) in float64,
where 1e-44 is an ordinary number; the step arithmetic on the images stays float32. DPM-Solver++
also squares sigma = sqrt((1 - alpha_bar) / alpha_bar) in float32 (overflow above sigma ~1.8e19), so
it starts where log(alpha_t / sigma_t) >= -40 (diffusers' `lambda_min_clipped`; alpha_bar >= 1.8e-35):
above that x_t is N(0, I) to 17 digits, so starting there from pure noise is the same thing. Such
a chain's DPM steps are then spaced "linspace" (trailing spacing would drop steps after the clip).
"""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, SchedulerMixin

from models.attribute_pipeline import float64_alpha_bar  # defined with the self-contained pipeline code
from models.errors import ConfigError

SAMPLERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
}
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
# The DDPM sampler's sigma_t^2: "fixed_small" = beta-tilde_t (diffusers' default), "fixed_large" = beta_t (§2.1).
DDPM_VARIANCES = ("fixed_small", "fixed_large")
REFERENCE_T = 1000
# DPM-Solver++ starts below the timesteps where log(alpha_t / sigma_t) < this (alpha_bar < 1.8e-35; only
# reached by long chains such as T = 10,000 with the study's betas): its sigma^2 must fit in float32.
DPM_LAMBDA_MIN = -40.0


def training_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    prediction_type: str = "epsilon",
    beta_rescale: bool = False,
) -> DDPMScheduler:
    """The training `DDPMScheduler`: linear betas beta_start..beta_end over T steps (the study, any T), or,
    with `beta_rescale`, those of T = 1000 scaled by 1000/T (see the module docstring)."""
    if beta_schedule not in BETA_SCHEDULES:
        raise ConfigError(f"unknown beta schedule {beta_schedule!r}; choose one of {sorted(BETA_SCHEDULES)}")
    if num_train_timesteps < 2:
        raise ConfigError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    scale = REFERENCE_T / num_train_timesteps if beta_rescale else 1.0
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


def make_scheduler(
    name: str, base_config: Any, space: str = "pixel", ddpm_variance: str = "fixed_small"
) -> SchedulerMixin:
    """A sampler `name` ("ddpm", "ddim", "dpm++") with the betas/T/prediction type of `base_config`
    (a scheduler or its config), configured for `space` ("pixel" in [-1, 1] or "latent").

    ddpm_variance: the DDPM sampler's sigma_t^2, "fixed_small" (beta-tilde_t) or "fixed_large" (beta_t,
    the study's §2.1); DDIM and DPM-Solver++ are deterministic and ignore it (it is still validated).
    """
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    if space not in ("pixel", "latent"):
        raise ConfigError(f"space must be 'pixel' or 'latent', got {space!r}")
    if ddpm_variance not in DDPM_VARIANCES:
        raise ConfigError(f"unknown DDPM variance {ddpm_variance!r}; choose one of {list(DDPM_VARIANCES)}")
    config = getattr(base_config, "config", base_config)
    pixel = space == "pixel"
    if name == "ddpm":
        overrides = dict(clip_sample=pixel, clip_sample_range=1.0, thresholding=False, variance_type=ddpm_variance,
                         timestep_spacing="trailing")
    elif name == "ddim":
        overrides = dict(clip_sample=pixel, clip_sample_range=1.0, thresholding=False, set_alpha_to_one=True,
                         timestep_spacing="trailing")
    else:
        overrides = dict(algorithm_type="dpmsolver++", solver_order=2, thresholding=pixel, sample_max_value=1.0,
                         lower_order_final=True, final_sigmas_type="zero", lambda_min_clipped=DPM_LAMBDA_MIN)
    scheduler = float64_alpha_bar(SAMPLERS[name].from_config(config, **overrides))
    if name == "dpm++" and float(scheduler.lambda_t.min()) < DPM_LAMBDA_MIN:
        scheduler.register_to_config(timestep_spacing="linspace")  # exactly num_inference_steps after the clip
    return scheduler
