"""The ONE device and precision policy, and process-wide torch settings.

Every place that builds a model, a pipeline, an estimator or a metric takes its device from
`resolve_device`, so "auto" means the same thing everywhere: the GPU Ray (or the process) was given,
else the CPU. What "auto" precision and memory format mean is one table, `CPU_AUTO`, per workload:
the training engine, sampling (the sweep's and the served model's) and the estimator's training
ask `use_bf16` / `use_channels_last` with their workload's name. Measurements: docs/.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from data.catalogue import MIXED_PRECISIONS
from models.errors import ConfigError

Workload = Literal["train", "sample", "estimator"]


@dataclass(frozen=True)
class CpuAuto:
    """What "auto" turns on for a workload on a CPU (on cuda "auto" is channels_last, and bf16 autocast where the GPU
    has native bf16: `cuda_supports_bf16`)."""

    bf16: bool  # only where the CPU has native bf16 (cpu_supports_bf16)
    channels_last: bool


CPU_AUTO: dict[str, CpuAuto] = {
    # bf16 pays only 8-15 % here, and its rounding breaks the engine's fp32 equivalences (grad_accum 4 x 8 = batch
    # 32, two DDP workers = one process) and blurs the held-out loss CPU presets rank trials by; channels_last: no gain
    "train": CpuAuto(bf16=False, channels_last=False),
    # bf16 1.5-1.7x in 64-image batches at no measured quality cost, and sampling promises no bit-level equivalence
    "sample": CpuAuto(bf16=True, channels_last=False),
    # bf16 + channels_last 1.39x for the small estimator, accuracy within its run-to-run spread
    "estimator": CpuAuto(bf16=True, channels_last=True),
}


def use_bf16(mode: str, device: torch.device | str, workload: Workload) -> bool:
    """Whether `workload` with `mixed_precision=mode` ("auto" | "bf16" | "no") autocasts to bf16 on `device`."""
    if mode not in MIXED_PRECISIONS:
        raise ConfigError(f"mixed precision must be one of {', '.join(MIXED_PRECISIONS)}, got {mode!r}")
    if mode != "auto":
        return mode == "bf16"
    device = torch.device(device)
    if device.type == "cuda":
        return cuda_supports_bf16(device)
    return device.type == "cpu" and CPU_AUTO[workload].bf16 and cpu_supports_bf16()


def autocast_dtype(mode: str, device: torch.device | str, workload: Workload) -> torch.dtype | None:
    """torch.bfloat16 where `use_bf16`, else None (fp32)."""
    return torch.bfloat16 if use_bf16(mode, device, workload) else None


def use_channels_last(setting: bool | None, device: torch.device | str, workload: Workload) -> bool:
    """Whether `workload` with `channels_last=setting` (None: auto) runs in the channels_last format on `device`."""
    if setting is not None:
        return setting
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and CPU_AUTO[workload].channels_last)


def configure_torch(threads: int | None = None) -> None:
    """Use `threads` torch threads (None or 0: torch's choice) and flush denormal floats to zero.

    Trained weights drive some activations into the denormal range, where CPU float math is ~20x
    slower (sampling a trained 16 px model took 72 s instead of 3 s); zero is as good as 1e-40 to a
    diffusion model. Two processes sharing two cores with several threads each ran 40-100x slower
    than with one thread each, hence the explicit thread count.
    """
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)


def cpu_supports_bf16() -> bool:
    """True where bf16 autocast on the CPU runs natively: oneDNN (mkldnn) is built in and the CPU has
    AVX512-BF16 or AMX-BF16 (/proc/cpuinfo flags). Elsewhere bf16 is emulated and slower than fp32, so
    `mixed_precision="auto"` never picks it there."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False


def cuda_supports_bf16(device: torch.device | str = "cuda") -> bool:
    """True where the GPU computes in bf16 natively: compute capability 8.0 or newer (A100, H100, RTX 30xx/40xx).
    Older GPUs (V100 7.0, T4 7.5) emulate bf16, slower than fp32, so "auto" never picks it there."""
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return major >= 8


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """"auto"/None -> cuda when a CUDA device is visible (inside a Ray task: the GPU it was given), else cpu.
    An explicit "cuda"/"cuda:N" without a visible GPU is a one-line ConfigError naming the fix."""
    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but no CUDA GPU is visible: use device 'auto' or 'cpu'")
    return device


def allow_hub_downloads() -> None:
    """Lift the package's offline default (models/__init__.py) for this process, e.g. for `--hub-download`.
    huggingface_hub read HF_HUB_OFFLINE when it was imported, so its constant changes with the variable."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "0"
    constants.HF_HUB_OFFLINE = False


__all__ = ["CPU_AUTO", "MIXED_PRECISIONS", "allow_hub_downloads", "autocast_dtype", "configure_torch",
           "cpu_supports_bf16", "cuda_supports_bf16", "resolve_device", "use_bf16", "use_channels_last"]
