"""End to end on the synthetic faces: a tiny DDPM learns, samples with every sampler, and the train CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from data.dataset import FaceDataset
from data.synthetic import toy_cache
from models.engine import TrainConfig, fit
from models.errors import ConfigError
from models.families import build_family, family_config
from models.objective import heldout_loss
from models.pipeline_ddpm import AttributeDiffusionPipeline
from models.sampling import generate
from models.train import main as train_main
from tests.models_helpers import micro_family

LEVELS = np.array([[0, 0, 0, 0, 0], [5, 5, 5, 5, 5], [0, 5, 0, 5, 0], [3, 1, 4, 1, 5]])


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return toy_cache(size=16, n_train=2048, n_val=64, n_test=0, root=root, progress=False)


@pytest.fixture(scope="module")
def trained(faces):
    train, val = FaceDataset(faces, "train"), FaceDataset(faces, "val")
    family = micro_family()
    val_batches = list(torch.utils.data.DataLoader(val, batch_size=64))
    before = heldout_loss(family, val_batches)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=2e-3, max_steps_per_epoch=100, progress=False, val_samples=64)
    result = fit(family, cfg, train, val_dataset=val)
    return family, result, before, heldout_loss(family, val_batches)


def _saturated(images: np.ndarray) -> float:
    return float(((images == 0) | (images == 255)).mean())


def test_a_few_hundred_steps_lower_the_loss_clearly(trained):
    _, result, before, after = trained
    assert result.step == 300
    assert after < 0.25 * before
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["val_loss"] == pytest.approx(after, rel=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_samples_have_the_right_shape_and_range_for_every_sampler(trained, sampler):
    family = trained[0]
    images = generate(family, LEVELS, None, guidance_scale=3.0, num_inference_steps=20, seed=0, scheduler=sampler)
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
    assert _saturated(images) < 0.3  # sane pictures, not clipped noise
    assert 40 < images.mean() < 215 and images.std() > 10
    again = generate(family, LEVELS, None, guidance_scale=3.0, num_inference_steps=20, seed=0, scheduler=sampler)
    np.testing.assert_array_equal(images, again)


def test_pixel_space_dpm_solver_needs_the_clipping_we_configure(trained):
    family = trained[0]
    pipe = family.pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # diffusers defaults
    raw = pipe(LEVELS, guidance_scale=3.0, num_inference_steps=20, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    ours = generate(family, LEVELS, None, guidance_scale=3.0, num_inference_steps=20, seed=0, scheduler="dpm++")
    assert _saturated((raw * 255).round().astype(np.uint8)) > 2 * _saturated(ours)


def test_generate_rejects_missing_or_bad_conditions(trained):
    family = trained[0]
    with pytest.raises(ConfigError, match="levels"):
        generate(family, None, ["a caption"], 3.0, 2, 0)
    with pytest.raises(ValueError, match="levels"):
        generate(family, np.full((1, 5), 6), None, 3.0, 2, 0)
    with pytest.raises(ConfigError, match="unknown sampler"):
        generate(family, LEVELS, None, 3.0, 2, 0, scheduler="heun-x")


def test_build_family_is_seeded_and_leaves_global_rng_alone():
    cfg = family_config("ddpm", "cpu-16", block_out_channels=(32, 64))
    state = torch.get_rng_state()
    a, b = build_family("ddpm", cfg, seed=1), build_family("ddpm", cfg, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.module.parameters(), b.module.parameters()))
    with pytest.raises(ConfigError, match="unknown model"):
        build_family("gan", cfg)
    with pytest.raises(ConfigError, match="bad ddpm setting"):
        family_config("ddpm", "cpu-16", channels=(1, 2))


def test_train_command_writes_pipeline_grid_and_record(faces, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--model", "ddpm", "--preset", "cpu-16", "--channels", "32,64", "--data", str(faces), "--out", str(out),
            "--epochs", "1", "--limit", "128", "--batch-size", "16", "--max-steps-per-epoch", "3",
            "--val-samples", "16", "--sample-steps", "2"]
    train_main(argv)
    printed = capsys.readouterr().out
    assert "parameters" in printed and "epoch 1/1" in printed
    assert (out / "samples.png").stat().st_size > 0
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["family"]["block_out_channels"] == [32, 64] and record["steps"] == 3
    pipe = AttributeDiffusionPipeline.from_pretrained(out / "pipeline")
    images = generate(pipe, LEVELS[:1], None, 2.0, 2, seed=0)
    assert images.shape == (1, 16, 16, 3)

    with pytest.raises(SystemExit, match="^error: output directory .* is not empty"):
        train_main(argv)
    train_main([*argv, "--resume", "--epochs", "2"])  # continues from the checkpoint of epoch 1
    assert json.loads((out / "run.json").read_text())["steps"] == 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preset", "huge"], "unknown ddpm preset"),
        (["--channels", "32,x"], "--channels must be integers"),
        (["--data", "/nonexistent/cache"], "/nonexistent/cache"),
        (["--lr", "-1"], "lr must be > 0"),
    ],
)
def test_train_command_bad_input_is_one_line_and_writes_nothing(tmp_path, extra, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--preset", "cpu-16", "--out", str(out), "--data", str(tmp_path), *extra])
    text = str(exit_info.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text
    assert not out.exists()


def test_bench_job_reports_throughput_memory_and_cfg_counted_nfe():
    from models.bench import BenchJob, run_job

    job = BenchJob("cpu-16", batch_size=4, train_steps=2, samplers=("ddim", "dpm++"), sample_batch=2, sample_steps=3,
                   guidance_scale=3.0, device="cpu", compile=False, threads=1)
    row = run_job(job)
    assert row["params_M"] == pytest.approx(1.20, abs=0.01) and row["train_img_s"] > 0 and row["peak_mem_MB"] > 0
    assert row["fwd_GFLOP_per_img"] > 0
    assert {k: v["nfe_per_img"] for k, v in row["sampling"].items()} == {"ddim": 6, "dpm++": 6}
    unguided = run_job(dataclasses.replace(job, samplers=("ddim",), guidance_scale=1.0))
    assert unguided["sampling"]["ddim"]["nfe_per_img"] == 3


def test_bench_rejects_unknown_presets():
    from models.bench import main as bench_main

    with pytest.raises(SystemExit, match="^error: unknown ddpm preset 'mega'"):
        bench_main(["--presets", "mega"])
