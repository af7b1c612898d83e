"""CPU speed against the machine's own limit: `python -m models.bench.cpu`.

One run, one U-Net (the cpu-demo DDPM: models' `cpu-16` preset, 1.20M parameters, 16 px), batch 32:

* the machine's peak, measured: the larger of a big torch.mm and a big 3x3 convolution, in fp32 and in bf16 (GFLOP/s);
* training img/s and achieved GFLOP/s of: a bare PyTorch loop (forward, MSE, backward, AdamW step -- the
  reference), the engine (`models.engine.fit`, EMA + clipping + per-sample noise) eager fp32, and the engine
  with each CPU option of TrainConfig alone (compile, channels_last, bf16) and with all of them;
* sampling img/s (DPM-Solver++, classifier-free guidance) eager fp32 and with the options.

FLOPs: one training step's FLOPs counted by torch.utils.flop_counter.FlopCounterMode on the bare loop
(forward + backward; the optimizer and elementwise work are not counted, as is usual), divided by the
measured step time. The gap to the limit is then achieved / peak, both measured here.

Every figure depends on the load: the run prints `os.getloadavg()` at its start and end; compare only rows
of one run. Measured figures are in docs/measurements.md; the defaults they chose are models.runtime.CPU_AUTO.

`--study-scale`: the study's models at real size with random weights, each path once at 64x64 on this
machine (not a test: minutes and >10 GB): one training step and one sampling step of `study-large` and
`study-small` DDPM at micro-batch `--micro-batch` (default 4: batch 32 in fp32 needs >17 GB on a CPU), and one
LoRA training step and one sampling step of the full-size SD 2.x U-Net (865.91M, built from its config) with an
SD-Nano-shaped VAE and text encoder built from configs. Prints seconds, peak RSS and FLOPs per image.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from data.cli import first_line
from models.bench import random_faces


def machine_load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def conv_peak_gflops(dtype: torch.dtype, repeats: int = 5) -> float:
    """Best of `repeats` timed 3x3 convolutions (batch 64, 128 -> 128 channels, 32x32: 2 * 64 * 128 * 128 * 9 * 32 * 32
    FLOPs) in `dtype`, after one warm-up. oneDNN's convolutions can beat torch.mm's fp32 path by 2x where MKL does not
    use the CPU's widest vector units (seen on AMD EPYC), so the U-Net's own kind of operation is the fairer limit."""
    x = torch.randn(64, 128, 32, 32).to(dtype)
    w = torch.randn(128, 128, 3, 3).to(dtype)
    F.conv2d(x, w, padding=1)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        F.conv2d(x, w, padding=1)
        best = min(best, time.perf_counter() - start)
    return 2 * 64 * 128 * 128 * 9 * 32 * 32 / best / 1e9


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best of `repeats` timed n x n x n torch.mm (2 n^3 FLOPs) in `dtype`, after one warm-up."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _family(preset: str):
    from models.families import build_family, family_config

    return build_family("ddpm", family_config("ddpm", preset), seed=0)


def _bare_step(family, x0: torch.Tensor, cond: torch.Tensor, optimizer, amp: torch.dtype | None) -> None:
    sched = family.noise_scheduler
    noise = torch.randn_like(x0)
    t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],))
    noisy = sched.add_noise(x0, noise, t)
    ctx = torch.autocast("cpu", dtype=amp) if amp is not None else contextlib.nullcontext()
    with ctx:
        pred = family.predict(noisy, t, {"cond": cond})
    loss = F.mse_loss(pred.float(), noise)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class BareLoop:
    """A plain eager fp32 loop on one fixed batch: forward, MSE, backward, AdamW (the reference)."""

    def __init__(self, preset: str, batch: int):
        self.family = _family(preset)
        self.family.module.train()
        data = random_faces(batch, self.family.config.image_size)
        self.x0 = torch.stack([d["image"] for d in data])
        self.cond = torch.stack([d["cond"] for d in data])
        self.optimizer = torch.optim.AdamW(self.family.module.parameters(), lr=1e-4)

    def flops_per_step(self) -> int:
        with FlopCounterMode(display=False) as counter:
            _bare_step(self.family, self.x0, self.cond, self.optimizer, None)
        return counter.get_total_flops()

    def train(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            _bare_step(self.family, self.x0, self.cond, self.optimizer, None)
        return self.x0.shape[0] * steps / (time.perf_counter() - start)


class EngineVariant:
    """The engine (`fit`) with some CPU options on one family, kept across rounds (compiled once)."""

    def __init__(self, preset: str, batch: int, steps: int, compile: bool, channels_last: bool, bf16: bool):
        from models.engine import TrainConfig

        self.family = _family(preset)
        self.bf16 = bf16
        self.data = random_faces(batch * steps, self.family.config.image_size)
        self.cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-4, device="cpu", compile=compile,
                               channels_last=channels_last, mixed_precision="bf16" if bf16 else "no",
                               max_steps_per_epoch=steps, val_samples=0, progress=False, verbose=False)

    def train(self) -> float:
        from models.engine import fit

        return fit(self.family, self.cfg, self.data, resume=False).history[-1]["images_per_second"]

    def sample(self, n: int, steps: int) -> float:
        import numpy as np

        from models.sampling import generate

        levels = np.random.default_rng(0).integers(0, 6, (n, 5))
        start = time.perf_counter()
        generate(self.family, levels, None, 3.0, steps, seed=0, scheduler="dpm++", batch_size=n,
                 precision="bf16" if self.bf16 else "no")
        return n / (time.perf_counter() - start)


VARIANTS = (  # name, compile, channels_last, bf16
    ("engine eager fp32", False, False, False),
    ("engine compile", True, False, False),
    ("engine channels_last", False, True, False),
    ("engine bf16", False, False, True),
    ("engine all three", True, True, True),
)


def median_of(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def bench_cpu(args: argparse.Namespace) -> None:
    from models.runtime import configure_torch, cpu_supports_bf16

    configure_torch(args.threads)
    print(f"{machine_load()} at start; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"native bf16: {cpu_supports_bf16()}; preset {args.preset}, batch {args.batch_size}, {args.rounds} "
          f"interleaved rounds of {args.steps} steps per variant (median, min-max); sampling {args.sample_batch} "
          f"images x {args.sample_steps} dpm++ steps, CFG 3", flush=True)
    mm32, mm16 = matmul_peak_gflops(torch.float32), matmul_peak_gflops(torch.bfloat16)
    conv32, conv16 = conv_peak_gflops(torch.float32), conv_peak_gflops(torch.bfloat16)
    peak32, peak16 = max(mm32, conv32), max(mm16, conv16)
    print(f"measured peak: 2048^3 torch.mm fp32 {mm32:.1f} / bf16 {mm16:.1f} GFLOP/s, 3x3 conv (64x128x32x32) fp32 "
          f"{conv32:.1f} / bf16 {conv16:.1f} GFLOP/s; the larger of each is the peak below; {machine_load()}", flush=True)
    bare = BareLoop(args.preset, args.batch_size)
    per_img = bare.flops_per_step() / args.batch_size
    print(f"training FLOPs per image (forward + backward, FlopCounterMode): {per_img / 1e6:.1f} MFLOP", flush=True)
    chosen = [v for v in VARIANTS if not args.only or any(k in v[0] for k in args.only.split(","))]
    runners: dict[str, Any] = {"bare loop eager fp32": bare}
    for name, comp, cl, bf16 in chosen:  # build + warm up (compiles) every variant before any timing
        try:
            runner = EngineVariant(args.preset, args.batch_size, args.steps, comp, cl, bf16)
            start = time.perf_counter()
            runner.train()
            runner.sample(2, 2)
            print(f"{name:22s} warm-up (compile included) {time.perf_counter() - start:.1f} s", flush=True)
            runners[name] = runner
        except Exception as err:  # a failing option is a finding, not the end of the run
            print(f"{name:22s} FAILED: {type(err).__name__}: {first_line(err)[:200]}", flush=True)
    bare.train(2)
    train: dict[str, list[float]] = {k: [] for k in runners}
    sample: dict[str, list[float]] = {k: [] for k in runners if k != "bare loop eager fp32"}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            train[name].append(runner.train(args.steps) if isinstance(runner, BareLoop) else runner.train())
        for name in sample:
            sample[name].append(runners[name].sample(args.sample_batch, args.sample_steps))
    for name in runners:
        bf16 = "bf16" in name or "all" in name
        med = median_of(train[name])
        gflops = med * per_img / 1e9
        peak = peak16 if bf16 else peak32
        s = (f"  sample {median_of(sample[name]):6.1f} img/s ({min(sample[name]):.1f}-{max(sample[name]):.1f})"
             if name in sample else "")
        print(f"{name:22s} train {med:7.1f} img/s ({min(train[name]):.1f}-{max(train[name]):.1f})  {gflops:6.1f} "
              f"GFLOP/s = {100 * gflops / peak:5.1f}% of {'bf16' if bf16 else 'fp32'} peak{s}", flush=True)
    print(f"{machine_load()} at end", flush=True)


# --------------------------------------------------------------------------------------------------
# --study-scale
# --------------------------------------------------------------------------------------------------
def _timed(fn) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _ddpm_study(preset: str, micro_batch: int) -> None:
    from models.engine import TrainConfig, fit
    from models.sampling import generate

    family = _family(preset)
    size = family.config.image_size
    params = family.parameter_counts()["total"] / 1e6
    data = random_faces(micro_batch, size)
    cfg = TrainConfig(epochs=1, batch_size=micro_batch, lr=1e-4, device="cpu", mixed_precision="no",
                      channels_last=False, max_steps_per_epoch=1, val_samples=0, progress=False, verbose=False)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        family.predict(x, torch.tensor([500]), {"cond": torch.zeros(1, 30)})
    fwd = counter.get_total_flops()
    _, train_s = _timed(lambda: fit(family, cfg, data))
    import numpy as np

    levels = np.random.default_rng(0).integers(0, 6, (micro_batch, 5))
    _, sample_s = _timed(lambda: generate(family, levels, None, 3.0, 1, seed=0, scheduler="ddim",
                                          batch_size=micro_batch))
    print(f"ddpm {preset:12s} {params:7.2f}M {size}px micro-batch {micro_batch} fp32: train step {train_s:6.1f} s, "
          f"sample step (CFG, {2 * micro_batch} U-Net passes) {sample_s:6.1f} s; fwd {fwd / 1e9:.1f} GFLOP/img, "
          f"train ~{3 * fwd / 1e9:.1f} GFLOP/img; peak RSS {_peak_rss_mb():.0f} MB; {machine_load()}", flush=True)


def build_sd_study_family(captions: list[str], rank: int = 4):
    """An SDLoRAFamily at the study's size with random weights, built from configs (no download): the SD 2.x
    U-Net (models.sd_lora.SD2_UNET_CONFIG, 865.91M), an SD-Nano-shaped VAE (SD 2.x AutoencoderKL: 128-256-512-512,
    two blocks per level, 4 latent channels, 8x down) and text encoder (OpenCLIP ViT-H text tower as SD 2.x: width
    1024, 23 layers, 16 heads, 77 tokens, vocab 49408); the tokenizer is trained on `captions` (ids < 49408)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from models.sd_lora import SD2_UNET_CONFIG, SDLoRAFamily, lora_config

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer().train_new_from_iterator(captions, vocab_size=1000)
    tokenizer.model_max_length = 77
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, projection_dim=512, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, norm_num_groups=32, sample_size=128, scaling_factor=0.18215)
    unet = UNet2DConditionModel(**SD2_UNET_CONFIG)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    note = "random weights, SD 2.x U-Net + SD-Nano-shaped VAE/text encoder from configs"
    family = SDLoRAFamily(lora_config("study", rank=rank), base=(pipe, note), verbose=False)
    return family, note


def _sd_study(micro_batch: int) -> None:
    from models.engine import TrainConfig, fit
    from models.sampling import generate

    captions = [f"a face, smiling level {i % 6}, bangs level {i % 5}" for i in range(64)]
    family, note = build_sd_study_family(captions)
    counts = family.parameter_counts()
    size = family.config.image_size
    data = random_faces(micro_batch, size)
    for i, item in enumerate(data):
        item["caption"] = f"a face, smiling level {i % 6}"
    cfg = TrainConfig(epochs=1, batch_size=micro_batch, lr=1e-4, device="cpu", mixed_precision="no",
                      channels_last=False, max_steps_per_epoch=1, val_samples=0, progress=False, verbose=False)
    batch = {"image": torch.stack([d["image"] for d in data]), "caption": [d["caption"] for d in data]}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        x0, cond = family.training_inputs(batch, torch.zeros(micro_batch, dtype=torch.bool), torch.Generator())
        family.predict(torch.randn_like(x0[:1]), torch.tensor([500]),
                       {k: (v[:1] if torch.is_tensor(v) else v) for k, v in cond.items()})
    fwd = counter.get_total_flops()  # VAE encode + text encode of the batch, plus one U-Net pass of one latent
    _, train_s = _timed(lambda: fit(family, cfg, data))
    captions = [d["caption"] for d in data]
    _, sample_s = _timed(lambda: generate(family, None, captions, 3.0, 1, seed=0, scheduler="ddim"))
    print(f"sd-lora SD2.x U-Net {counts['total'] / 1e6:7.2f}M total, {counts['trainable'] / 1e6:.2f}M LoRA, {size}px "
          f"({note}) micro-batch {micro_batch} fp32: train step {train_s:6.1f} s, sample step (CFG) {sample_s:6.1f} s; "
          f"counted {fwd / 1e9:.1f} GFLOP (encoders on the batch + one U-Net pass); peak RSS {_peak_rss_mb():.0f} MB; "
          f"{machine_load()}", flush=True)


def study_scale(args: argparse.Namespace) -> None:
    from models.runtime import configure_torch

    configure_torch(args.threads)
    print(f"{machine_load()} at start; {torch.get_num_threads()} threads; random weights; one step of each path", flush=True)
    for what in args.paths.split(","):
        try:
            if what == "sd":
                _sd_study(args.micro_batch)
            else:
                _ddpm_study(what, args.micro_batch)
        except Exception as err:
            print(f"{what}: FAILED {type(err).__name__}: {first_line(err)[:300]}",
                  flush=True)
            raise


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.bench.cpu", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="cpu-16", help="DDPM preset")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    p.add_argument("--sample-batch", type=int, default=16)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--only", default=None, help="comma-separated substrings of the engine variants to run")
    p.add_argument("--study-scale", action="store_true", help="the study's models at real size, one step each")
    p.add_argument("--paths", default="study-small,study-large,sd", help="--study-scale: which models")
    p.add_argument("--micro-batch", type=int, default=4, help="--study-scale: images per step")
    args = p.parse_args(argv)
    if min(args.batch_size, args.steps, args.rounds, args.sample_batch, args.sample_steps, args.micro_batch) < 1:
        sys.exit("error: sizes and steps must be >= 1")
    if args.study_scale:
        study_scale(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
