"""The study-scale GPU benchmark: `python -m models.bench.gpu --json bench.json` (`--tiny`: the same parts at CPU
size, to check the script where no GPU is).

    peak     a bf16 8192^3 matrix product's TFLOP/s, measured: the denominator of every MFU
    train    study-small and study-large DDPM through the real engine (`fit`: AdamW + EMA, bf16 autocast,
             channels_last, torch.compile) and the SD 2.x U-Net with LoRA r = 4 (random weights, real sizes: a
             64 px image is an 8 x 8 latent, a caption 77 x 1024) at batch 32: img/s, achieved TFLOP/s (FLOPs of
             one training step counted with torch.utils.flop_counter), MFU, peak memory, compile warm-up
    sample   full-chain DDPM sampling of 100 images with guidance at T = 1,000 and 10,000; a chain that would
             overrun --sample-budget-s is not run: its row says so and gives the projection from the measured
             seconds per step
    loader   the `study` augmentation at 64 px through the DataLoader with N workers (and with none), img/s,
             against the trainer's img/s
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_memory_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def matmul_peak_tflops(device: str, n: int, repeats: int = 10) -> float:
    """bf16 (CUDA) / fp32 (CPU) n x n x n matrix products per second, in TFLOP/s (mean of `repeats` after 3)."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def _step_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def ddpm_row(preset: str, batch: int, steps: int, device: str, compile_: bool, size: int | None) -> dict[str, Any]:
    """The real engine on a study DDPM preset: two capped epochs, the first of which warms up (and compiles)."""
    from models.bench import _forward_flops_per_image, random_faces
    from models.engine import TrainConfig, fit
    from models.families import build_family, family_config

    overrides = {"image_size": size} if size else {}
    family = build_family("ddpm", family_config("ddpm", preset, **overrides), seed=0)
    image_size = family.config.image_size
    family.to(device)
    fwd = _forward_flops_per_image(family, image_size, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    marks = [time.perf_counter()]
    cfg = TrainConfig(epochs=2, batch_size=batch, lr=1e-4, device=device, compile=compile_, channels_last=None,
                      max_steps_per_epoch=steps, val_samples=0, progress=False, verbose=False)

    def mark(report) -> bool:
        marks.append(time.perf_counter())
        return False  # never stop early

    result = fit(family, cfg, random_faces(batch * steps, image_size), on_epoch=mark)
    img_s = result.history[-1]["images_per_second"]
    epochs = [b - a for a, b in zip(marks, marks[1:])]
    return {"model": f"ddpm {preset}", "batch": batch, "image_size": image_size, "train_img_s": round(img_s, 1),
            "train_TFLOP_s": round(3 * fwd * img_s / 1e12, 3), "peak_mem_GB": _peak_memory_gb(device),
            "compile_warmup_s": round(epochs[0] - epochs[1], 1) if compile_ and len(epochs) == 2 else None,
            "params_M": round(family.parameter_counts()["total"] / 1e6, 1)}


def sd_unet_lora_row(batch: int, steps: int, device: str, compile_: bool, tiny: bool) -> dict[str, Any]:
    """SD 2.x's U-Net (random weights) with LoRA r = 4 on to_q/k/v/out: the adapters' training step on 64 px
    images' latents and 77-token caption states, bf16 autocast on CUDA, channels_last, fused AdamW."""
    from diffusers import UNet2DConditionModel

    from models.sd_lora import SD2_UNET_CONFIG, add_lora

    config = dict(SD2_UNET_CONFIG)
    if tiny:  # a small U-Net of the same layout, for the CPU check
        config.update(block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, attention_head_dim=(2, 4, 4, 4),
                      layers_per_block=1)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).to(device)
    add_lora(unet, 4)
    cuda = device.startswith("cuda")
    unet = unet.to(memory_format=torch.channels_last) if cuda else unet
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    latents = torch.randn(batch, 4, 8, 8, device=device)
    text = torch.randn(batch, 77, config["cross_attention_dim"], device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    forward = torch.compile(unet) if compile_ else unet

    def step(model=forward) -> None:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.mse_loss(model(latents, t, text).sample.float(), latents)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops = _step_flops(lambda: step(unet))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(2):  # warm-up (and compile)
        step()
    _sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    return {"model": "sd2-unet lora r=4", "batch": batch, "image_size": 64, "train_img_s": round(batch / seconds, 1),
            "train_TFLOP_s": round(flops / seconds / 1e12, 3), "peak_mem_GB": _peak_memory_gb(device),
            "compile_warmup_s": round(warm - 2 * seconds, 1) if compile_ else None,
            "params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
            "trainable_M": round(sum(p.numel() for p in params) / 1e6, 3)}


def sample_rows(preset: str, n: int, chains: tuple[int, ...], device: str, budget_s: float,
                size: int | None) -> list[dict[str, Any]]:
    """Full-chain DDPM sampling of `n` images (guidance 3) per T in `chains`; one that would overrun `budget_s`
    (projected from the seconds per step measured so far) is reported, not run."""
    from models.families import build_family, family_config
    from models.sampling import generate

    levels = np.random.default_rng(0).integers(0, 6, (n, 5))
    rows, per_step, spent = [], None, 0.0
    for T in chains:
        overrides = {"image_size": size} if size else {}
        family = build_family("ddpm", family_config("ddpm", preset, num_train_timesteps=T, **overrides), seed=0)
        family.to(device)
        row: dict[str, Any] = {"model": f"ddpm {preset}", "images": n, "T": T, "sampler": "ddpm"}
        if per_step is not None and per_step * T > budget_s - spent:
            rows.append({**row, "skipped": f"projected {per_step * T:.0f} s over the {budget_s:.0f} s budget",
                         "projected_s": round(per_step * T, 1)})
            continue
        generate(family, levels[:2], None, 3.0, 2, seed=0, scheduler="ddpm", precision="auto")  # warm-up
        _sync(device)
        start = time.perf_counter()
        generate(family, levels, None, 3.0, 0, seed=0, scheduler="ddpm", precision="auto", batch_size=n)
        _sync(device)
        seconds = time.perf_counter() - start
        spent, per_step = spent + seconds, seconds / T
        rows.append({**row, "seconds": round(seconds, 2), "img_s": round(n / seconds, 2)})
    return rows


def loader_rows(size: int, n_train: int, batch: int, workers: int, batches: int) -> list[dict[str, Any]]:
    """The study augmentation through the DataLoader with `workers` worker processes and with none."""
    from torch.utils.data import DataLoader

    from data.dataset import FaceDataset
    from data.synthetic import toy_cache

    root = toy_cache(size=size, n_train=n_train, n_val=batch, n_test=8, progress=False)
    rows = []
    for n in sorted({0, workers}):
        ds = FaceDataset(root, "train", augment="study")
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=n, drop_last=True,
                            generator=torch.Generator().manual_seed(0))
        it, start, seen = iter(loader), None, 0
        for i, b in enumerate(it):
            if i == 1:  # after the first batch: workers started
                start = time.perf_counter()
            elif i > 1:
                seen += len(b["image"])
            if i >= batches:
                break
        rows.append({"workers": n, "image_size": size, "augment": "study",
                     "img_s": round(seen / (time.perf_counter() - start), 1) if seen else None})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.bench.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU size: cpu-16 / 16 px / a small U-Net / few steps")
    p.add_argument("--parts", default="peak,train,sample,loader", help="which parts to run (comma-separated)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    p.add_argument("--batch", type=int, default=32, help="training batch")
    p.add_argument("--no-compile", action="store_true", help="do not torch.compile (compile is on for CUDA)")
    p.add_argument("--sample-images", type=int, default=100, help="images per full-chain sampling run")
    p.add_argument("--chains", default="1000,10000", help="T of each full-chain sampling run")
    p.add_argument("--sample-budget-s", type=float, default=120, help="seconds all sampling runs may take")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="DataLoader workers")
    p.add_argument("--json", type=Path, default=None, help="write the rows to this JSON file")
    return p.parse_args(argv)


def run(args: argparse.Namespace, save=lambda out: None) -> dict[str, Any]:
    """Every part asked for, `save`d after each row (a run stopped at its time limit keeps what it measured)."""
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    compile_ = device == "cuda" and not args.no_compile
    parts, size = set(args.parts.split(",")), 16 if args.tiny else None
    presets = ("cpu-16",) if args.tiny else ("study-small", "study-large")
    out: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                           "torch": torch.__version__, "tiny": args.tiny, "compile": compile_}
    peak = None
    if "peak" in parts:
        peak = matmul_peak_tflops(device, 1024 if args.tiny else 8192)
        out["peak_TFLOP_s"] = round(peak, 1)
        save(out)
        print(f"peak: {peak:.1f} TFLOP/s ({'bf16' if device == 'cuda' else 'fp32'} matrix product)", flush=True)
    if "train" in parts:
        out["train"] = []
        jobs = [lambda p=p: ddpm_row(p, args.batch, args.steps, device, compile_, size) for p in presets]
        jobs.append(lambda: sd_unet_lora_row(args.batch, args.steps, device, compile_, args.tiny))
        for job in jobs:
            row = job()
            row["MFU_pct"] = round(100 * row["train_TFLOP_s"] / peak, 1) if peak else None
            out["train"].append(row)
            save(out)
            print(f"train: {json.dumps(row)}", flush=True)
    if "sample" in parts:
        chains = tuple(int(c) for c in args.chains.split(","))
        out["sample"] = sample_rows(presets[0], args.sample_images, chains, device, args.sample_budget_s, size)
        save(out)
        for row in out["sample"]:
            print(f"sample: {json.dumps(row)}", flush=True)
    if "loader" in parts:
        out["loader"] = loader_rows(size or 64, 256 if args.tiny else 4096, args.batch, args.workers,
                                    8 if args.tiny else 60)
        trainer = next((r["train_img_s"] for r in out.get("train", [])), None)
        for row in out["loader"]:
            row["trainer_img_s"] = trainer
            print(f"loader: {json.dumps(row)}", flush=True)
        save(out)
    return out


def main(argv: list[str] | None = None) -> None:
    from data.io import atomic_write_text

    args = parse_args(argv)

    def save(out: dict[str, Any]) -> None:
        if args.json:
            atomic_write_text(args.json, json.dumps(out, indent=2))

    run(args, save)


if __name__ == "__main__":
    main()
