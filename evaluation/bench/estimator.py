"""How fast the attribute estimator trains, per speed option: `python -m evaluation.bench.estimator`.

One run, one estimator (preset `small` by default: the ResNet the embedded default trains once, 16 px faces
upsampled to 32 px), its own batch size, the real training step (`evaluation.train_estimator.training_step`):
eager fp32, then each option of EstimatorConfig alone (channels_last, bf16 autocast, torch.compile) and all of
them -- img/s and achieved GFLOP/s against the machine's measured peak (the larger of a big torch.mm and a big
3x3 convolution, in fp32 and bf16: `models.bench.cpu`). FLOPs: one fp32 step counted by FlopCounterMode (forward +
backward). Rounds are interleaved and the median is printed; compare only rows of one run (the load is printed).
The defaults this chose are `models.runtime.CPU_AUTO["estimator"]`.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from data.cli import first_line
from evaluation.estimator import ESTIMATOR_PRESETS, build_estimator, estimator_preset
from evaluation.train_estimator import speed_options, training_step
from models.bench import random_faces
from models.bench.cpu import conv_peak_gflops, machine_load, matmul_peak_gflops, median_of

# (name, channels_last, bf16, compile)
VARIANTS = (
    ("eager fp32", False, False, False),
    ("channels_last", True, False, False),
    ("bf16 autocast", False, True, False),
    ("compile", False, False, True),
    ("bf16 + channels_last", True, True, False),
    ("all three", True, True, True),
)


def _batch(batch_size: int, size: int) -> dict:
    faces = random_faces(batch_size, size)
    return {"image": torch.stack([f["image"] for f in faces]), "levels": torch.stack([f["levels"] for f in faces])}


class Variant:
    """A freshly built estimator with one combination of the speed options, trained on one fixed batch."""

    def __init__(self, preset: str, batch: dict, channels_last: bool, bf16: bool, compile: bool):
        config = estimator_preset(preset, pretrained=None, mixed_precision="bf16" if bf16 else "no",
                                  channels_last=channels_last, compile=compile)
        torch.manual_seed(0)
        self.model, _ = build_estimator(config)
        self.device = torch.device("cpu")
        self.options = speed_options(config, self.device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.full_lr)
        self.batch = batch
        self.model.train()

    def steps(self, n: int) -> float:
        """Train n steps; images per second."""
        start = time.perf_counter()
        for _ in range(n):
            training_step(self.forward, self.batch, self.optimizer, self.device, self.options)
        return n * len(self.batch["image"]) / (time.perf_counter() - start)


def flops_per_image(preset: str, batch: dict) -> float:
    variant = Variant(preset, batch, False, False, False)
    with FlopCounterMode(display=False) as counter:
        variant.steps(1)
    return counter.get_total_flops() / len(batch["image"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evaluation.bench.estimator", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", choices=sorted(ESTIMATOR_PRESETS))
    p.add_argument("--size", type=int, default=16, help="face size in px before the estimator's resize")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round and variant")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", default=None, help="comma-separated substrings of the variant names to run")
    args = p.parse_args(argv)
    from models.runtime import configure_torch, cpu_supports_bf16

    configure_torch(args.threads)
    batch_size = args.batch_size or ESTIMATOR_PRESETS[args.preset].batch_size
    batch = _batch(batch_size, args.size)
    print(f"{machine_load()} at start; torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: "
          f"{cpu_supports_bf16()}; estimator {args.preset}, batch {batch_size} at {args.size} px, {args.rounds} "
          f"interleaved rounds of {args.steps} steps per variant (median, min-max)", flush=True)
    peak32 = max(matmul_peak_gflops(torch.float32), conv_peak_gflops(torch.float32))
    peak16 = max(matmul_peak_gflops(torch.bfloat16), conv_peak_gflops(torch.bfloat16))
    per_image = flops_per_image(args.preset, batch)
    print(f"measured peak fp32 {peak32:.1f} / bf16 {peak16:.1f} GFLOP/s; training {per_image / 1e6:.1f} MFLOP per "
          f"image (forward + backward)", flush=True)
    runners = {}
    for name, channels_last, bf16, compile in VARIANTS:
        if args.only and not any(k in name for k in args.only.split(",")):
            continue
        try:
            runner = Variant(args.preset, batch, channels_last, bf16, compile)
            start = time.perf_counter()
            runner.steps(3)
            print(f"{name:20s} warm-up (compile included) {time.perf_counter() - start:.1f} s", flush=True)
            runners[name] = (runner, bf16)
        except Exception as err:  # a failing option is a finding, not the end of the run
            print(f"{name:20s} FAILED: {type(err).__name__}: {first_line(err)[:200]}", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, (runner, _) in runners.items():
            rates[name].append(runner.steps(args.steps))
    base = median_of(rates["eager fp32"]) if "eager fp32" in rates else None
    for name, (_, bf16) in runners.items():
        median = median_of(rates[name])
        gflops = median * per_image / 1e9
        peak = peak16 if bf16 else peak32
        gain = f"  {median / base:.2f}x eager fp32" if base else ""
        print(f"{name:20s} train {median:7.1f} img/s ({min(rates[name]):.1f}-{max(rates[name]):.1f})  {gflops:6.1f} "
              f"GFLOP/s = {100 * gflops / peak:5.1f}% of {'bf16' if bf16 else 'fp32'} peak{gain}", flush=True)
    print(f"{machine_load()} at end", flush=True)


if __name__ == "__main__":
    main()
