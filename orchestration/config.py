"""The sweep's configuration: one frozen dataclass, three named presets, command-line overrides.

`study` -- the study's protocol, for a GPU cluster (section numbers are the study's text; its published values are
in orchestration/report/study_numbers.py)
    64x64 images, channels {[128,256,512,512], [256,512,768,768]} (DDPM) or LoRA rank {2,4,8},
    5 epochs per trial over the whole training split, batch 32, initial lr 1e-4, p_uncond 0.1 (§3.5, §4).
    * This project's choices where the study states none (the report's protocol section names them too):
      AdamW with weight decay 0 (the study names no optimizer), an EMA of the weights (decay 0.9999) that
      sampling uses, gradient clipping at norm 1, a constant lr (`lr_schedule`; the study's "tasa de
      aprendizaje inicial" implies a schedule it does not name; cosine with warm-up is the alternative),
      guidance 3 for the per-epoch and final samples (`guidance_scale`), CFG scales 1,2,3,4,5,7 swept
      (`cfg_scales`; the study plots scales without listing them), and the DDPM sampler's variance
      (`ddpm_variance`, fixed_large) used for SD's samples too.
    * Selection (§4.1, §4.2): the study retrained, for each family, the configuration with the best
      *attribute-estimator accuracy* of its grid -- DDPM "GA: No, T: 10^3, Min-SNR: No, [256,512,768,768]"
      (Table 4.1's estimator row; its FID row is T = 1e4) and SD+LoRA "GA: No, T: 10^3, Min-SNR: 5, r: 4"
      (Table 4.3's estimator row) -- so `select_metric` is plain `est_acc`. Any metric stays selectable.
    * Noise schedule (§2.1, §3.5): diffusers' DDPMScheduler with its default linear betas 1e-4..0.02 for
      *every* T, so T = 10,000 is a longer chain (betas = linspace(1e-4, 0.02, 10000)), not a finer one:
      §3.5 asks whether a larger T brings q(x_T) closer to an isotropic Gaussian, which rescaling the
      betas by 1000/T would remove. `beta_rescale` (off) is the explicit, logged alternative.
    * Sampling (§2.1): DDPM ancestral sampling over the whole chain ("requiere necesariamente realizar T
      pasos"), sigma_t^2 = beta_t (`ddpm_variance` "fixed_large"; diffusers' default is "fixed_small",
      beta-tilde). `sampling_steps` 0 means "as many steps as the model's T". Cost per grid epoch per
      trial: (eval_samples 100 + the 30-image attribute grid) x T network evaluations (CFG halves share
      one batched forward) = 130,000 NFE at T = 1e3 and 1,300,000 at T = 1e4; the final evaluation is
      100 x T, the CFG sweep 6 x 250 x T. The CPU presets sample with DPM-Solver++ in 20 steps.
    * 100 conditions scored every epoch, 15-epoch final run, 100 final samples, a CFG sweep with 250
      samples per scale, one GPU per trial; MTCNN on, CLIP score with openai/clip-vit-large-patch14
      (unavailable, and saying so, where its weights are not present).
    * Two seeds of the final run (`final_seeds`, this project's choice: the study trained one final model
      per family, so its comparisons have no seed-to-seed spread); the first seed's model is registered.

`smoke` -- a one-minute end-to-end check (2 tiny trials x 1 epoch on a small --data cache); the tests run it.

`cpu-demo` -- the embedded default: the whole job, for real, on a 2-core CPU in minutes, no downloads
    The study's grid is kept (16 DDPM / 24 LoRA trials, the same four axes); everything else shrinks.
    Timings, accuracies and the ablations behind each choice: docs/measurements.md.
    * Resolution 16x16 (`image_size`): a 16 px synthetic face still shows all five attributes, and a U-Net learns more
      per minute there than at 32 px.
    * The channel axis {small, large} maps to two tiny channel sets (`channel_sets`): small (16, 32, 64), large (32,
      64, 64) (models' `cpu-16` preset), one residual block per level, attention at the lowest level only.
    * Short epochs: an epoch is a pass over the first `epoch_images` (2048) training images; grid trials run 2 epochs.
      Gradient accumulation keeps the study's meaning: the same images per epoch, a quarter of the steps.
    * Ranking signal: trials this short still draw near-chance attributes, so the grid is ranked by the engine's
      held-out denoising loss on fixed noise and noise levels (`val_loss`, 256 validation images, EMA weights): the
      unweighted epsilon MSE, which mildly favours Min-SNR-off trials; the weighted `train_loss` is not selectable
      (its weighting differs per trial). Sample metrics are still computed and logged every epoch.
    * lr 2e-3: a tiny model at batch 32 learns ~10x faster than at the study's 1e-4 and stays stable.
    * Final run: `final_epochs` (6) epochs of `final_epoch_images` (16384) images on both cores, one seed
      (`--final-seeds 2` measures the spread): accuracy grows with this length more than with anything else tried.
    * Sampling: DPM-Solver++ with 20 steps (`sampler`, `sampling_steps`) instead of 1000 DDPM steps; 100 final
      samples, 100 per CFG scale.
    * Trials run two at a time with one torch thread each (`max_concurrent`, `threads_per_trial`); the evaluation
      actor reserves no CPU, so it never blocks a trial; the lone final run and the evaluation tasks take both cores.
    * The attribute estimator is evaluation's `small` preset, trained once on the toy data and cached under
      $CONDFACE_HOME; FID needs Inception weights that are not here, so `fd_estimator` stands in and says so; CLIP
      score and MTCNN are off (no CLIP weights offline; MTCNN on 16 px faces is meaningless).

Searches: the grid is the study's protocol. Optuna (TPE) pays off when continuous settings matter (lr, p_uncond,
guidance scale) and the budget allows more trials than the grid has points; ASHA pays off when trials are long and early
epochs predict late ones (the study's 29-minute epochs), not for 2-epoch CPU trials (it would judge on noise).

Every field below is logged as an MLflow param of the sweep's parent run: there are no hidden defaults.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from data.catalogue import FAMILIES, MIXED_PRECISIONS, SELECTABLE, redact_uri
from data.cli import field_problems, items, number, one_of, setting
from orchestration.errors import SweepError

AUGMENTS = ("none", "study", "study-no-color")
SAMPLERS = ("ddpm", "ddim", "dpm++")
DDPM_VARIANCES = ("fixed_small", "fixed_large")
FULL_CHAIN = 0  # sampling_steps 0: as many steps as the model's T (the study's DDPM sampling)
SEARCHES = ("grid", "optuna")
SCHEDULERS = ("fifo", "asha")
CHECKPOINT_POLICIES = ("none", "best", "all")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class SweepFamily:
    """How the sweep builds a family's trials (one entry per family in SWEEP_FAMILIES)."""

    grid_axis: str  # the grid's fourth axis: "channels" (SweepConfig.channel_sets) or "lora_rank" (lora_ranks)
    preset_field: str  # the SweepConfig field naming the family's preset (models.families)
    pretrained_field: str | None = None  # the SweepConfig field with a base to load instead of the preset's


# The DDPM's axes are the study's; the pixel text DDPM has the same ones (GA, T, Min-SNR, the two channel sets), so
# the two differ only in their conditioning. --pretrained names a Stable Diffusion base: sd-lora adapts it, the
# pixel text DDPM takes its frozen CLIP text encoder; --if-pretrained names the DeepFloyd IF stage I base if-lora adapts.
SWEEP_FAMILIES: dict[str, SweepFamily] = {
    "ddpm": SweepFamily("channels", "ddpm_preset"),
    "sd-lora": SweepFamily("lora_rank", "lora_preset", "pretrained"),
    "pixel-text": SweepFamily("channels", "pixel_text_preset", "pretrained"),
    "if-lora": SweepFamily("lora_rank", "if_lora_preset", "if_pretrained"),
}


def _models(text: str) -> str:
    """--model: one family, several joined by ",", or all."""
    return ",".join(FAMILIES) if text == "all" else ",".join(items(one_of(FAMILIES), ", ".join(FAMILIES))(text))


def _steps(text: str) -> int:
    """A sampling step count, or T / full: the model's whole chain."""
    if text.strip().lower() in ("t", "full"):
        return FULL_CHAIN
    return number(int, minimum=1)(text)


@dataclass(frozen=True)
class SweepConfig:
    """Everything one sweep does. Build with `resolve(preset, **overrides)`. A field with a help text is a flag of
    `python -m orchestration.sweep` (orchestration.sweep derives the parser from these fields)."""

    preset: str
    model: str = setting("ddpm", "model family: ddpm (attribute DDPM), sd-lora (SD Nano + LoRA), pixel-text (a text-"
                                 "conditioned DDPM from scratch), if-lora (DeepFloyd IF stage I + LoRA), several "
                                 "comma-separated (ddpm,sd-lora: the study), or all of them in one sweep (default ddpm)",
                         parse=_models)
    data: str = setting("toy", "'toy' (the embedded synthetic faces, default) or an image-cache directory from "
                               "data.prepare")
    image_size: int = setting(64, minimum=1)
    augment: str = setting("study", "training augmentation policy (study: study; cpu-demo: none)", choices=AUGMENTS)
    augment_axis: tuple[str, ...] = setting((), "make augmentation a grid axis over these policies, e.g. "
                                                "none,study,study-no-color (§5)", choices=AUGMENTS)
    seed: int = setting(0, "seed of training, conditions and sampling", minimum=0)

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
    pixel_text_preset: str = "study"  # models.pixel_text preset (text encoder source; its channels: the axis)
    pretrained: str | None = setting(None, "sd-lora: a local Stable Diffusion Nano 2.1 folder (or hub id) to adapt "
                                           "instead of the preset's base; pixel-text takes its text encoder")
    if_lora_preset: str = "study"  # models.if_lora preset (base model, resolution)
    if_pretrained: str | None = setting(None, "if-lora: a local DeepFloyd IF stage I folder (or hub id) to adapt "
                                              "instead of the preset's base")
    beta_rescale: bool = setting(False, "scale the linear betas by 1000/T (a finer chain); default off: the study's "
                                        "longer chain for T = 10,000")
    tune_vae: bool = setting(False, "sd-lora: before its grid, fine-tune the base's VAE on the training images at the "
                                    "data's resolution (§5's future work); the LoRA then trains on its latents")
    vae_preset: str = "study"  # models.vae_tune preset of --tune-vae (steps, lr, loss: this project's choices)
    vae: str | None = None  # a family's tuned VAE folder: set by the vae phase (orchestration.phases.vae), not by hand

    # --- search ----------------------------------------------------------------------------------
    search: str = setting("grid", "grid = every combination of the study's axes; optuna = TPE over them + lr, "
                                  "p_uncond, guidance", choices=SEARCHES)
    num_samples: int = setting(16, "number of Optuna trials (the grid always runs each combination once)", minimum=1)
    scheduler: str = setting("fifo", "fifo = run every trial to the end; asha = stop weak trials early",
                             choices=SCHEDULERS)
    asha_grace_epochs: int = 1
    lr_range: tuple[float, float] = (3e-5, 3e-4)  # Optuna: log-uniform
    p_uncond_range: tuple[float, float] = (0.05, 0.2)  # Optuna: uniform
    guidance_range: tuple[float, float] = (1.0, 7.0)  # Optuna: uniform, the per-epoch sampling scale

    # --- training --------------------------------------------------------------------------------
    epochs: int = setting(5, "epochs per grid trial (study: 5)", minimum=1)
    final_epochs: int = setting(15, "epochs of the final run of the best configuration (study: 15; 0 = skip final "
                                    "run and CFG sweep)", minimum=0)
    # 1, the dataclass default, is also what a sweep recorded before this setting existed resumes with
    final_seeds: int = setting(1, "train the final configuration with this many seeds (--seed, --seed + 1, ...), "
                                  "each a run of its own, for the seed-to-seed spread; the first seed's model is "
                                  "registered; each further seed costs one more final run and its evaluation "
                                  "(study preset: 2)", minimum=1)
    epoch_images: int | None = setting(None, "a grid epoch is a pass over the first N training images (study: all)",
                                       minimum=1)
    final_epoch_images: int | None = setting(None, "the same for the final run's epochs (study: all)", minimum=1)
    batch_size: int = setting(32, "micro-batch size (study: 32)", minimum=1)
    lr: float = setting(1e-4, "learning rate of every grid trial (Optuna samples lr from the preset's lr_range "
                              "instead)", above=0)
    final_lr: float | None = None  # None: the selected trial's lr
    lr_schedule: str = setting("constant", "learning-rate schedule: constant (study preset: the study gives only "
                                           "'an initial lr of 1e-4', §3.5) or cosine after a linear warm-up (diffusers' "
                                           "training examples)", choices=LR_SCHEDULES)
    lr_warmup_steps: int | None = setting(None, "cosine's warm-up in optimizer steps (default: 500, at most a tenth "
                                                "of each run)", minimum=0)
    p_uncond: float = 0.1
    # this project's choices where the study states none (the report's protocol section lists them): AdamW with
    # weight decay 0 (models.engine.TrainConfig), EMA of the weights, gradient clipping at norm 1
    ema_decay: float = 0.9999
    grad_clip: float = 1.0
    val_samples: int = setting(256, minimum=0)  # held-out denoising loss on this many fixed validation items

    # --- evaluation ------------------------------------------------------------------------------
    estimator_preset: str = "study"
    eval_samples: int = setting(100, "fixed, seeded conditions generated and scored every epoch", minimum=1)
    final_samples: int = setting(100, "samples of the final comparison (study: 100)", minimum=1)
    cfg_samples: int = setting(250, "samples per guidance scale in the CFG sweep (study: 250)", minimum=1)
    cfg_scales: tuple[float, ...] = setting((1.0, 2.0, 3.0, 4.0, 5.0, 7.0), "guidance scales of the CFG sweep, "
                                            "comma-separated (default 1,2,3,4,5,7)", minimum=0)
    guidance_scale: float = setting(3.0, "classifier-free guidance scale for per-epoch samples and the final run "
                                         "(Optuna samples it from guidance_range instead)", minimum=0)
    sampler: str = setting("ddpm", "sampler of every generated set (study: ddpm; CPU presets: dpm++)",
                           choices=SAMPLERS)
    sampling_steps: int = setting(FULL_CHAIN, "sampling steps, or T for the model's whole chain (study: T, as §2.1)",
                                  minimum=0, parse=_steps)
    ddpm_variance: str = setting("fixed_large", "DDPM sampler variance: fixed_large = beta_t (study, §2.1) or "
                                                "fixed_small = beta-tilde (diffusers' default)", choices=DDPM_VARIANCES)
    # every sampling of the sweep (trial epochs, references, final evaluation, CFG and sampler phases)
    sampling_precision: str = setting("auto", "sampling precision: auto = bf16 autocast on GPUs and on CPUs with "
                                              "native bf16 (models.runtime.CPU_AUTO says why); bf16; no = fp32",
                                      choices=MIXED_PRECISIONS)
    select_metric: str = setting("est_acc", "metric that picks the best trial (study: est_acc; fid, or fd_estimator "
                                            "when Inception is missing)", choices=SELECTABLE)
    mtcnn: bool = setting(True, "score face detection with MTCNN (study: on; cpu-demo: off, its 16 px faces are too "
                                "small)")
    inception_weights: str | None = setting(None, "torch-fidelity Inception weights file for real FID (else "
                                                  "fd_estimator stands in; None: look in torch's cache)")
    clip_model: str | None = setting("openai/clip-vit-large-patch14", "CLIP model id or local folder for the CLIP "
                                                                      "score (cpu-demo: none)")
    eval_actors: int = setting(1, "number of evaluation actors sharing the scoring (default 1)", minimum=1)
    gpus_per_eval_actor: float = setting(0.0, "GPU fraction of each evaluation actor (default 0: score on CPU; leave "
                                              "room for the trials' GPUs)", minimum=0)

    # --- the study's future work (§5) ---------------------------------------------------------------
    sampler_phase: bool = setting(False, "after the final run, sample its model with every sampler x step count "
                                         "(§5's future work)")
    sampler_phase_samplers: tuple[str, ...] = setting(SAMPLERS, "samplers of the sampler phase (default "
                                                                "ddpm,ddim,dpm++)", choices=SAMPLERS)
    sampler_phase_steps: tuple[int, ...] = setting((10, 20, 50, 100, 250, FULL_CHAIN), "step counts of the sampler "
                                                   "phase, T = the whole chain (study: 10,20,50,100,250,T)",
                                                   minimum=0, parse=items(_steps, "step counts like 10,20,50,T"))
    sampler_phase_samples: int | None = setting(None, "samples per sampler setting (default: --final-samples)",
                                                minimum=1)
    superres: str | None = setting(None, "DeepFloyd IF stage II (DeepFloyd/IF-II-M-v1.0 in the local Hugging Face "
                                         "cache, or a folder) to upscale 8 final samples to 256 px, the study's "
                                         "Figure 4.10 (default: none)")

    # --- resources -------------------------------------------------------------------------------
    address: str | None = setting(None, "attach to a running Ray cluster (host:port, ray://host:port or auto); "
                                        "default: start a local one")
    local_cpus: int | None = setting(None, "CPUs the local Ray runtime may use (default: every CPU of this machine; "
                                           "a cluster's are its nodes')", minimum=1)
    gpus_per_trial: float | None = setting(None, "GPUs each trial requests (default 1 when the cluster has GPUs, "
                                                 "else 0)", minimum=0)
    cpus_per_trial: float | None = None  # None: 1 on CPUs, the node's CPUs per GPU on GPUs (orchestration.resources)
    threads_per_trial: int = setting(0, minimum=0)  # torch threads in a CPU trial (0: torch's default)
    # the engine's speed options (models.engine.TrainConfig; logged as train.* params of every trial)
    mixed_precision: str = setting("auto", "training precision: auto = bf16 autocast on GPUs with native bf16 "
                                           "(compute capability 8.0+), fp32 on CPUs (models.runtime.CPU_AUTO says "
                                           "why); bf16; no = fp32",
                                   choices=MIXED_PRECISIONS)
    compile: bool = setting(False, "torch.compile each trial's network (pays on GPUs; a minute of warm-up per trial "
                                   "on a 2-core CPU)")
    max_concurrent: int | None = setting(None, "at most this many trials at once (default: as resources allow)",
                                         minimum=1)
    max_failures: int = setting(2, "retries of a crashed trial, each from its last checkpoint", minimum=0)
    final_workers: int = setting(1, "train the final run data-parallel on this many Ray Train workers (DDP: gloo on "
                                    "CPUs, nccl with one GPU each; the global batch is kept)", minimum=1)

    # --- tracking & storage ----------------------------------------------------------------------
    tracking_uri: str | None = setting(None, "MLflow tracking URI (default: sqlite:///./mlruns.db, an embedded "
                                             "store here); a server's credentials: MLFLOW_TRACKING_USERNAME/_PASSWORD "
                                             "or a mode-600 file named by CONDFACE_MLFLOW_CREDENTIALS, not the URI")
    experiment: str | None = setting(None, "MLflow experiment and Ray run name (default condface-<model>-<preset>)")
    storage_path: str = setting("ray_results", "where Ray Tune keeps trial results and checkpoints: a directory or "
                                               "file:// URI (a shared filesystem on clusters)")
    checkpoint_artifacts: str = setting("best", "which trial checkpoints MLflow keeps: none, each trial's best "
                                                "epoch, or all", choices=CHECKPOINT_POLICIES)
    # MLflow gets each trial's EMA weights only (study-large 1.1 GB, study-small 0.45 GB: the 16-trial grid ~12.7 GB);
    # the full state stays in Ray storage
    artifact_limit_mb: float = setting(16384.0, "stop logging checkpoints to MLflow past this many MB", minimum=0)
    registered_model: str | None = None  # None: condface-<model>

    # --- run control (flags of their own: see orchestration.sweep) ----------------------------------
    resume: bool = False
    dry_run: bool = False

    # ---------------------------------------------------------------------------------------------
    @property
    def channels(self) -> dict[str, tuple[int, ...]]:
        return dict(self.channel_sets)

    @property
    def families(self) -> tuple[str, ...]:
        """The model families this sweep runs, in order ("ddpm,sd-lora" -> both: the whole study)."""
        return tuple(m.strip() for m in self.model.split(",") if m.strip())

    @property
    def family_preset(self) -> str:
        """The preset of this (one-family) sweep's family (models.families)."""
        return getattr(self, SWEEP_FAMILIES[self.model].preset_field)

    @property
    def family_pretrained(self) -> str | None:
        """The base this (one-family) sweep's family loads instead of its preset's (None: the preset's)."""
        name = SWEEP_FAMILIES[self.model].pretrained_field
        return getattr(self, name) if name else None

    @property
    def joint(self) -> bool:
        return len(self.families) > 1

    def for_family(self, family: str) -> SweepConfig:
        """This sweep's settings for one of its families (same experiment and storage; its own registered model)."""
        registered = f"{self.registered_model}-{family}" if self.registered_model and self.joint else \
            self.registered_model
        return dataclasses.replace(self, model=family, experiment=self.experiment_name, registered_model=registered)

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"condface-{'+'.join(self.families)}-{self.preset}"

    @property
    def registered_model_name(self) -> str:
        return self.registered_model or f"condface-{self.model}"

    @property
    def storage_dir(self) -> Path:
        """--storage-path as the local directory it names (SweepError when it names none)."""
        return storage_dir(self.storage_path)

    @property
    def sampler_samples(self) -> int:
        return self.sampler_phase_samples or self.final_samples

    def unavailable_metrics(self) -> dict[str, str]:
        """Metrics this configuration switches off, with why (so --select-metric can refuse them up front)."""
        out = {}
        if not self.mtcnn:
            out["mtcnn"] = "MTCNN is off in this configuration (pass --mtcnn)"
        if self.clip_model is None:
            out["clip_score"] = "no CLIP model is configured (pass --clip-model ID_OR_FOLDER)"
        return out

    @property
    def run_name(self) -> str:
        """The Ray Tune experiment directory name (under storage_path); --resume finds it by this name."""
        return f"{self.experiment_name}-{self.search}"

    def params(self) -> dict[str, str]:
        """Flat name -> string of every field, as MLflow params (a password in a URI shown as ***)."""
        return {f.name: redact_uri(_fmt(getattr(self, f.name))) for f in dataclasses.fields(self)}

    def validate(self) -> SweepConfig:
        """Raise SweepError (one line, with the fix) for values that cannot work; return self."""
        families = self.families
        if not families or any(f not in FAMILIES for f in families) or len(set(families)) != len(families):
            raise SweepError(f"unknown model {self.model!r}: use one of {', '.join(FAMILIES)}, a comma-separated list "
                             "of them (ddpm,sd-lora) or all")
        problems = field_problems(self)  # each field's choices and bounds, as declared above
        if problems:
            raise SweepError(problems[0])
        off = self.unavailable_metrics()
        if self.select_metric in off:
            raise SweepError(f"--select-metric {self.select_metric} cannot rank trials: {off[self.select_metric]}, "
                             f"or select by another metric ({', '.join(m for m in SELECTABLE if m not in off)})")
        if not self.sampler_phase_steps or not self.sampler_phase_samplers:
            raise SweepError("the sampler phase needs at least one sampler and one step count")
        if not 0 <= self.p_uncond < 1:
            raise SweepError(f"--p-uncond must be in [0, 1), got {self.p_uncond}")
        if not self.cfg_scales:
            raise SweepError("--cfg-scales must be one or more non-negative numbers, e.g. 1,2,3,4,5,7")
        storage_dir(self.storage_path)  # raises on a path that names no local directory
        if self.tune_vae and "sd-lora" not in families:
            raise SweepError("--tune-vae tunes the VAE of the sd-lora family: add it (--model sd-lora or all)")
        if self.local_cpus is not None and self.address:
            raise SweepError(f"--local-cpus {self.local_cpus} sizes a local Ray runtime, --address {self.address} attaches "
                             "to a cluster: drop one (a cluster node's CPUs are set by `ray start --num-cpus`)")
        if self.batch_size % self.final_workers:
            raise SweepError(f"--batch-size {self.batch_size} does not divide among --final-workers "
                             f"{self.final_workers}: the global batch is split evenly, pass a multiple")
        return self


def storage_dir(path: str) -> Path:
    """A storage path as a local directory: a path (~ expanded) or a file:// URI of this machine (file:///x is /x).
    Remote URIs are refused: the driver reads trial PNGs, checkpoints and the final pipeline back as local files,
    so on s3:// they would be silently missing."""
    parsed = urllib.parse.urlparse(path)
    if not path.strip():
        raise SweepError("--storage-path is empty: pass a directory (a shared filesystem on clusters)")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SweepError(f"--storage-path {path}: a file:// URI on another host ({parsed.netloc}) is not a "
                             "directory here; mount it and pass the mount point, e.g. file:///mnt/results")
        if not parsed.path:
            raise SweepError(f"--storage-path {path} names no directory: pass e.g. file:///mnt/results")
        return Path(urllib.request.url2pathname(parsed.path))
    if "://" in path:
        raise SweepError(f"--storage-path {path}: remote storage is not supported (the driver reads trial results "
                         "back as local files); mount it on every node (NFS, s3fs, gcsfuse) and pass the mount point")
    return Path(path).expanduser()


def _fmt(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_fmt(v) for v in value) if not value or not isinstance(value[0], tuple) else \
            ";".join(f"{v[0]}={_fmt(v[1])}" for v in value)
    return "none" if value is None else str(value)


STUDY = SweepConfig(preset="study", final_seeds=2)

CPU_DEMO = dataclasses.replace(
    STUDY,
    preset="cpu-demo",
    image_size=16,
    augment="none",
    channel_sets=(("small", (16, 32, 64)), ("large", (32, 64, 64))),
    ddpm_preset="cpu-16",
    lora_preset="cpu-16",
    pixel_text_preset="cpu-16",
    if_lora_preset="cpu-16",
    vae_preset="cpu",
    epochs=2,
    final_epochs=6,
    final_seeds=1,
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
    ddpm_variance="fixed_small",
    sampler_phase_steps=(10, 20, 50, 100),
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
    pixel_text_preset="test",
    if_lora_preset="test",
    vae_preset="test",
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
    sampler_phase_samplers=("ddim", "dpm++"),
    sampler_phase_steps=(2, 4),
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
    if changes.get("model") == "all":
        changes["model"] = ",".join(FAMILIES)
    return dataclasses.replace(base, **changes).validate()


__all__ = ["SweepConfig", "PRESETS", "DEFAULT_PRESET", "FULL_CHAIN", "resolve", "storage_dir"]
