"""The sweep's configuration: one frozen dataclass, three named presets, command-line overrides.

`study` -- the study's settings, for a GPU cluster
    64x64 images, channels {[128,256,512,512], [256,512,768,768]} (DDPM) or LoRA rank {2,4,8},
    5 epochs per trial over the whole training split, batch 32, lr 1e-4, p_uncond 0.1, the
    DDPM sampler with 1000 steps, 100 conditions scored every epoch, the best configuration
    (by paired FID, or its stand-in when Inception weights are missing) retrained for 15 epochs,
    100 final samples, a CFG sweep with 250 samples per scale, one GPU per trial.

`smoke` -- a one-minute end-to-end check (2 tiny trials x 1 epoch on a small --data cache); the tests run it.

`cpu-demo` -- the embedded default: the whole job, for real, on a 2-core CPU in about 15 minutes
    The study's grid is kept (16 DDPM / 24 LoRA trials, the same four axes); everything else shrinks:
    * Resolution 16x16 (`image_size`): a 16 px synthetic face still shows all five attributes, and a
      U-Net runs ~3x faster than at 32 px (prototype: 0.56 balanced estimator accuracy after 3 min at
      16 px, 0.44 after 8 min at 32 px).
    * The channel axis {small, large} maps to two tiny channel sets (`channel_sets`): small
      (16, 32, 64) = 0.72M parameters, large (32, 64, 64) = 1.20M (models' `cpu-16` preset), one
      residual block per level, attention at the lowest level only. Measured with one thread each,
      two trials at once: small ~400-600 img/s, large ~250-350 img/s.
    * Short epochs: an epoch is a pass over the first `epoch_images` (2048) training images; grid
      trials run 2 epochs (~10-40 s of training each; the 16 trials take ~3 min). Gradient
      accumulation keeps the study's meaning: the same images per epoch, a quarter of the steps.
    * Ranking signal: trials this short still draw near-chance attributes (balanced estimator
      accuracy 0.15-0.25 on 32 samples, noise), so sample metrics cannot rank them; the grid is
      ranked by the engine's held-out denoising loss on fixed noise and timesteps (`val_loss`, 256
      validation images, EMA weights, deterministic; comparable across T because T=1e4 rescales the
      betas). It picks the large channels, no accumulation, as the study's grid did. Sample metrics
      are still computed and logged every epoch.
    * lr 2e-3: a tiny model at batch 32 learns ~10x faster than at the study's 1e-4 and stays stable.
    * Final run: `final_epochs` (6) epochs of `final_epoch_images` (16384) images = 98k images on
      both cores (~450 img/s: ~4 min). Measured: class-balanced estimator accuracy 0.51-0.58 on 100
      generated images at guidance 4 (untrained model 0.16, chance 0.17, real images 0.91).
    * Sampling: DPM-Solver++ with 20 steps (`sampler`, `sampling_steps`) instead of 1000 DDPM steps;
      100 final samples, 100 per CFG scale.
    * Trials run two at a time with one torch thread each (`max_concurrent`, `threads_per_trial`);
      the evaluation actor reserves no CPU, so it never blocks a trial; the lone final run and the
      evaluation tasks take both cores.
    * The attribute estimator is evaluation's `small` preset, trained once on the toy data (~3 min
      on an idle machine) and cached under $CONDFACE_HOME; FID needs Inception weights that are not
      here, so `fd_estimator` stands in and says so; CLIP score and MTCNN are off (no CLIP weights
      offline; MTCNN on 16 px faces is meaningless).

Searches: the grid is the study's protocol. Optuna (TPE) pays off when continuous settings matter
(lr, p_uncond, guidance scale) and the budget allows more trials than the grid has points; ASHA
pays off when trials are long and early epochs predict late ones (the study's 29-minute epochs),
not for 2-epoch CPU trials where it would judge on noise.

Every field below is logged as an MLflow param of the sweep's parent run: there are no hidden defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from orchestration.errors import SweepError

MODELS = ("ddpm", "sd-lora")
SEARCHES = ("grid", "optuna")
SCHEDULERS = ("fifo", "asha")
CHECKPOINT_POLICIES = ("none", "best", "all")

# Metric -> the direction that is better. Everything a trial reports that can rank it.
METRIC_MODES = {
    "val_loss": "min",
    "train_loss": "min",
    "fid": "min",
    "fd_estimator": "min",
    "mtcnn": "max",
    "clip_score": "max",
    "est_acc": "max",
    "est_acc_balanced": "max",
}
# "fid" is the study's selection metric; when Inception weights are missing FID is unavailable and its
# stand-in (a Frechet distance on the estimator's features) ranks instead.
FID_STAND_IN = "fd_estimator"


@dataclass(frozen=True)
class SweepConfig:
    """Everything one sweep does. Build with `resolve(preset, **overrides)`."""

    preset: str
    model: str = "ddpm"
    data: str = "toy"  # "toy" (the embedded synthetic faces) or an image-cache directory
    image_size: int = 64
    augment: str = "study"  # data.augment name: "none" | "study" | "study-no-color"
    seed: int = 0

    # --- the study's grid ------------------------------------------------------------------------
    grad_accum_axis: tuple[int, ...] = (1, 4)
    timesteps_axis: tuple[int, ...] = (1000, 10000)
    min_snr_axis: tuple[float, ...] = (0.0, 5.0)  # 0.0 = Min-SNR weighting off
    channel_sets: tuple[tuple[str, tuple[int, ...]], ...] = (
        ("small", (128, 256, 512, 512)),
        ("large", (256, 512, 768, 768)),
    )
    ddpm_preset: str = "study-large"  # models.ddpm preset whose channels the axis replaces
    lora_ranks: tuple[int, ...] = (2, 4, 8)
    lora_preset: str = "study"  # models.sd_lora preset (base model, resolution)
    pretrained: str | None = None  # sd-lora: a local SD Nano 2.1 folder or hub id (None: the preset's base)

    # --- search ----------------------------------------------------------------------------------
    search: str = "grid"
    num_samples: int = 16  # Optuna trials (the grid always runs every combination once)
    scheduler: str = "fifo"
    asha_grace_epochs: int = 1
    lr_range: tuple[float, float] = (3e-5, 3e-4)  # Optuna: log-uniform
    p_uncond_range: tuple[float, float] = (0.05, 0.2)  # Optuna: uniform
    guidance_range: tuple[float, float] = (1.0, 7.0)  # Optuna: uniform, the per-epoch sampling scale

    # --- training --------------------------------------------------------------------------------
    epochs: int = 5
    final_epochs: int = 15  # 0: stop after the grid (no final run, no CFG sweep)
    epoch_images: int | None = None  # grid epoch = first N training images (None: the whole split)
    final_epoch_images: int | None = None
    batch_size: int = 32
    lr: float = 1e-4
    final_lr: float | None = None  # None: the selected trial's lr
    p_uncond: float = 0.1
    ema_decay: float = 0.9999
    grad_clip: float = 1.0
    val_samples: int = 256  # held-out denoising loss on this many fixed validation items

    # --- evaluation ------------------------------------------------------------------------------
    estimator_preset: str = "study"
    eval_samples: int = 100  # fixed, seeded validation conditions generated and scored every epoch
    final_samples: int = 100
    cfg_samples: int = 250
    cfg_scales: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 7.0)
    guidance_scale: float = 3.0
    sampler: str = "ddpm"  # models.schedulers name: "ddpm" | "ddim" | "dpm++"
    sampling_steps: int = 1000
    select_metric: str = "fid"
    mtcnn: bool = True
    inception_weights: str | None = None  # torch-fidelity Inception file for real FID (None: look in torch's cache)
    clip_model: str | None = "openai/clip-vit-large-patch14"  # CLIP score model id or folder (None: unavailable)
    eval_actors: int = 1
    gpus_per_eval_actor: float = 0.0

    # --- resources -------------------------------------------------------------------------------
    address: str | None = None  # None: start a local Ray runtime
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs, else CPU trials
    cpus_per_trial: float = 1.0
    threads_per_trial: int = 0  # torch threads in a CPU trial (0: torch's default)
    max_concurrent: int | None = None  # None: as many as resources allow
    max_failures: int = 2  # a crashed trial is retried this often, from its last checkpoint

    # --- tracking & storage ----------------------------------------------------------------------
    tracking_uri: str | None = None  # None: sqlite:///<cwd>/mlruns.db (embedded store)
    experiment: str | None = None  # None: condface-<model>-<preset>
    storage_path: str = "ray_results"
    checkpoint_artifacts: str = "best"  # "none" | "best" (each trial's best epoch) | "all" (every epoch)
    artifact_limit_mb: float = 2048.0  # checkpoints stop being logged once this many MB were logged
    registered_model: str | None = None  # None: condface-<model>

    # --- run control -----------------------------------------------------------------------------
    resume: bool = False
    dry_run: bool = False
    fail_once_at_epoch: int | None = None  # testing fault tolerance: each trial crashes once there

    # ---------------------------------------------------------------------------------------------
    @property
    def select_mode(self) -> str:
        return METRIC_MODES[self.select_metric]

    @property
    def channels(self) -> dict[str, tuple[int, ...]]:
        return dict(self.channel_sets)

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"condface-{self.model}-{self.preset}"

    @property
    def registered_model_name(self) -> str:
        return self.registered_model or f"condface-{self.model}"

    @property
    def run_name(self) -> str:
        """The Ray Tune experiment directory name (under storage_path); --resume finds it by this name."""
        return f"{self.experiment_name}-{self.search}"

    def params(self) -> dict[str, str]:
        """Flat name -> string of every field, as MLflow params."""
        return {f.name: _fmt(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def validate(self) -> SweepConfig:
        """Raise SweepError (one line, with the fix) for values that cannot work; return self."""
        if self.model not in MODELS:
            raise SweepError(f"unknown model {self.model!r}: use one of {', '.join(MODELS)}")
        if self.search not in SEARCHES:
            raise SweepError(f"unknown search {self.search!r}: use one of {', '.join(SEARCHES)}")
        if self.scheduler not in SCHEDULERS:
            raise SweepError(f"unknown scheduler {self.scheduler!r}: use one of {', '.join(SCHEDULERS)}")
        if self.checkpoint_artifacts not in CHECKPOINT_POLICIES:
            raise SweepError(
                f"unknown checkpoint policy {self.checkpoint_artifacts!r}: use one of {', '.join(CHECKPOINT_POLICIES)}"
            )
        if self.select_metric not in METRIC_MODES:
            raise SweepError(f"unknown --select-metric {self.select_metric!r}: use one of {', '.join(METRIC_MODES)}")
        for name in ("epochs", "batch_size", "num_samples", "eval_samples", "final_samples", "cfg_samples",
                     "sampling_steps", "eval_actors", "image_size"):
            if getattr(self, name) < 1:
                raise SweepError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("final_epochs", "max_failures", "threads_per_trial", "val_samples"):
            if getattr(self, name) < 0:
                raise SweepError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise SweepError(f"--max-concurrent must be at least 1, got {self.max_concurrent}")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise SweepError(f"--gpus-per-trial must be 0 or more, got {self.gpus_per_trial}")
        if not self.lr > 0:
            raise SweepError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.p_uncond < 1:
            raise SweepError(f"--p-uncond must be in [0, 1), got {self.p_uncond}")
        if not self.cfg_scales or min(self.cfg_scales) < 0:
            raise SweepError("--cfg-scales must be one or more non-negative numbers, e.g. 1,2,3,4,5,7")
        if self.artifact_limit_mb < 0:
            raise SweepError(f"--artifact-limit-mb must be 0 or more, got {self.artifact_limit_mb}")
        if self.fail_once_at_epoch is not None and not 0 <= self.fail_once_at_epoch < self.epochs:
            raise SweepError(f"--fail-once-at-epoch must be in 0..{self.epochs - 1}, got {self.fail_once_at_epoch}")
        return self


def _fmt(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_fmt(v) for v in value) if not value or not isinstance(value[0], tuple) else \
            ";".join(f"{v[0]}={_fmt(v[1])}" for v in value)
    return "none" if value is None else str(value)


STUDY = SweepConfig(preset="study")

CPU_DEMO = dataclasses.replace(
    STUDY,
    preset="cpu-demo",
    image_size=16,
    augment="none",
    channel_sets=(("small", (16, 32, 64)), ("large", (32, 64, 64))),
    ddpm_preset="cpu-16",
    lora_preset="cpu-16",
    epochs=2,
    final_epochs=6,
    epoch_images=2048,
    final_epoch_images=16384,
    lr=2e-3,
    lr_range=(5e-4, 4e-3),
    ema_decay=0.999,
    val_samples=256,
    estimator_preset="small",
    eval_samples=32,
    final_samples=100,
    cfg_samples=100,
    guidance_scale=4.0,
    sampler="dpm++",
    sampling_steps=20,
    select_metric="val_loss",
    mtcnn=False,
    clip_model=None,
    threads_per_trial=1,
    max_concurrent=2,
    checkpoint_artifacts="best",
    artifact_limit_mb=256.0,
)

# A minute-long check that an installation works end to end (also what the tests run): two trials of a
# tiny network on the channel axis only, one short epoch, a handful of samples. Pass a small --data cache.
SMOKE = dataclasses.replace(
    CPU_DEMO,
    preset="smoke",
    grad_accum_axis=(1,),
    timesteps_axis=(1000,),
    min_snr_axis=(0.0,),
    channel_sets=(("small", (16, 64)), ("large", (32, 64))),
    lora_ranks=(2, 4),
    lora_preset="test",
    epochs=1,
    final_epochs=1,
    epoch_images=64,
    final_epoch_images=64,
    batch_size=16,
    val_samples=16,
    eval_samples=8,
    final_samples=8,
    cfg_samples=8,
    cfg_scales=(1.0, 3.0),
    sampling_steps=4,
    artifact_limit_mb=64.0,
)

PRESETS: dict[str, SweepConfig] = {"study": STUDY, "cpu-demo": CPU_DEMO, "smoke": SMOKE}
DEFAULT_PRESET = "cpu-demo"


def resolve(preset: str = DEFAULT_PRESET, **overrides) -> SweepConfig:
    """The named preset with `overrides` (None values mean "keep the preset's") applied and validated."""
    if preset not in PRESETS:
        raise SweepError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    base = PRESETS[preset]
    known = {f.name for f in dataclasses.fields(SweepConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise SweepError(f"unknown setting(s) {', '.join(sorted(unknown))}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, **changes).validate()


__all__ = ["SweepConfig", "PRESETS", "DEFAULT_PRESET", "METRIC_MODES", "FID_STAND_IN", "resolve"]
