"""How long scoring takes: `python -m evaluation.bench --data toy --size 32 --n 256`.

Times each metric's update on n validation images (as stand-ins for generated ones, paired with
themselves) and the compute step, in images per second of wall time and CPU time, so a sweep can
budget its per-epoch evaluation. Uses an estimator directory, or trains/caches the small one.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from data.cache import FaceCache
from data.errors import DataError
from evaluation.config import EvalConfig, eval_device
from evaluation.errors import EvalError
from evaluation.metrics.base import EvalBatch
from evaluation.scorer import Scorer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evaluation.bench", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="toy", help="image cache directory, or 'toy'")
    p.add_argument("--size", type=int, default=None, help="toy image size in px")
    p.add_argument("--n", type=int, default=256, help="images to score")
    p.add_argument("--estimator", default="auto", help="estimator directory or 'auto' (cached small preset)")
    p.add_argument("--clip-model", default=None, help="CLIP model id or local directory (default: skip)")
    p.add_argument("--batch-size", type=int, default=64, help="scoring batch size")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = p.parse_args(argv)
    try:
        device = str(eval_device(args.device))  # a bad --device fails before any data is built or trained
        if args.threads:
            torch.set_num_threads(args.threads)
        from data.dataset import resolve_data
        from evaluation.conditions import paired_conditions

        cache = FaceCache.open(resolve_data(args.data, args.size))
        estimator = args.estimator
        if estimator == "auto":
            from evaluation.estimator_cache import ensure_estimator

            estimator = str(ensure_estimator(cache.root, device=device))
        scorer = Scorer(EvalConfig(estimator=estimator, clip_model=args.clip_model, device=device,
                                   batch_size=args.batch_size))
        paired = paired_conditions(cache, args.n)
    except (EvalError, DataError, ValueError) as err:
        sys.exit(f"error: {err}")
    images = torch.from_numpy(paired.real_images).permute(0, 3, 1, 2).to(scorer.device)
    levels = torch.from_numpy(paired.levels)
    print(f"{args.n} images of {cache.size}px on {scorer.device}, {torch.get_num_threads()} torch threads")
    print(f"{'metric':<14} {'img/s (wall)':>13} {'img/s (cpu)':>12}")
    for metric in scorer.metrics:
        metric.reset()
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(0, args.n, args.batch_size):
            metric.update(EvalBatch(images[i : i + args.batch_size], levels[i : i + args.batch_size],
                                    paired.captions[i : i + args.batch_size], images[i : i + args.batch_size]))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{metric.name:<14} {args.n / wall:>13.0f} {args.n / max(cpu, 1e-9):>12.0f}")
    state = scorer.update(paired.real_images, paired.levels, paired.captions, paired.real_images)
    wall = time.perf_counter()
    result = scorer.compute(state)
    print(f"compute: {1000 * (time.perf_counter() - wall):.0f} ms; values: "
          + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.values.items()) if not k.startswith("est_acc_")))

