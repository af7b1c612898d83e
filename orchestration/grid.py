"""The study's search space: every grid trial (16 DDPM / 24 LoRA / 16 pixel text DDPM), or the Optuna (TPE) space over the same axes.

A trial is a `TrialSpec`; at the Ray Tune boundary it travels as a flat dict (Tune's param_space) and
comes back with `TrialSpec.from_params`. Min-SNR "off" is 0.0 in the space (Optuna and Tune both
handle plain numbers), None in the spec.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from ray import tune

from orchestration.config import SWEEP_FAMILIES, SweepConfig


@dataclass(frozen=True)
class TrialSpec:
    """One point of the search space: the study's axes plus the continuous ones Optuna may vary."""

    grad_accum: int
    timesteps: int
    min_snr_gamma: float | None
    channels: str | None = None  # DDPM, pixel text DDPM: a name from SweepConfig.channel_sets
    lora_rank: int | None = None  # SD + LoRA
    augment: str | None = None  # the augmentation axis (None: the sweep's --augment)
    lr: float | None = None  # None: the sweep's lr
    p_uncond: float | None = None
    guidance_scale: float | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrialSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in params.items() if k in names}
        gamma = values.get("min_snr_gamma")
        values["min_snr_gamma"] = float(gamma) if gamma else None
        for k in ("grad_accum", "timesteps", "lora_rank"):
            if values.get(k) is not None:
                values[k] = int(values[k])
        return cls(**values)

    def resolved(self, cfg: SweepConfig) -> TrialSpec:
        """Fill the continuous values the search left open from the sweep's config."""
        return dataclasses.replace(
            self,
            augment=self.augment if self.augment is not None else cfg.augment,
            lr=self.lr if self.lr is not None else cfg.lr,
            p_uncond=self.p_uncond if self.p_uncond is not None else cfg.p_uncond,
            guidance_scale=self.guidance_scale if self.guidance_scale is not None else cfg.guidance_scale,
        )

    def params(self) -> dict[str, Any]:
        """Flat dict for Tune's param_space (0.0 = Min-SNR off); unset fields are left out."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        out["min_snr_gamma"] = self.min_snr_gamma or 0.0
        return out

    @property
    def label(self) -> str:
        """Short readable name, e.g. `ga1-T1000-snroff-small` / `ga4-T10000-snr5-r4`."""
        snr = "off" if self.min_snr_gamma is None else f"{self.min_snr_gamma:g}"
        last = self.channels if self.channels is not None else f"r{self.lora_rank}"
        return f"ga{self.grad_accum}-T{self.timesteps}-snr{snr}-{last}"


def trial_label(spec: TrialSpec, cfg: SweepConfig) -> str:
    """The spec's label (+ its augmentation when that is an axis); an Optuna trial also names its continuous
    values (lr, p_uncond, guidance)."""
    label = spec.label + (f"-aug:{spec.augment}" if cfg.augment_axis and spec.augment else "")
    if cfg.search != "optuna" or spec.lr is None:
        return label
    return f"{label}-lr{spec.lr:.2g}-p{spec.p_uncond:.2f}-g{spec.guidance_scale:.1f}"


def _last_axis(cfg: SweepConfig) -> tuple[str, list]:
    """The family's fourth grid axis (config.SWEEP_FAMILIES) and its values."""
    if SWEEP_FAMILIES[cfg.model].grid_axis == "channels":
        return "channels", [name for name, _ in cfg.channel_sets]
    return "lora_rank", list(cfg.lora_ranks)


def grid_trials(cfg: SweepConfig) -> list[TrialSpec]:
    """Every combination of the study's grid: GA x T x Min-SNR x (channels | LoRA rank)."""
    key, values = _last_axis(cfg)
    augments = list(cfg.augment_axis) or [None]
    out = []
    for ga, t, gamma, last, aug in itertools.product(cfg.grad_accum_axis, cfg.timesteps_axis, cfg.min_snr_axis,
                                                     values, augments):
        out.append(TrialSpec(grad_accum=ga, timesteps=t, min_snr_gamma=gamma or None, augment=aug, **{key: last}))
    return out


def param_space(cfg: SweepConfig) -> dict[str, Any]:
    """Tune's param_space: grid_search over the study's axes, or Optuna-ready distributions."""
    key, values = _last_axis(cfg)
    axes = {
        "grad_accum": list(cfg.grad_accum_axis),
        "timesteps": list(cfg.timesteps_axis),
        "min_snr_gamma": list(cfg.min_snr_axis),
        key: values,
    }
    if cfg.augment_axis:
        axes["augment"] = list(cfg.augment_axis)
    if cfg.search == "grid":
        return {k: tune.grid_search(v) for k, v in axes.items()}
    space: dict[str, Any] = {k: tune.choice(v) for k, v in axes.items()}
    space["lr"] = tune.loguniform(*cfg.lr_range)
    space["p_uncond"] = tune.uniform(*cfg.p_uncond_range)
    space["guidance_scale"] = tune.uniform(*cfg.guidance_range)
    return space


def num_trials(cfg: SweepConfig) -> int:
    """Trials of one family's search phase (for a joint sweep: sum over cfg.for_family)."""
    if cfg.joint:
        return sum(num_trials(cfg.for_family(f)) for f in cfg.families)
    return len(grid_trials(cfg)) if cfg.search == "grid" else cfg.num_samples


def schedule_description(cfg: SweepConfig) -> str:
    """The betas each family of `cfg` trains with: the study's linear ones for the families trained from scratch,
    the base's own for the LoRA families (models.sd_family / models.if_family training schedulers)."""
    scratch = ("linear betas rescaled by 1000/T (beta_rescale on: a finer chain, not the study's)" if cfg.beta_rescale
               else "linear betas 1e-4..0.02 for every T, unscaled (the study's DDPMScheduler defaults)")
    own = {
        "sd-lora": "the base's scaled-linear betas (SD's 0.00085..0.012), "
                   + ("rescaled by 1000/T" if cfg.beta_rescale else "unscaled for every T"),
        "if-lora": "the base's cosine schedule (IF's squaredcos_cap_v2, defined on t/T: a finer chain for a larger T)",
    }
    by_text: dict[str, list[str]] = {}
    for family in cfg.families:
        by_text.setdefault(own.get(family, scratch), []).append(family)
    if len(by_text) == 1:
        return next(iter(by_text))
    return "; ".join(f"{', '.join(families)}: {text}" for text, families in by_text.items())


def protocol_lines(cfg: SweepConfig) -> list[str]:
    """How trials are ranked, the noise schedule and the sampler: the protocol choices a reader checks first."""
    from data.catalogue import better
    from orchestration.config import FULL_CHAIN

    ts = sorted(set(cfg.timesteps_axis))
    betas = schedule_description(cfg) + "; T = " + ", ".join(f"{t:,}" for t in ts)
    steps = "T steps (the full chain)" if cfg.sampling_steps == FULL_CHAIN else f"{cfg.sampling_steps} steps"
    variance = f", sigma^2 = {'beta_t' if cfg.ddpm_variance == 'fixed_large' else 'beta-tilde'}" \
        if cfg.sampler == "ddpm" else ""
    per_epoch = cfg.eval_samples + 30  # the scored set + the attribute grid (5 attributes x 6 levels)
    nfe = ", ".join(f"{per_epoch * (t if cfg.sampling_steps == FULL_CHAIN else cfg.sampling_steps):,} at T={t:g}"
                    for t in ts)
    lines = [
        f"selection: {cfg.select_metric} ({better(cfg.select_metric)}) picks each family's configuration "
        f"for the {cfg.final_epochs}-epoch final run"
        + (f", trained with {cfg.final_seeds} seeds ({cfg.seed}..{cfg.seed + cfg.final_seeds - 1}; the first "
           "registered)" if cfg.final_seeds > 1 else ""),
        f"noise schedule: {betas}",
        f"sampling: {cfg.sampler}, {steps}{variance}, guidance {cfg.guidance_scale:g}, precision "
        f"{cfg.sampling_precision}{' (bf16 where the device has it natively)' if cfg.sampling_precision == 'auto' else ''}"
        f"; per trial epoch {per_epoch} images = {nfe} network evaluations",
        f"training: mixed precision {cfg.mixed_precision}"
        f"{' (bf16 on GPUs with native bf16, fp32 on CPUs)' if cfg.mixed_precision == 'auto' else ''}, "
        f"torch.compile {'on' if cfg.compile else 'off'}",
        f"optimizer: AdamW, lr {cfg.lr:g} {cfg.lr_schedule}"
        + ("" if cfg.lr_schedule == "constant" else
           f" after {cfg.lr_warmup_steps if cfg.lr_warmup_steps is not None else 'min(500, a tenth of the run)'} "
           "warm-up steps") + f", EMA {cfg.ema_decay:g}, gradient clipping {cfg.grad_clip:g} (this project's choices "
        "where the study states none)",
    ]
    if cfg.sampler_phase:
        lines.append(f"sampler phase: {', '.join(cfg.sampler_phase_samplers)} x steps "
                     f"{', '.join('T' if s == FULL_CHAIN else str(s) for s in cfg.sampler_phase_steps)}, "
                     f"{cfg.sampler_samples} samples each")
    if cfg.tune_vae:
        from models.vae_tune import vae_tune_config

        tune = vae_tune_config(cfg.vae_preset)
        lines.append(f"vae phase (sd-lora, before its grid): the base's VAE tuned at {cfg.image_size}px for {tune.steps} "
                     f"steps of {tune.batch_size} training images ({tune.loss} + {tune.kl_weight:g} KL"
                     f"{'' if tune.perceptual_weight == 0 else ' + LPIPS where its weights are here'}"
                     f"{', decoder only' if tune.decoder_only else ''}); every LoRA trains on its latents")
    return lines


def trial_table(cfg: SweepConfig) -> str:
    """Every trial the sweep will run (each family's, for a joint sweep) and its protocol lines."""
    if cfg.joint:
        tables = [_family_table(cfg.for_family(f)) for f in cfg.families]
        head = f"one sweep of {len(cfg.families)} families: {num_trials(cfg)} trials ({' + '.join(cfg.families)})"
        return "\n\n".join([head, *tables, "\n".join(protocol_lines(cfg))])
    return _family_table(cfg) + "\n" + "\n".join(protocol_lines(cfg))


def _family_table(cfg: SweepConfig) -> str:
    """The trials one family will run, one line each (grid), or the Optuna space and its trial count."""
    key, _ = _last_axis(cfg)
    last_title = "channels" if key == "channels" else "lora rank"
    lines = []
    if cfg.search == "grid":
        trials = grid_trials(cfg)
        lines.append(f"{cfg.model} grid, preset {cfg.preset}: {len(trials)} trials x {cfg.epochs} epochs "
                     f"(lr {cfg.lr:g}, p_uncond {cfg.p_uncond:g}, batch {cfg.batch_size}, {cfg.image_size}px)")
        header = f"{'#':>3}  {'grad accum':>10}  {'T':>6}  {'min-SNR':>7}  {last_title:<28}"
        header += f"  {'augment':<15}" if cfg.augment_axis else ""
        lines += [header, "-" * len(header)]
        channels = cfg.channels
        for i, s in enumerate(trials, 1):
            snr = "off" if s.min_snr_gamma is None else f"{s.min_snr_gamma:g}"
            last = f"{s.channels} {list(channels[s.channels])}" if key == "channels" else str(s.lora_rank)
            aug = f"  {s.augment:<15}" if cfg.augment_axis else ""
            lines.append(f"{i:>3}  {s.grad_accum:>10}  {s.timesteps:>6}  {snr:>7}  {last:<28}{aug}")
    else:
        lines.append(f"{cfg.model} Optuna (TPE) search, preset {cfg.preset}: {cfg.num_samples} trials x "
                     f"{cfg.epochs} epochs, scheduler {cfg.scheduler}, ranked by {cfg.select_metric}")
        _, values = _last_axis(cfg)
        lines.append(f"  grad_accum      choice {list(cfg.grad_accum_axis)}")
        lines.append(f"  timesteps       choice {list(cfg.timesteps_axis)}")
        lines.append(f"  min_snr_gamma   choice {list(cfg.min_snr_axis)} (0 = off)")
        lines.append(f"  {key:<15} choice {values}")
        if cfg.augment_axis:
            lines.append(f"  augment         choice {list(cfg.augment_axis)}")
        lines.append(f"  lr              log-uniform [{cfg.lr_range[0]:g}, {cfg.lr_range[1]:g}]")
        lines.append(f"  p_uncond        uniform [{cfg.p_uncond_range[0]:g}, {cfg.p_uncond_range[1]:g}]")
        lines.append(f"  guidance_scale  uniform [{cfg.guidance_range[0]:g}, {cfg.guidance_range[1]:g}]")
    base = base_line(cfg)
    if base:
        lines.append(base)
    return "\n".join(lines)


def base_line(cfg: SweepConfig) -> str | None:
    """Which pretrained weights a (one-family) sweep's family builds on, said without loading them (None: none)."""
    from models.families import family_spec
    from orchestration.trainable import model_config

    spec = family_spec(cfg.model)
    if spec.base is None:
        return None
    config = model_config(cfg, grid_trials(cfg)[0])
    stand_in = getattr(config, "pretrained", "") is None and spec.real_base_hint
    return f"{cfg.model} base: {spec.base(config)}" + (f"\n{cfg.model}: {spec.real_base_hint}" if stand_in else "")
