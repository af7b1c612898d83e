"""Process-wide torch settings: threads, denormal flushing, and the ONE device resolver.

Every place that builds a model, a pipeline, an estimator or a metric takes its device from
`resolve_device`, so "auto" means the same thing everywhere: the GPU Ray (or the process) was given,
else the CPU.
"""

from __future__ import annotations

import torch

from models.errors import ConfigError


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


__all__ = ["configure_torch", "cpu_supports_bf16", "resolve_device"]
