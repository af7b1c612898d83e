"""Reference rows (the study's Table 3.1), scored by the same code as every trained model.

    python -m evaluation.reference --data toy --size 32 --samples 100 --estimator auto

Rows:
    untrained     a random-weight model of the chosen family (for sd-lora: the base model before any
                  LoRA training, the study's "SD Nano 2.1 (no LoRA)" row), asked for the paired
                  validation conditions;
    ground truth  the real validation images themselves, scored against their own levels and captions
                  (paired protocol: FID of a set against itself, 0 as in the study; unpaired: against an
                  independent draw of validation images);
    real held-out real test images against the paired validation images (unpaired): the FID floor
                  two real samples of this size reach, which shows how much of a small-sample FID is bias.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from data.cache import FaceCache
from data.errors import DataError
from data.io import atomic_write_text
from evaluation.conditions import PairedSet, paired_conditions
from evaluation.config import FID_SAMPLES, EvalConfig, eval_device
from evaluation.errors import EvalError
from evaluation.scorer import MetricResult, Scorer

ROWS = ("untrained", "ground-truth", "real-held-out")
DEFAULT_MODEL_PRESET = {16: "cpu-16", 32: "cpu-tiny", 64: "study-large"}


def score_set(scorer: Scorer, images_batches, paired: PairedSet, batch_size: int) -> MetricResult:
    """Score generated images (an iterable of uint8 chunks aligned with paired.batches) against the paired set."""
    states = []
    for images, (levels, captions, real) in zip(images_batches, paired.batches(batch_size)):
        states.append(scorer.update(images, levels, captions, real))
    return scorer.compute(Scorer.merge(states))


def ground_truth_row(scorer: Scorer, paired: PairedSet, batch_size: int = 256) -> MetricResult:
    return score_set(scorer, paired.condition_images(batch_size), paired, batch_size)


def held_out_row(scorer: Scorer, paired: PairedSet, seed: int, batch_size: int = 256) -> MetricResult:
    """Real test images (with their own levels/captions) against the paired validation images."""
    test = paired_conditions(paired.cache, len(paired), split="test", seed=seed)
    states = []
    for (levels, captions, images), (_, _, real) in zip(test.batches(batch_size), paired.batches(batch_size)):
        states.append(scorer.update(images, levels, captions, real))
    return scorer.compute(Scorer.merge(states))


def untrained_row(scorer: Scorer, paired: PairedSet, model: str, config: Any, steps: int,
                  guidance_scale: float, seed: int, sampler: str = "ddpm", batch_size: int = 256,
                  ddpm_variance: str = "fixed_small", precision: str = "no", shown: list | None = None) -> MetricResult:
    """A freshly built `model` family of `config` (`models.families.family_config`), sampled with `sampler`
    (`ddpm_variance`, `precision`: as `models.sampling.generate`) on the scorer's device: random weights for the
    DDPM; for sd-lora the base with zero-initialised adapters, i.e. the base itself. `shown`, when given, receives
    each chunk of generated images as it is scored (for a figure of what the row scored)."""
    from models.families import build_family
    from models.sampling import generate

    if getattr(config, "image_size", paired.cache.size) != paired.cache.size:
        raise EvalError(f"{model} preset {config.preset!r} makes {config.image_size}px images but the data is "
                        f"{paired.cache.size}px: pick a preset of that size with --model-preset")
    family = build_family(model, config, seed=seed).to(scorer.device)  # sampled where the scorer runs
    images = (
        generate(family, levels, captions, guidance_scale=guidance_scale, num_inference_steps=steps,
                 seed=seed + i, scheduler=sampler, ddpm_variance=ddpm_variance, precision=precision)
        for i, (levels, captions, _) in enumerate(paired.batches(batch_size))
    )
    return score_set(scorer, images if shown is None else _kept(images, shown), paired, batch_size)


def _kept(chunks, into: list):
    for chunk in chunks:
        into.append(chunk)
        yield chunk


def format_rows(rows: dict[str, MetricResult]) -> str:
    names = sorted({k for r in rows.values() for k in (*r.values, *r.unavailable)})
    lines = [f"{'metric':<24}" + "".join(f"{name:>18}" for name in rows)]
    for metric in names:
        cells = []
        for r in rows.values():
            if metric in r.values:
                v = r.values[metric]
                v = round(v, 4) + 0.0  # no "-0.0000" for numerical noise around zero
                cells.append(f"{v:>18.4f}" if metric != "mtcnn" else f"{v:>17.2f}%")
            else:
                cells.append(f"{'unavailable':>18}")
        lines.append(f"{metric:<24}" + "".join(cells))
    reasons = {m: why for r in rows.values() for m, why in r.unavailable.items()}
    lines += [f"  {m}: unavailable: {why}" for m, why in sorted(reasons.items())]
    counts = next(iter(rows.values())).counts
    lines.append("  samples: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evaluation.reference", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="toy", help="image cache directory, or 'toy' for the embedded synthetic faces")
    p.add_argument("--size", type=int, default=None, help="toy image size in px (default: the toy default)")
    p.add_argument("--samples", type=int, default=FID_SAMPLES["study-final"],
                   help="paired validation samples (study: 100; large-sample protocol: 10000)")
    p.add_argument("--fid-protocol", default="paired", choices=["paired", "unpaired"],
                   help="real half of FID: the paired validation images (study) or an independent draw")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--estimator", default="auto",
                   help="estimator directory, 'auto' (train once and cache the small preset) or 'none'")
    p.add_argument("--inception-weights", default=None, help="torch-fidelity Inception weights file for real FID")
    p.add_argument("--clip-model", default=None, help="CLIP model id or local directory for the CLIP score")
    p.add_argument("--no-mtcnn", action="store_true", help="skip the MTCNN face-confidence metric")
    p.add_argument("--model", default="ddpm", help="model family of the untrained row: ddpm | sd-lora | pixel-text | if-lora")
    p.add_argument("--model-preset", default=None, help="family preset (default: the CPU/study preset of --size)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps for the untrained row")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance scale for the untrained row")
    p.add_argument("--seed", type=int, default=0, help="seed of the condition draw and of the untrained model")
    p.add_argument("--device", default="auto", help="evaluation device: auto | cpu | cuda | cuda:N")
    p.add_argument("--out", default=None, help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    try:
        rows_asked = [r.strip() for r in args.rows.split(",") if r.strip()]
        unknown = sorted(set(rows_asked) - set(ROWS))
        if unknown or not rows_asked:
            raise EvalError(f"unknown rows {unknown or args.rows!r}: choose from {', '.join(ROWS)}")
        device = str(eval_device(args.device))  # a bad --device fails before any data is built or trained
        from data.dataset import resolve_data

        cache = FaceCache.open(resolve_data(args.data, args.size))
        estimator = None
        if args.estimator == "auto":
            from evaluation.estimator_cache import ensure_estimator

            estimator = str(ensure_estimator(cache.root, device=device))
        elif args.estimator != "none":
            estimator = args.estimator
        config = EvalConfig(estimator=estimator, inception_weights=args.inception_weights,
                            clip_model=args.clip_model, mtcnn=not args.no_mtcnn, device=device,
                            fid_protocol=args.fid_protocol)
        paired = paired_conditions(cache, args.samples, split="val", seed=args.seed, protocol=config.fid_protocol)
        scorer = Scorer(config)
        rows: dict[str, MetricResult] = {}
        for name in rows_asked:
            print(f"scoring {name} ({args.samples} samples) ...", flush=True)
            if name == "ground-truth":
                rows[name] = ground_truth_row(scorer, paired)
            elif name == "real-held-out":
                rows[name] = held_out_row(scorer, paired, seed=args.seed)
            else:
                preset = args.model_preset or DEFAULT_MODEL_PRESET.get(cache.size)
                if preset is None:
                    raise EvalError(f"no default {args.model} preset for {cache.size}px data: pass --model-preset")
                from models.families import family_config

                rows[name] = untrained_row(scorer, paired, args.model, family_config(args.model, preset), args.steps,
                                           args.guidance, args.seed)
    except (EvalError, DataError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(format_rows(rows))
    if args.out:
        out = atomic_write_text(args.out, json.dumps({k: r.to_json() for k, r in rows.items()}, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
