"""The GPU paths run for real on CUDA (`make gpu-check` on a GPU machine runs `pytest -m gpu`). They skip where no
CUDA GPU is visible, in CI too: CI has none, and the CPU tests check these paths' logic (tests/test_gpu_paths.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.engine import TrainConfig, fit
from models.runtime import cuda_supports_bf16
from tests.models_helpers import RandomFaces, flat_params, micro_family

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible (the gpu tests run on one)")]

CUDA = TrainConfig(epochs=1, batch_size=16, lr=1e-3, progress=False, val_samples=0, device="cuda")


def test_an_engine_epoch_in_bf16_channels_last_and_compiled():
    family = micro_family()
    cfg = dataclasses.replace(CUDA, mixed_precision="bf16", channels_last=True, compile=True, epochs=2)
    result = fit(family, cfg, RandomFaces(64))
    assert result.epochs_completed == 2 and all(np.isfinite(h["train_loss"]) for h in result.history)
    assert {p.device.type for p in family.module.parameters()} == {"cuda"}
    assert result.history[-1]["images_per_second"] > 0


def test_resume_on_cuda_continues_exactly_rng_included(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # bit-equal convolutions in both runs
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = dataclasses.replace(CUDA, epochs=2, mixed_precision="no")
    data = RandomFaces(48)
    straight_family = micro_family()
    straight = fit(straight_family, cfg, data)
    expected, expected_rng = flat_params(straight_family.module), torch.cuda.get_rng_state()

    fit(micro_family(), cfg, data, checkpoint_dir=tmp_path, on_epoch=lambda r: r.epoch == 0)
    torch.cuda.manual_seed(12345)  # a new process's CUDA generator: the checkpoint must restore it
    resumed_family = micro_family(seed=99)
    resumed = fit(resumed_family, cfg, data, checkpoint_dir=tmp_path)
    assert resumed.step == straight.step
    torch.testing.assert_close(flat_params(resumed_family.module), expected, atol=1e-6, rtol=0)
    assert torch.equal(torch.cuda.get_rng_state(), expected_rng)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_sampling_in_bf16_on_cuda(sampler):
    from models.sampling import generate, sampling_bf16

    family = micro_family()
    family.to("cuda")
    levels = np.random.default_rng(0).integers(0, 6, (8, 5))
    images = generate(family, levels, None, 3.0, 8, seed=0, scheduler=sampler, precision="bf16")
    assert images.shape == (8, 16, 16, 3) and images.dtype == np.uint8 and images.std() > 0
    assert sampling_bf16("auto", "cuda") == cuda_supports_bf16("cuda")


def test_the_estimator_trains_and_scores_on_cuda(data, tmp_path):
    from evaluation.config import EvalConfig
    from evaluation.estimator import estimator_preset
    from evaluation.scorer import Scorer
    from evaluation.train_estimator import train_estimator

    report = train_estimator(data, estimator_preset("small", full_epochs=1), tmp_path / "est", progress=False,
                             device="cuda")
    assert report  # the training run's report
    scorer = Scorer(EvalConfig(estimator=str(tmp_path / "est"), mtcnn=False, clip_model=None, device="cuda"))
    assert scorer.device.type == "cuda"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    result = scorer.score(images, rng.integers(0, 6, (32, 5)), real_images=images[::-1].copy())
    assert np.isfinite(result.values["fd_estimator"]) and 0 <= result.values["est_acc"] <= 1


def test_a_lora_step_on_the_tiny_sd_base_on_cuda():
    from models.sd_lora import SDLoRAFamily, lora_config

    family = SDLoRAFamily(lora_config("test"), verbose=False)
    before = {n: p.detach().clone() for n, p in family.trainable_parameters().items()}
    result = fit(family, dataclasses.replace(CUDA, batch_size=8, max_steps_per_epoch=2), RandomFaces(16))
    assert result.step == 2 and np.isfinite(result.history[-1]["train_loss"])
    after = family.trainable_parameters()
    assert {p.device.type for p in after.values()} == {"cuda"}
    assert any(not torch.equal(before[n].cuda(), p) for n, p in after.items())


def test_the_mlflow_pyfunc_predicts_on_cuda(tmp_path):
    import mlflow
    import pandas as pd

    from models.mlflow_model import save_model

    family = micro_family()
    family.save_pretrained(tmp_path / "pipeline")
    save_model(tmp_path / "model", tmp_path / "pipeline", guidance_scale=3.0, sampler="ddim", num_inference_steps=4,
               precision="auto")
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    assert model.unwrap_python_model().pipe.device.type == "cuda"
    out = model.predict(pd.DataFrame({"bangs": [5, 0, 3]}))
    assert len(out) == 3 and list(out["bangs"]) == [5, 0, 3]
