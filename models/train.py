"""One training run without any sweep: `python -m models.train --model ddpm --preset cpu-tiny --epochs 1 --out DIR`.

Writes into DIR: `pipeline/` (save_pretrained; EMA weights), `samples.png` (one row per
attribute, levels 0..5), `run.json` (the resolved configuration, parameter counts, per-epoch
history) and `checkpoints/` (the last epoch; `--resume` continues from it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.errors import DataError
from data.io import atomic_write_text
from models.errors import ConfigError
from models.families import FAMILIES, build_family, family_config, family_spec
from models.schedulers import DDPM_VARIANCES, SAMPLERS

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # The study: batch 32, lr 1e-4, 5 epochs per grid trial.
    "study": dict(epochs=5, batch_size=32, lr=1e-4),
    # Short CPU runs: a higher lr makes the small presets learn the condition within minutes.
    "cpu": dict(epochs=1, batch_size=32, lr=2e-3, val_samples=256),
}


@dataclass(frozen=True)
class RunConfig:
    """Everything one run uses; written to run.json."""

    model: str
    preset: str
    family: Any  # the family's frozen config (e.g. models.ddpm.DDPMConfig)
    train: Any  # models.engine.TrainConfig
    data: str = "toy"
    limit: int | None = None
    augment: str = "none"
    sampler: str = "ddpm"
    guidance_scale: float = 3.0
    sample_steps: int = 50  # 0: the full chain (T steps)
    ddpm_variance: str = "fixed_small"  # the DDPM sampler's sigma_t^2: fixed_small (beta-tilde) or fixed_large (beta)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="ddpm", choices=sorted(FAMILIES), help="model family")
    p.add_argument("--preset", default="cpu-tiny", help="the family's preset (python -m models.ddpm lists DDPM ones)")
    p.add_argument("--out", required=True, type=Path, help="output directory (must be new unless --resume)")
    p.add_argument("--data", default="toy", help="'toy' (embedded synthetic faces) or a prepared cache directory")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--augment", default="none", choices=["none", "study", "study-no-color"], help="augmentation")
    p.add_argument("--train-preset", default="auto", choices=["auto", *TRAIN_PRESETS],
                   help="optimisation preset; auto: 'cpu' for cpu-* model presets, else 'study'")
    p.add_argument("--epochs", type=int, help="epochs (default: from the train preset)")
    p.add_argument("--batch-size", type=int, help="micro-batch size")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps (study: 1 or 4)")
    p.add_argument("--lr", type=float, help="AdamW learning rate")
    p.add_argument("--min-snr-gamma", type=float, help="Min-SNR-gamma weighting (study: 5); default off")
    p.add_argument("--p-uncond", type=float, help="probability of the empty condition (CFG), default 0.1")
    p.add_argument("--timesteps", type=int, help="diffusion steps T (study: 1000 or 10000)")
    p.add_argument("--beta-schedule", choices=["linear", "cosine"], help="noise schedule")
    p.add_argument("--beta-rescale", action="store_true",
                   help="scale the linear betas by 1000/T (a finer chain; default: the study's betas for every T)")
    p.add_argument("--channels", help="channels per level, comma separated, e.g. 128,256,512,512")
    p.add_argument("--max-steps-per-epoch", type=int, help="cap optimizer steps per epoch")
    p.add_argument("--time-budget", type=float, help="end each epoch after this many seconds")
    p.add_argument("--val-samples", type=int, help="validation items for the held-out loss (0: off)")
    p.add_argument("--no-ema", action="store_true", help="sample with the raw weights instead of their EMA")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, data order and noise")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (GPU only)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoints")
    p.add_argument("--sampler", default="ddpm", choices=sorted(SAMPLERS), help="sampler for the sample grid")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="CFG scale for the sample grid")
    p.add_argument("--sample-steps", type=int, default=50, help="sampling steps for the sample grid (0: T steps)")
    p.add_argument("--ddpm-variance", default="fixed_small", choices=list(DDPM_VARIANCES),
                   help="DDPM sampler variance: fixed_small (beta-tilde) or fixed_large (beta_t, the study)")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    from models.engine import TrainConfig

    spec = family_spec(args.model)
    if args.preset not in spec.presets:
        raise ConfigError(f"unknown {args.model} preset {args.preset!r}; choose one of {list(spec.presets)}")
    overrides: dict[str, Any] = {}
    if args.timesteps is not None:
        overrides["num_train_timesteps"] = args.timesteps
    if args.beta_schedule is not None:
        overrides["beta_schedule"] = args.beta_schedule
    if args.beta_rescale:
        overrides["beta_rescale"] = True
    if args.channels is not None:
        try:
            overrides["block_out_channels"] = tuple(int(c) for c in args.channels.split(","))
        except ValueError as err:
            raise ConfigError(f"--channels must be integers separated by commas, got {args.channels!r}") from err
    family_cfg = family_config(args.model, args.preset, **overrides)

    name = args.train_preset if args.train_preset != "auto" else ("cpu" if args.preset.startswith("cpu") else "study")
    train_fields = dict(TRAIN_PRESETS[name], seed=args.seed, device=args.device, num_workers=args.num_workers,
                        compile=args.compile, ema=not args.no_ema)
    for flag, field in [("epochs", "epochs"), ("batch_size", "batch_size"), ("grad_accum", "grad_accum"),
                        ("lr", "lr"), ("min_snr_gamma", "min_snr_gamma"), ("p_uncond", "p_uncond"),
                        ("max_steps_per_epoch", "max_steps_per_epoch"), ("time_budget", "epoch_time_budget_s"),
                        ("val_samples", "val_samples")]:
        if getattr(args, flag) is not None:
            train_fields[field] = getattr(args, flag)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.sample_steps < 0:
        raise ConfigError(f"--sample-steps must be >= 1, or 0 for the full chain; got {args.sample_steps}")
    return RunConfig(model=args.model, preset=args.preset, family=family_cfg, train=TrainConfig(**train_fields),
                     data=args.data, limit=args.limit, augment=args.augment, sampler=args.sampler,
                     guidance_scale=args.guidance_scale, sample_steps=args.sample_steps,
                     ddpm_variance=args.ddpm_variance)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj if isinstance(obj, int | float | str | bool | type(None)) else str(obj)


def _write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(payload), indent=2))


def run(cfg: RunConfig, out: Path, resume: bool = False) -> dict[str, Any]:
    from data.dataset import FaceDataset, resolve_data
    from models.engine import fit
    from models.sampling import attribute_grid, save_png

    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"output directory {out} is not empty: choose a new --out or pass --resume")
    image_size = getattr(cfg.family, "image_size", 64)
    cache = resolve_data(cfg.data, image_size)
    train_set = FaceDataset(cache, "train", augment=cfg.augment, limit=cfg.limit)
    try:
        val_set = FaceDataset(cache, "val")
    except DataError:
        val_set = None
    family = build_family(cfg.model, cfg.family, seed=cfg.train.seed)
    counts = family.parameter_counts()
    print(f"{cfg.model} preset {cfg.preset}: {counts['total'] / 1e6:.2f}M parameters "
          f"({counts['trainable'] / 1e6:.2f}M trainable); {len(train_set)} training images at {image_size}px "
          f"from {cache}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    result = fit(family, cfg.train, train_set, checkpoint_dir=out / "checkpoints", resume=resume,
                 val_dataset=val_set)

    family.save_pretrained(out / "pipeline")  # every family writes it whole or not at all
    grid = attribute_grid(family, cfg.guidance_scale, cfg.sample_steps, seed=cfg.train.seed, scheduler=cfg.sampler,
                          ddpm_variance=cfg.ddpm_variance)
    save_png(grid, out / "samples.png")
    summary = {"config": cfg, "parameters": counts, "epochs_completed": result.epochs_completed,
               "steps": result.step, "ema_weights": result.ema_applied, "history": result.history,
               "step_losses": result.step_losses, "describe": family.describe()}
    _write_json(out / "run.json", summary)
    weights = "EMA" if result.ema_applied else "raw"
    print(f"wrote {out / 'pipeline'} ({weights} weights), {out / 'samples.png'}, {out / 'run.json'}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from models.runtime import configure_torch

    configure_torch(args.threads)
    try:
        cfg = resolve_config(args)
        run(cfg, args.out, resume=args.resume)
    except (ConfigError, DataError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
