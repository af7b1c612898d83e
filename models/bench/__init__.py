"""Throughput benchmark of the attribute DDPM: `python -m models.bench`.

Per preset (and batch size): training images/s through the real engine (`fit`, AdamW + EMA,
bf16 autocast + channels_last on GPU), peak memory, and per sampler: sampling images/s and
network evaluations per image. NFE convention: one U-Net forward of one image counts 1; with
classifier-free guidance each step runs the conditional and unconditional halves in one batched
forward of 2B, which counts 2 per image. DDPM, DDIM and DPM-Solver++ (2nd-order multistep) all
take one (batched) forward per step, so NFE/image = 2 x steps at guidance != 1.

Peak memory: on CPU the peak resident set size of a fresh process that runs only that preset
(getrusage ru_maxrss after training, so it is the training peak); on GPU
torch.cuda.max_memory_allocated. On GPU the study presets also run at batch 32 and 128 in bf16
and the achieved training TFLOP/s is printed: forward FLOPs per image counted with
torch.utils.flop_counter, training = 3 x forward (forward + backward's two matmuls per layer).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

# Dense bf16 peak (no sparsity) by device-name substring, for the % of peak column.
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.2, "RTX 4080": 97.5}
CPU_PRESETS = ("cpu-16", "cpu-tiny")
GPU_PRESETS = ("study-small", "study-large")


@dataclass(frozen=True)
class BenchJob:
    preset: str
    batch_size: int
    train_steps: int
    samplers: tuple[str, ...]
    sample_batch: int
    sample_steps: int
    guidance_scale: float
    device: str
    compile: bool
    threads: int | None


def random_faces(n: int, size: int):
    import torch

    from data.schema import levels_to_cond

    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 6, (n, 5), generator=g)
    images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    cond = levels_to_cond(levels)
    return [{"image": images[i], "levels": levels[i], "cond": cond[i], "caption": ""} for i in range(n)]


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _forward_flops_per_image(family: Any, size: int, device: str) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, size, size, device=device)
    t = torch.tensor([10, 500], device=device)
    cond = {"cond": torch.zeros(2, 30, device=device)}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        family.predict(x, t, cond)
    return counter.get_total_flops() / 2


def run_job(job: BenchJob) -> dict[str, Any]:
    """Benchmark one preset in this process (the caller runs it in a fresh process)."""
    import numpy as np
    import torch

    from models.engine import TrainConfig, fit
    from models.families import build_family, family_config
    from models.runtime import configure_torch
    from models.sampling import generate

    configure_torch(job.threads)
    cfg = family_config("ddpm", job.preset)
    family = build_family("ddpm", cfg, seed=0)
    device = job.device
    data = random_faces(job.batch_size * job.train_steps, cfg.image_size)
    train_cfg = TrainConfig(epochs=2, batch_size=job.batch_size, lr=1e-4, device=device, compile=job.compile,
                            max_steps_per_epoch=job.train_steps, val_samples=0, progress=False,
                            verbose=False)
    family.to(device)
    fwd = _forward_flops_per_image(family, cfg.image_size, device)  # before fit: count on the uncompiled module
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result = fit(family, train_cfg, data)  # epoch 1 warms up (allocator, cudnn autotune, compile)
    row: dict[str, Any] = {
        "preset": job.preset, "params_M": round(family.parameter_counts()["total"] / 1e6, 2),
        "image_size": cfg.image_size, "batch": job.batch_size, "device": device,
        "precision": "bf16" if device.startswith("cuda") else "fp32",
        "train_img_s": round(result.history[-1]["images_per_second"], 1),
        "peak_mem_MB": round(_peak_memory_mb(device), 1),
    }
    row["fwd_GFLOP_per_img"] = round(fwd / 1e9, 3)
    row["train_TFLOP_s"] = round(3 * fwd * row["train_img_s"] / 1e12, 3)
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        row["gpu"] = name
        row["pct_of_bf16_peak"] = round(100 * row["train_TFLOP_s"] / peak, 1) if peak else None

    levels = np.random.default_rng(0).integers(0, 6, (job.sample_batch, 5))
    nfe_per_step = 1 if job.guidance_scale == 1.0 else 2
    row["sampling"] = {}
    for sampler in job.samplers:
        generate(family, levels[:2], None, job.guidance_scale, 2, seed=0, scheduler=sampler)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        generate(family, levels, None, job.guidance_scale, job.sample_steps, seed=0, scheduler=sampler,
                 batch_size=job.sample_batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        row["sampling"][sampler] = {"img_s": round(job.sample_batch / seconds, 2),
                                    "nfe_per_img": nfe_per_step * job.sample_steps}
    return row


def _run_isolated(job: BenchJob) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(run_job, job).result()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--presets", default=None,
                   help="comma-separated DDPM presets (default: cpu presets; on GPU also study-small,study-large)")
    p.add_argument("--samplers", default="ddpm,ddim,dpm++", help="comma-separated samplers")
    p.add_argument("--batch-size", type=int, default=32, help="training batch for CPU presets")
    p.add_argument("--gpu-batch-sizes", default="32,128", help="training batches for the study presets on GPU")
    p.add_argument("--train-steps", type=int, default=20, help="timed optimizer steps (after as many warm-up steps)")
    p.add_argument("--sample-batch", type=int, default=16, help="images per sampling run")
    p.add_argument("--sample-steps", type=int, default=20, help="sampler steps")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="CFG scale while sampling")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (GPU only)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    return p.parse_args(argv)


def _jobs(args: argparse.Namespace, device: str) -> list[BenchJob]:
    from models.ddpm import PRESETS
    from models.errors import ConfigError
    from models.schedulers import SAMPLERS

    gpu = device.startswith("cuda")
    presets = args.presets.split(",") if args.presets else [*CPU_PRESETS, *(GPU_PRESETS if gpu else ())]
    samplers = tuple(args.samplers.split(","))
    for name in presets:
        if name not in PRESETS:
            raise ConfigError(f"unknown ddpm preset {name!r}; choose from {sorted(PRESETS)}")
    for name in samplers:
        if name not in SAMPLERS:
            raise ConfigError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    if min(args.train_steps, args.sample_batch, args.sample_steps, args.batch_size) < 1:
        raise ConfigError("--batch-size, --train-steps, --sample-batch and --sample-steps must be >= 1")
    base = BenchJob("", args.batch_size, args.train_steps, samplers, args.sample_batch, args.sample_steps,
                    args.guidance_scale, device, args.compile, args.threads)
    jobs = []
    for name in presets:
        if name in GPU_PRESETS and not gpu:
            print(f"note: {name} runs at batch {args.batch_size} on this CPU; it is meant for a GPU", flush=True)
        batches = [int(b) for b in args.gpu_batch_sizes.split(",")] if (gpu and name in GPU_PRESETS) else \
            [args.batch_size]
        jobs += [replace(base, preset=name, batch_size=b) for b in batches]
    return jobs


def _print_row(row: dict[str, Any]) -> None:
    flops = f"  {row['train_TFLOP_s']:.2f} TFLOP/s" if row["device"].startswith("cuda") else ""
    pct = f" ({row['pct_of_bf16_peak']}% of bf16 peak)" if row.get("pct_of_bf16_peak") is not None else ""
    print(f"{row['preset']:12s} {row['params_M']:7.2f}M {row['image_size']:3d}px batch {row['batch']:4d} "
          f"{row['precision']}: train {row['train_img_s']:8.1f} img/s  peak {row['peak_mem_MB']:8.0f} MB  "
          f"fwd {row['fwd_GFLOP_per_img']:.3f} GFLOP/img{flops}{pct}", flush=True)
    for sampler, s in row["sampling"].items():
        print(f"{'':12s}   sample {sampler:6s} {s['img_s']:8.2f} img/s  NFE/img {s['nfe_per_img']}", flush=True)


def main(argv: list[str] | None = None) -> None:
    import torch

    from models.errors import ConfigError

    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA GPU is visible; use --device cpu or auto")
        jobs = _jobs(args, device)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    print(f"device {device}; torch threads {args.threads or torch.get_num_threads()}; "
          f"sampling {args.sample_batch} images x {args.sample_steps} steps at guidance {args.guidance_scale}",
          flush=True)
    rows = []
    for job in jobs:
        row = _run_isolated(job)
        _print_row(row)
        rows.append(row)
    if args.json:
        from data.io import atomic_write_text

        atomic_write_text(args.json, json.dumps({"jobs": [asdict(j) for j in jobs], "rows": rows}, indent=2))

