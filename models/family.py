"""The family adapter: everything the one training engine needs to know about a model family.

A family (the attribute DDPM, SD + LoRA, ...) is a small object that owns its network, its
training noise scheduler and the way a data batch becomes (clean sample, conditioning). The
engine (`models.engine.fit`) draws the noise, timesteps and classifier-free-guidance drop
mask itself, so it never needs to know what the conditioning is (a 30-vector, a caption's
text embedding, ...).

Contract, as the engine uses it:

    x0, cond = family.training_inputs(batch, uncond, generator)   # uncond: bool (B,), True -> drop c
    noisy = family.noise_scheduler.add_noise(x0, noise, t)
    pred = family.predict(noisy, t, cond)                         # eps or v, per scheduler config
    family.trainable_parameters()                                 # name -> Parameter that trains
    family.module                                                 # network: train()/eval(), channels_last, compile
    family.pipeline()                                             # a DiffusionPipeline sharing family.module
    family.save_pretrained(dir)
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, SchedulerMixin

from models.errors import ConfigError


class DiffusionFamily(abc.ABC):
    """Base class of every model family the engine trains.

    Subclasses set `name`, `noise_scheduler` (a diffusers training scheduler, usually
    `DDPMScheduler`, whose `config.prediction_type` is "epsilon" or "v_prediction") and
    `module` (the `nn.Module` that `predict` runs and whose parameters, or a subset, train),
    and `beta_rescale` when their training betas were rescaled for T (logged by `describe`).
    """

    name: str
    noise_scheduler: SchedulerMixin
    module: torch.nn.Module
    beta_rescale: bool = False  # whether the training betas were rescaled by T_ref/T (models.schedulers)

    # --- what the engine calls -------------------------------------------------------------
    @abc.abstractmethod
    def training_inputs(
        self, batch: dict[str, Any], uncond: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Turn a collated data batch into (x0, cond) on `self.device`.

        x0: the clean sample the noise is added to (pixels in [-1, 1] or VAE latents).
        cond: keyword conditioning passed back to `predict`; rows where `uncond` (bool, shape (B,),
        on CPU) is True must carry the family's "no condition" (zeros / empty caption) -- this is
        the classifier-free-guidance drop, decided by the engine.
        generator: a CPU generator for any extra randomness the family needs (e.g. VAE sampling).
        """

    @abc.abstractmethod
    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """The network's output for noisy samples (epsilon or v, as `noise_scheduler.config.prediction_type`)."""

    @abc.abstractmethod
    def pipeline(self) -> DiffusionPipeline:
        """A sampling pipeline that shares this family's (current) weights; its scheduler is the default sampler."""

    @abc.abstractmethod
    def save_pretrained(self, directory: str | Path) -> None:
        """Write what is needed to sample later (a full pipeline, or adapter weights for a known base)."""

    # --- shared defaults ----------------------------------------------------------------------
    @staticmethod
    def check_image_size(images: torch.Tensor, size: int, what: str) -> None:
        """One-line ConfigError when a batch's images are not `size` px square (`what`: the model they are for)."""
        if tuple(images.shape[-2:]) != (size, size):
            raise ConfigError(f"the data has {tuple(images.shape[-2:])} images but {what} is set up for {size}px; "
                              f"use data of that size (e.g. --data toy at {size}px)")

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Name -> parameter for everything that trains (checkpointed, EMA-tracked, optimised)."""
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: str | torch.device) -> DiffusionFamily:
        """Move every network the family uses to `device` (subclasses with more networks extend this)."""
        self.module.to(device)
        return self

    def parameter_counts(self) -> dict[str, int]:
        """{"total": ..., "trainable": ...} parameter counts of everything the family runs."""
        total = sum(p.numel() for p in self.module.parameters())
        trainable = sum(p.numel() for p in self.trainable_parameters().values())
        return {"total": total, "trainable": trainable}

    def describe(self) -> dict[str, Any]:
        """Flat, loggable description (family name, parameter counts, training noise schedule)."""
        sched = self.noise_scheduler.config
        return {
            "family": self.name,
            **{f"params_{k}": v for k, v in self.parameter_counts().items()},
            "num_train_timesteps": sched.num_train_timesteps,
            "prediction_type": sched.prediction_type,
            "beta_schedule": sched.beta_schedule,
            "beta_start": sched.beta_start,  # the betas actually used (after any rescaling)
            "beta_end": sched.beta_end,
            "beta_rescale": self.beta_rescale,
        }
