"""What does a training or sampling setting do to the demo's final model? `python -m evaluation.bench.ablation`.

Trains the embedded default's final configuration (cpu-16 DDPM = the demo's "large" channel set, T 1000, no
Min-SNR, grad_accum 1, batch 32, lr 2e-3, EMA 0.999 on the 16 px synthetic faces) once per variant and seed,
at a length you choose, and scores each model the way the sweep's final evaluation does: `--samples` paired
validation conditions, DPM-Solver++ 20 steps at guidance 4, the cached `small` attribute estimator,
class-balanced accuracy (est_acc_balanced). A variant changes any `models.engine.TrainConfig` field, any field
of the DDPM family's config, or the sampling (`guidance`, `sampler`, `steps`):

    python -m evaluation.bench.ablation --variant fp32 mixed_precision=no --variant bf16 mixed_precision=bf16
    python -m evaluation.bench.ablation --variant base --variant snr5 min_snr_gamma=5 --variant b16 batch_size=16 \\
        --seeds 0,1 --epochs 3 --epoch-images 16384 --samples 300 --jobs 2

Prints a line per run (with the load average) and, per variant, the mean over seeds, the spread between seeds
(the noise floor a difference is judged against) and the difference from the first variant. `--jobs 2` runs
two trainings at once with one thread each (on a 2-core machine the throughput figures then read per core).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

# The demo's final configuration (orchestration.config.CPU_DEMO after its grid picked ga1-T1000-snroff-large).
BASE_TRAIN = {"batch_size": 32, "lr": 2e-3, "ema_decay": 0.999, "val_samples": 256}
BASE_SAMPLING = {"guidance": 4.0, "sampler": "dpm++", "steps": 20}


class AblationError(ValueError):
    """A variant names a setting that does not exist or gives it a value of the wrong kind."""


def _parse_value(raw: str, annotation: str):
    """`raw` as the type a dataclass field is annotated with (`from __future__ import annotations`: a string)."""
    if "None" in annotation and raw.lower() == "none":
        return None
    if annotation.startswith("tuple"):
        kind = float if "float" in annotation else int
        return tuple(kind(v) for v in raw.split(","))
    if annotation.startswith("bool"):
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected true or false, got {raw!r}")
        return raw.lower() in ("true", "1", "yes")
    if annotation.startswith("int"):
        return int(raw)
    if annotation.startswith("float"):
        return float(raw)
    return raw


def parse_variant(tokens: list[str]) -> tuple[str, dict, dict, dict]:
    """`NAME key=value ...` -> (name, TrainConfig overrides, family overrides, sampling overrides)."""
    from models.ddpm import DDPMConfig
    from models.engine import TrainConfig

    name, *settings = tokens
    train_fields = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    family_fields = {f.name: str(f.type) for f in dataclasses.fields(DDPMConfig) if f.name != "preset"}
    sampling_fields = {"guidance": "float", "sampler": "str", "steps": "int"}
    train, family, sampling = {}, {}, {}
    for setting in settings:
        key, sep, raw = setting.partition("=")
        if not sep:
            raise AblationError(f"variant {name!r}: {setting!r} is not key=value (e.g. min_snr_gamma=5)")
        try:
            if key in sampling_fields:
                sampling[key] = _parse_value(raw, sampling_fields[key])
            elif key in train_fields:
                train[key] = _parse_value(raw, train_fields[key])
            elif key in family_fields:
                family[key] = _parse_value(raw, family_fields[key])
            else:
                raise AblationError(f"variant {name!r}: no setting {key!r}: use a models.engine.TrainConfig field, "
                                    f"a DDPM config field or one of {', '.join(BASE_SAMPLING)}")
        except AblationError:
            raise
        except ValueError as e:
            raise AblationError(f"variant {name!r}: {key}={raw!r} is not a valid value ({e})") from None
    try:  # the configs validate themselves: a bad value fails here, before any training starts
        from models.families import family_config
        from models.schedulers import SAMPLERS

        TrainConfig(**{**BASE_TRAIN, **train})
        family_config("ddpm", "cpu-16", **family)
        if sampling.get("sampler", "dpm++") not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampling['sampler']!r}")
        if sampling.get("steps", 1) < 1 or sampling.get("guidance", 0.0) < 0:
            raise ValueError("steps must be >= 1 and guidance >= 0")
    except (ValueError, TypeError) as e:
        raise AblationError(f"variant {name!r}: {e}") from None
    return name, train, family, sampling


def run(name: str, train_overrides: dict, family_overrides: dict, sampling_overrides: dict, seed: int, epochs: int,
        epoch_images: int, samples: int, threads: int | None, data: str) -> dict:
    import torch

    from data.cache import FaceCache
    from data.dataset import FaceDataset, resolve_data
    from evaluation.conditions import paired_conditions
    from evaluation.config import EvalConfig
    from evaluation.estimator_cache import ensure_estimator
    from evaluation.reference import score_set
    from evaluation.scorer import Scorer
    from models.engine import TrainConfig, fit
    from models.families import build_family, family_config
    from models.runtime import configure_torch
    from models.sampling import generate

    configure_torch(threads)
    root = resolve_data(data, 16)
    family = build_family("ddpm", family_config("ddpm", "cpu-16", **family_overrides), seed=seed)
    train = FaceDataset(root, "train", limit=epoch_images)
    val = FaceDataset(root, "val")
    cfg = TrainConfig(**{**BASE_TRAIN, "epochs": epochs, "seed": seed, "device": "cpu", "progress": False,
                         "verbose": False, **train_overrides})
    start = time.perf_counter()
    result = fit(family, cfg, train, val_dataset=val if cfg.val_samples else None)
    train_s = time.perf_counter() - start
    cache = FaceCache.open(root)
    scorer = Scorer(EvalConfig(estimator=str(ensure_estimator(cache.root, device="cpu", progress=False)),
                               mtcnn=False, clip_model=None, device="cpu"))
    paired = paired_conditions(cache, samples, split="val", seed=0)
    sampling = {**BASE_SAMPLING, **sampling_overrides}
    with torch.no_grad():
        images = (generate(family, levels, captions, guidance_scale=sampling["guidance"],
                           num_inference_steps=sampling["steps"], seed=i, scheduler=sampling["sampler"])
                  for i, (levels, captions, _) in enumerate(paired.batches(256)))
        scores = score_set(scorer, images, paired, 256)
    last = result.history[-1]
    per_attribute = {k.removeprefix("est_acc_"): v for k, v in scores.values.items()
                     if k.startswith("est_acc_") and k != "est_acc_balanced"}
    return {"variant": name, "seed": seed, "train_s": train_s, "img_s": last["images_per_second"],
            "val_loss": last.get("val_loss"), "est_acc_balanced": scores.values["est_acc_balanced"],
            "est_acc": scores.values["est_acc"], "per_attribute": per_attribute, "load": os.getloadavg()}


def _line(row: dict) -> str:
    held_out = f"held-out loss {row['val_loss']:.4f}, " if row["val_loss"] is not None else ""
    attrs = " ".join(f"{k} {v:.2f}" for k, v in row["per_attribute"].items())
    return (f"{row['variant']} seed {row['seed']}: balanced acc {row['est_acc_balanced']:.3f} (plain "
            f"{row['est_acc']:.3f}; {attrs}), {held_out}{row['img_s']:.0f} img/s, {row['train_s']:.0f}s training; "
            "load {:.2f} {:.2f} {:.2f}".format(*row["load"]))


def summarize(rows: list[dict], order: list[str]) -> list[str]:
    """Per variant: mean balanced accuracy over seeds, the seed spread (max - min), the difference from the first."""
    means = {}
    lines = []
    for name in order:
        accs = [r["est_acc_balanced"] for r in sorted(rows, key=lambda r: r["seed"]) if r["variant"] == name]
        means[name] = sum(accs) / len(accs)
        spread = max(accs) - min(accs)
        diff = "" if name == order[0] else f", {means[name] - means[order[0]]:+.3f} vs {order[0]}"
        lines.append(f"{name}: mean balanced acc {means[name]:.3f} over {len(accs)} seed(s) "
                     f"[{', '.join(f'{a:.3f}' for a in accs)}], seed spread {spread:.3f}{diff}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.bench.ablation", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--variant", nargs="+", action="append", metavar="NAME [KEY=VALUE ...]",
                   help="a named variant of the base configuration (repeat; default: base)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--epoch-images", type=int, default=8192, help="each epoch passes over the first N training images")
    p.add_argument("--samples", type=int, default=100, help="paired validation conditions scored per model")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 1 with --jobs > 1)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    p.add_argument("--data", default="toy", help="a 16 px face cache (default: the embedded synthetic faces)")
    args = p.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in (args.variant or [["base"]])]
        seeds = [int(s) for s in args.seeds.split(",")]
    except (AblationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = [v[0] for v in variants]
    if len(set(names)) != len(names):
        print(f"error: variant names repeat ({', '.join(names)}): give each a name of its own", file=sys.stderr)
        return 2
    if args.jobs < 1 or args.epochs < 1 or args.epoch_images < 1 or args.samples < 1:
        print("error: --jobs, --epochs, --epoch-images and --samples must be >= 1", file=sys.stderr)
        return 2
    threads = args.threads if args.threads is not None else (1 if args.jobs > 1 else None)
    jobs = [(name, train, family, sampling, seed, args.epochs, args.epoch_images, args.samples, threads, args.data)
            for seed in seeds for name, train, family, sampling in variants]
    rows = []
    if args.jobs == 1:
        for job in jobs:
            rows.append(run(*job))
            print(_line(rows[-1]), flush=True)
    else:
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            for future in as_completed([pool.submit(run, *job) for job in jobs]):
                rows.append(future.result())
                print(_line(rows[-1]), flush=True)
    for line in summarize(rows, names):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
