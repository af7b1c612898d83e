"""The engine's CPU speed options: bf16 only where the CPU has it, channels_last / threads on request."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models.runtime as runtime
from models.engine import TrainConfig, fit
from models.errors import ConfigError
from models.runtime import CpuAuto, cpu_supports_bf16, use_bf16, use_channels_last
from tests.models_helpers import RandomFaces, micro_family


def test_cpu_bf16_detection_reads_the_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text()
    expected = torch.backends.mkldnn.is_available() and ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert cpu_supports_bf16() is bool(expected)


def test_auto_picks_bf16_on_the_cpu_only_where_supported_and_enabled(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # a GPU with native bf16
    assert use_bf16("bf16", "cpu", "train") and not use_bf16("no", "cpu", "train") and use_bf16("auto", "cuda", "train")
    for enabled in (False, True):
        for supported in (False, True):
            monkeypatch.setitem(runtime.CPU_AUTO, "train", CpuAuto(bf16=enabled, channels_last=False))
            monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda s=supported: s)
            assert use_bf16("auto", "cpu", "train") is (enabled and supported)


def test_channels_last_auto_and_forced(monkeypatch):
    monkeypatch.setitem(runtime.CPU_AUTO, "train", CpuAuto(bf16=False, channels_last=False))
    assert use_channels_last(None, "cuda", "train") and not use_channels_last(None, "cpu", "train")
    assert use_channels_last(True, "cpu", "train") and not use_channels_last(False, "cuda", "train")


def test_one_policy_keeps_each_workloads_cpu_defaults():
    expected = {"train": CpuAuto(bf16=False, channels_last=False),
                "sample": CpuAuto(bf16=True, channels_last=False),
                "estimator": CpuAuto(bf16=True, channels_last=True)}
    assert dict(runtime.CPU_AUTO) == expected


def test_cpu_options_train_and_threads_apply():
    family = micro_family()
    before = torch.get_num_threads()
    try:
        cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, progress=False, val_samples=0, device="cpu",
                          channels_last=True, mixed_precision="bf16", threads=1, max_steps_per_epoch=2)
        result = fit(family, cfg, RandomFaces(16, family.config.image_size))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert result.step == 2 and torch.isfinite(torch.tensor(result.history[-1]["train_loss"]))
    conv = next(m for m in family.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="threads"):
        TrainConfig(threads=0)
