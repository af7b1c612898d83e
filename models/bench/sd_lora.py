"""Throughput of the SD + LoRA family: `python -m models.bench.sd_lora`.

Per LoRA rank: trainable / total parameters, training images/s through the real engine (`fit`: VAE
encoding + caption encoding + U-Net forward/backward into the adapters, AdamW, EMA), and sampling
images/s with the standard StableDiffusionPipeline (classifier-free guidance: 2 U-Net evaluations per
image and step). Data: the embedded synthetic faces at the preset's size. The first run of an offline
preset builds its tiny base (cached afterwards; not timed here).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from data.dataset import FaceDataset, resolve_data
from data.errors import DataError
from models.engine import TrainConfig, fit
from models.errors import ConfigError
from models.runtime import configure_torch
from models.sampling import generate
from models.sd_lora import PRESETS, SDLoRAFamily, lora_config


def bench(preset: str, rank: int, steps: int, batch_size: int, sample_batch: int, sample_steps: int,
          pretrained: str | None) -> dict[str, float]:
    overrides = {"rank": rank} if pretrained is None else {"rank": rank, "pretrained": pretrained}
    family = SDLoRAFamily(lora_config(preset, **overrides), verbose=False)
    data = FaceDataset(resolve_data("toy", family.image_size), "train", limit=batch_size * steps * 2)
    common = dict(batch_size=batch_size, val_samples=0, progress=False, verbose=False, max_steps_per_epoch=steps)
    fit(family, TrainConfig(epochs=1, **common), data)  # warm-up
    result = fit(family, TrainConfig(epochs=1, seed=1, **common), data)
    captions = [data[i]["caption"] for i in range(sample_batch)]
    start = time.perf_counter()
    generate(family, None, captions, 3.0, sample_steps, seed=0, scheduler="dpm++")
    sample_seconds = time.perf_counter() - start
    counts = family.parameter_counts()
    return {"trainable": counts["trainable"], "total": counts["total"],
            "train_img_s": result.history[-1]["images_per_second"], "sample_img_s": sample_batch / sample_seconds}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.bench.sd_lora", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu-16", choices=sorted(PRESETS), help="sd-lora preset (default cpu-16)")
    p.add_argument("--pretrained", default=None, help="a base folder or hub id instead of the preset's base")
    p.add_argument("--ranks", default="2,4,8", help="comma-separated LoRA ranks (default 2,4,8)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps (after as many warm-up steps)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch (default 32)")
    p.add_argument("--sample-batch", type=int, default=16, help="images per sampling run (default 16)")
    p.add_argument("--sample-steps", type=int, default=20, help="DPM-Solver++ steps (default 20)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    configure_torch(args.threads)
    try:
        ranks = [int(r) for r in args.ranks.split(",")]
        print(f"{'rank':>4} {'trainable':>10} {'total':>10} {'train img/s':>12} {'sample img/s':>13}  "
              f"(preset {args.preset}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
              f"sampling: dpm++ {args.sample_steps} steps, CFG)")
        for rank in ranks:
            row = bench(args.preset, rank, args.steps, args.batch_size, args.sample_batch, args.sample_steps,
                        args.pretrained)
            print(f"{rank:>4} {row['trainable']:>10,} {row['total']:>10,} {row['train_img_s']:>12.1f} "
                  f"{row['sample_img_s']:>13.1f}", flush=True)
    except (ConfigError, DataError, ValueError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
