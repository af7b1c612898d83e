"""`python -m orchestration.sweep`: the study's grid as a Ray Tune sweep, the final run, the CFG sweep, MLflow.

With no flags it runs the embedded default (preset `cpu-demo`, see orchestration.config) for real
on the synthetic faces: estimator, 16-trial DDPM grid, final run, CFG sweep, MLflow record, summary.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

from orchestration.config import (
    AUGMENTS,
    CHECKPOINT_POLICIES,
    DDPM_VARIANCES,
    DEFAULT_PRESET,
    FULL_CHAIN,
    METRIC_MODES,
    MIXED_PRECISIONS,
    MODELS,
    PRESETS,
    SAMPLERS,
    SCHEDULERS,
    SEARCHES,
    SweepConfig,
    resolve,
)
from orchestration.errors import SweepError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
# MLflow's own HTTP retries back off silently for ~4 min per call; the Tracker's retries (orchestration.mlflow_retry)
# take over after 2, say that the server is unreachable, and bound the wait (CONDFACE_MLFLOW_OUTAGE_S)
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
# Tune's default reporter prints a wide table every few seconds; the sweep prints its own per-epoch lines.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
# CheckpointConfig(num_to_keep) makes Tune snapshot its state at every checkpoint: wanted (exact resume), not a warning.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        sys.exit(f"error: {message} (see --help)")


def _number(kind: type, lo: float):
    """argparse type: a `kind` (int or float) of at least `lo`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not value >= lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo:g}, got {text}")
        return value
    return parse


def _int(lo: int):
    return _number(int, lo)


def _float(lo: float):
    return _number(float, lo)


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,2,3,4,5,7, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative numbers like 1,2,3,4,5,7, got {text!r}")
    return values


def _steps(text: str) -> int:
    """A sampling step count, or T / full: the model's whole chain."""
    if text.strip().lower() in ("t", "full"):
        return FULL_CHAIN
    return _int(1)(text)


def _step_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(_steps(x) for x in text.split(",") if x.strip())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected step counts like 10,20,50,T, got {text!r}") from None


def _names(allowed: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [n for n in names if n not in allowed]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(allowed)}, got {text!r}")
        return names
    return parse


def _models(text: str) -> str:
    if text == "all":
        return ",".join(MODELS)
    return ",".join(_names(MODELS)(text))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m orchestration.sweep",
        description="Run the study's hyperparameter grid (or an Optuna search) as a Ray Tune sweep, retrain the "
                    "best configuration, sweep the guidance scale, and record everything in MLflow.",
    )
    a = p.add_argument
    a("--model", type=_models, default="ddpm",
      help="model family: ddpm (attribute DDPM), sd-lora (SD Nano + LoRA), or both -- ddpm,sd-lora or all -- "
           "for the whole study in one sweep (default ddpm)")
    a("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
      help="study = the study's settings for a GPU cluster; cpu-demo = the embedded 2-core CPU default; "
           "smoke = a one-minute check")
    a("--data", help="'toy' (the embedded synthetic faces, default) or an image-cache directory from data.prepare")
    a("--search", choices=SEARCHES, help="grid = every combination of the study's axes; optuna = TPE over them + lr, "
                                         "p_uncond, guidance")
    a("--num-samples", type=_int(1), help="number of Optuna trials (the grid always runs each combination once)")
    a("--scheduler", choices=SCHEDULERS, help="fifo = run every trial to the end; asha = stop weak trials early")
    a("--epochs", type=_int(1), help="epochs per grid trial (study: 5)")
    a("--final-epochs", type=_int(0), help="epochs of the final run of the best configuration (study: 15; 0 = skip "
                                           "final run and CFG sweep)")
    a("--select-metric", choices=sorted(METRIC_MODES),
      help="metric that picks the best trial (study: fid, or fd_estimator when Inception is missing)")
    a("--address", help="attach to a running Ray cluster (host:port, ray://host:port or auto); default: start a "
                        "local one")
    a("--gpus-per-trial", type=_float(0), help="GPUs each trial requests (default 1 when the cluster has GPUs, else 0)")
    a("--gpus-per-eval-actor", type=_float(0), help="GPU fraction of each evaluation actor (default 0: score on "
                                                    "CPU; leave room for the trials' GPUs)")
    a("--eval-actors", type=_int(1), help="number of evaluation actors sharing the scoring (default 1)")
    a("--max-concurrent", type=_int(1), help="at most this many trials at once (default: as resources allow)")
    a("--tracking-uri", help="MLflow tracking URI (default: sqlite:///./mlruns.db, an embedded store here)")
    a("--experiment", help="MLflow experiment and Ray run name (default condface-<model>-<preset>)")
    a("--storage-path", help="where Ray Tune keeps trial results and checkpoints (a shared filesystem on clusters)")
    a("--resume", nargs="?", const=True, default=False, metavar="SWEEP",
      help="continue an unfinished sweep: the only one of this experiment, or the one named (its directory under "
           "--storage-path, or that directory's name); finished phases are skipped")
    a("--dry-run", action="store_true", help="print the trial table and exit")
    a("--lr", type=_float(1e-12), help="learning rate of every grid trial (Optuna samples lr from the preset's "
                                       "lr_range instead)")
    a("--batch-size", type=_int(1), help="micro-batch size (study: 32)")
    a("--epoch-images", type=_int(1), help="a grid epoch is a pass over the first N training images (study: all)")
    a("--final-epoch-images", type=_int(1), help="the same for the final run's epochs (study: all)")
    a("--guidance-scale", type=_float(0), help="classifier-free guidance scale for per-epoch samples and the final "
                                               "run (Optuna samples it from guidance_range instead)")
    a("--sampler", choices=SAMPLERS, help="sampler of every generated set (study: ddpm; CPU presets: dpm++)")
    a("--sampling-steps", type=_steps, help="sampling steps, or T for the model's whole chain (study: T, as §2.1)")
    a("--ddpm-variance", choices=DDPM_VARIANCES,
      help="DDPM sampler variance: fixed_large = beta_t (study, §2.1) or fixed_small = beta-tilde (diffusers' default)")
    a("--beta-rescale", action=argparse.BooleanOptionalAction, default=None,
      help="scale the linear betas by 1000/T (a finer chain); default off: the study's longer chain for T = 10,000")
    a("--augment", choices=AUGMENTS, help="training augmentation policy (study: study; cpu-demo: none)")
    a("--augment-axis", type=_names(AUGMENTS),
      help="make augmentation a grid axis over these policies, e.g. none,study,study-no-color (§5)")
    a("--sampler-phase", action=argparse.BooleanOptionalAction, default=None,
      help="after the final run, sample its model with every sampler x step count (§5's future work)")
    a("--sampler-phase-samplers", type=_names(SAMPLERS), help="samplers of the sampler phase (default ddpm,ddim,dpm++)")
    a("--sampler-phase-steps", type=_step_list, help="step counts of the sampler phase, T = the whole chain "
                                                     "(study: 10,20,50,100,250,T)")
    a("--sampler-phase-samples", type=_int(1), help="samples per sampler setting (default: --final-samples)")
    a("--cfg-scales", type=_scales, help="guidance scales of the CFG sweep, comma-separated (default 1,2,3,4,5,7)")
    a("--eval-samples", type=_int(1), help="fixed, seeded conditions generated and scored every epoch")
    a("--final-samples", type=_int(1), help="samples of the final comparison (study: 100)")
    a("--cfg-samples", type=_int(1), help="samples per guidance scale in the CFG sweep (study: 250)")
    a("--checkpoint-artifacts", choices=CHECKPOINT_POLICIES,
      help="which trial checkpoints MLflow keeps: none, each trial's best epoch, or all")
    a("--artifact-limit-mb", type=_float(0), help="stop logging checkpoints to MLflow past this many MB")
    a("--max-failures", type=_int(0), help="retries of a crashed trial, each from its last checkpoint")
    a("--mixed-precision", choices=MIXED_PRECISIONS,
      help="training precision: auto = bf16 autocast on GPUs, fp32 on CPUs (default); bf16; no = fp32")
    a("--sampling-precision", choices=MIXED_PRECISIONS,
      help="sampling precision: auto = bf16 autocast on GPUs and on CPUs with native bf16 (default); bf16; no = fp32")
    a("--compile", action=argparse.BooleanOptionalAction, default=None,
      help="torch.compile each trial's network (pays on GPUs; a minute of warm-up per trial on a 2-core CPU)")
    a("--final-workers", type=_int(1), help="train the final run data-parallel on this many Ray Train workers "
                                            "(DDP: gloo on CPUs, nccl with one GPU each; the global batch is kept)")
    a("--pretrained", help="sd-lora: a local Stable Diffusion Nano 2.1 folder (or hub id) to adapt instead of the "
                           "preset's base")
    a("--inception-weights", help="torch-fidelity Inception weights file for real FID (else fd_estimator stands in)")
    a("--clip-model", help="CLIP model id or local folder for the CLIP score (cpu-demo: none)")
    a("--mtcnn", action=argparse.BooleanOptionalAction, default=None,
      help="score face detection with MTCNN (study: on; cpu-demo: off, its 16 px faces are too small)")
    a("--seed", type=_int(0), help="seed of training, conditions and sampling")
    a("--no-dashboard", action="store_true", help="do not start the Ray dashboard with the local Ray runtime")
    a("--fail-once-at-epoch", type=_int(0), help=argparse.SUPPRESS)  # testing: every trial crashes once there
    return p


_OVERRIDES = ("data", "search", "num_samples", "scheduler", "epochs", "final_epochs", "select_metric", "address",
              "gpus_per_trial", "max_concurrent", "tracking_uri", "experiment", "storage_path", "lr", "batch_size",
              "guidance_scale", "cfg_scales", "eval_samples", "final_samples", "cfg_samples",
              "checkpoint_artifacts", "artifact_limit_mb", "max_failures", "seed", "fail_once_at_epoch",
              "pretrained", "inception_weights", "clip_model", "mtcnn", "gpus_per_eval_actor", "eval_actors",
              "sampler", "sampling_steps", "ddpm_variance", "beta_rescale", "augment", "augment_axis", "sampler_phase",
              "sampler_phase_samplers", "sampler_phase_steps", "sampler_phase_samples", "epoch_images",
              "final_epoch_images", "final_workers", "mixed_precision", "sampling_precision", "compile")


def explicit_settings(args: argparse.Namespace) -> set[str]:
    """The settings the command line named (what --resume must either honour or say it ignores)."""
    named = {k for k in _OVERRIDES if getattr(args, k) is not None}
    if args.model != "ddpm":
        named.add("model")
    return named


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    overrides = {k: getattr(args, k) for k in _OVERRIDES}
    return resolve(args.preset, model=args.model, resume=bool(args.resume), dry_run=args.dry_run, **overrides)


# --------------------------------------------------------------------------------------------------
# Checks that run before anything starts, so a bad flag costs seconds and leaves nothing half-written
# --------------------------------------------------------------------------------------------------
def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """A host:port (or ray://host:port) must accept a TCP connection; `auto` is left to Ray."""
    if address is None or address == "auto" or address == "local":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address!r} is not host:port, ray://host:port or auto: e.g. --address 10.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise SweepError(f"cannot reach the Ray cluster at {address} ({err.strerror or err}): start it with "
                         "`ray start --head` there, or drop --address to run a local Ray runtime") from None


def check_storage(path: str) -> None:
    """A local (or mounted shared) directory. Remote URIs are refused: the driver reads trial PNGs, checkpoints
    and the final pipeline back as local paths, so on s3:// they would be silently missing."""
    if "://" in path and not path.startswith("file://"):
        raise SweepError(f"--storage-path {path}: remote storage is not supported (the driver reads trial results "
                         "back as local files); mount it on every node (NFS, s3fs, gcsfuse) and pass the mount point")
    path = path[len("file://"):] if path.startswith("file://") else path
    from orchestration.tracking import check_writable_dir

    check_writable_dir(Path(path), what=f"--storage-path {path}",
                       fix="pass a writable directory (a shared filesystem on clusters)")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        if cfg.dry_run:
            from orchestration.grid import trial_table

            print(trial_table(cfg))
            return
        from orchestration.tracking import check_tracking_uri, default_tracking_uri

        check_storage(cfg.storage_path)
        check_tracking_uri(cfg.tracking_uri or default_tracking_uri())
        check_address(cfg.address)
        from orchestration.driver import run_sweep

        started = time.time()
        run_sweep(cfg, dashboard=not args.no_dashboard,
                  resume_from=args.resume if isinstance(args.resume, str) else None, explicit=explicit_settings(args))
        print(f"total wall time: {time.time() - started:.0f} s")
    except SweepError as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit("interrupted: continue this sweep with the same command and --resume")
    except Exception as err:  # the other layers' one-line user errors, also when raised inside a Ray task
        from orchestration.evaluate import user_error

        cause = getattr(err, "cause", None)
        for candidate in (err, cause, err.__cause__):
            if user_error(candidate):
                sys.exit(f"error: {str(candidate).strip().splitlines()[0]}")
        raise


if __name__ == "__main__":
    main()
