"""Does bf16 autocast cost quality? `python -m evaluation.precision_check`.

Trains the embedded default's final configuration (cpu-16 DDPM = the demo's "large" channel set, T 1000, no
Min-SNR, grad_accum 1, lr 2e-3, EMA 0.999, batch 32 on the 16 px synthetic faces) at reduced length with
`mixed_precision` "no" (fp32) and "bf16", for each seed, and scores each final model the way the sweep's final
evaluation does: `--samples` paired validation conditions, DPM-Solver++ 20 steps, guidance 4, the cached `small`
attribute estimator, class-balanced accuracy (est_acc_balanced). Sampling runs in fp32 for both, so the
difference is the training precision only. Prints one line per run (with the load average) and the
per-precision means; the spread between seeds of one precision is the noise floor the difference is judged
against.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(precision: str, seed: int, epochs: int, epoch_images: int, samples: int, threads: int | None) -> dict:
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
    root = resolve_data("toy", 16)
    family = build_family("ddpm", family_config("ddpm", "cpu-16"), seed=seed)
    train = FaceDataset(root, "train", limit=epoch_images)
    val = FaceDataset(root, "val")
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=2e-3, ema_decay=0.999, seed=seed, device="cpu",
                      mixed_precision=precision, val_samples=256, progress=False, verbose=False)
    start = time.perf_counter()
    result = fit(family, cfg, train, val_dataset=val)
    train_s = time.perf_counter() - start
    cache = FaceCache.open(root)
    scorer = Scorer(EvalConfig(estimator=str(ensure_estimator(cache.root, device="cpu")), mtcnn=False,
                               clip_model=None, device="cpu"))
    paired = paired_conditions(cache, samples, split="val", seed=0)
    with torch.no_grad():
        images = (generate(family, levels, captions, guidance_scale=4.0, num_inference_steps=20, seed=i,
                           scheduler="dpm++") for i, (levels, captions, _) in enumerate(paired.batches(256)))
        scores = score_set(scorer, images, paired, 256)
    return {"precision": precision, "seed": seed, "train_s": train_s,
            "img_s": result.history[-1]["images_per_second"], "train_loss": result.history[-1]["train_loss"],
            "val_loss": result.history[-1]["val_loss"],
            "est_acc_balanced": scores.values.get("est_acc_balanced"), "est_acc": scores.values.get("est_acc")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evaluation.precision_check", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--precisions", default="no,bf16")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--epoch-images", type=int, default=8192)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for precision in args.precisions.split(","):
            row = run(precision, seed, args.epochs, args.epoch_images, args.samples, args.threads)
            rows.append(row)
            print("{precision:5s} seed {seed}: balanced acc {est_acc_balanced:.3f} (plain {est_acc:.3f}), held-out "
                  "loss {val_loss:.4f} (under the run's autocast), {img_s:.0f} img/s, {train_s:.0f}s training; ".format(**row)
                  + "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    for precision in args.precisions.split(","):
        accs = [r["est_acc_balanced"] for r in rows if r["precision"] == precision]
        print(f"{precision:5s}: mean balanced acc {sum(accs) / len(accs):.3f} over seeds {accs}", flush=True)


if __name__ == "__main__":
    main()
