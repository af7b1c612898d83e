"""The attribute DDPM network, its presets, samplers and the classifier-free-guidance pipeline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from data.schema import levels_to_cond
from models.ddpm import PRESETS, count_parameters, ddpm_config
from models.errors import ConfigError
from models.pipeline_ddpm import AttributeDiffusionPipeline
from models.schedulers import make_scheduler, training_scheduler
from tests.models_helpers import MICRO, micro_family


@pytest.fixture(scope="module")
def pipe() -> AttributeDiffusionPipeline:
    p = micro_family(seed=3).pipeline()
    p.set_progress_bar_config(disable=True)
    return p


def _inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 16, 16, generator=g)
    cond = levels_to_cond(torch.randint(0, 6, (batch, 5), generator=g))
    return x, torch.tensor(500), cond


def test_condition_changes_the_prediction(pipe):
    x, t, c = _inputs()
    with torch.no_grad():
        diff = (pipe.unet(x, t, c).sample - pipe.unet(x, t, torch.zeros_like(c)).sample).abs().max()
    assert diff > 1e-3  # otherwise the CFG tests below could not tell the halves apart


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.5])
def test_batched_guidance_equals_two_separate_passes(pipe, scale):
    x, t, c = _inputs()
    with torch.no_grad():
        batched = pipe.guided_prediction(x, t, c, scale)
        eps_c = pipe.unet(x, t, c).sample
        eps_u = pipe.unet(x, t, torch.zeros_like(c)).sample
    torch.testing.assert_close(batched, scale * eps_c + (1 - scale) * eps_u, atol=1e-5, rtol=1e-5)
    if scale == 1.0:
        torch.testing.assert_close(batched, eps_c, atol=1e-5, rtol=1e-5)
    if scale == 0.0:
        torch.testing.assert_close(batched, eps_u, atol=1e-5, rtol=1e-5)


def test_guidance_uses_one_forward_of_twice_the_batch(pipe):
    calls = []
    hook = pipe.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        pipe(np.zeros((2, 5), dtype=np.int64), guidance_scale=3.0, num_inference_steps=3, output_type="np")
        pipe(np.zeros((2, 5), dtype=np.int64), guidance_scale=1.0, num_inference_steps=3, output_type="np")
    finally:
        hook.remove()
    assert calls == [4, 4, 4, 2, 2, 2]


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_pipeline_matches_a_hand_written_guided_ddim_loop(pipe, scale):
    levels = np.array([[0, 5, 1, 2, 3], [4, 0, 0, 1, 5]])
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler)
    out = pipe(levels, guidance_scale=scale, num_inference_steps=4, generator=torch.Generator().manual_seed(7),
               output_type="pt").images

    sched = make_scheduler("ddim", pipe.scheduler)
    cond = levels_to_cond(torch.as_tensor(levels))
    x = randn_tensor((2, 3, 16, 16), generator=torch.Generator().manual_seed(7))
    sched.set_timesteps(4)
    with torch.no_grad():
        for t in sched.timesteps:
            eps_c = pipe.unet(x, t, cond).sample
            eps_u = pipe.unet(x, t, torch.zeros_like(cond)).sample
            x = sched.step(scale * eps_c + (1 - scale) * eps_u, t, x).prev_sample
    torch.testing.assert_close(out, (x / 2 + 0.5).clamp(0, 1), atol=1e-4, rtol=1e-4)


def test_save_pretrained_from_pretrained_gives_identical_outputs(pipe, tmp_path):
    pipe.scheduler = make_scheduler("ddpm", pipe.scheduler)
    pipe.save_pretrained(tmp_path)
    loaded = AttributeDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is type(pipe.scheduler)
    levels = np.array([[1, 2, 3, 4, 5]])
    kw = dict(guidance_scale=2.0, num_inference_steps=3, output_type="pt")
    a = pipe(levels, generator=torch.Generator().manual_seed(1), **kw).images
    b = loaded(levels, generator=torch.Generator().manual_seed(1), **kw).images
    assert torch.equal(a, b)


def test_pipeline_accepts_levels_or_vectors_and_returns_pil(pipe):
    levels = np.array([[0, 1, 2, 3, 4]])
    kw = dict(guidance_scale=2.0, num_inference_steps=2, output_type="np")
    a = pipe(levels, generator=torch.Generator().manual_seed(0), **kw).images
    b = pipe(levels_to_cond(levels), generator=torch.Generator().manual_seed(0), **kw).images
    np.testing.assert_array_equal(a, b)
    images = pipe(levels, num_inference_steps=2, output_type="pil").images
    assert images[0].size == (16, 16) and images[0].mode == "RGB"


def test_pipeline_rejects_bad_conditions(pipe):
    with pytest.raises(ValueError, match="levels"):
        pipe(np.array([[0, 1, 2, 3, 9]]), num_inference_steps=1)
    with pytest.raises(ValueError, match="attributes must be"):
        pipe(np.zeros((2, 7)), num_inference_steps=1)


def test_samplers_are_configured_for_pixel_and_latent_space():
    base = training_scheduler(1000)
    ddpm, ddim, dpm = (make_scheduler(n, base) for n in ("ddpm", "ddim", "dpm++"))
    assert ddpm.config.clip_sample and ddim.config.clip_sample and ddpm.config.clip_sample_range == 1.0
    assert dpm.config.thresholding and dpm.config.sample_max_value == 1.0
    assert dpm.config.algorithm_type == "dpmsolver++"
    latent = [make_scheduler(n, base, space="latent") for n in ("ddpm", "ddim", "dpm++")]
    assert not latent[0].config.clip_sample and not latent[1].config.clip_sample and not latent[2].config.thresholding
    for s in (ddpm, ddim, dpm):
        np.testing.assert_allclose(s.alphas_cumprod.numpy(), base.alphas_cumprod.numpy(), rtol=1e-6)
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_scheduler("euler-magic", base)


def test_dpm_solver_thresholding_clips_the_predicted_clean_image():
    """Feed an absurd noise prediction: with pixel-space thresholding x0 is clipped, without it it explodes."""
    base = training_scheduler(1000)
    x = torch.zeros(1, 3, 4, 4)
    for space, bounded in (("pixel", True), ("latent", False)):
        s = make_scheduler("dpm++", base, space=space)
        s.set_timesteps(5)
        prev = s.step(torch.full_like(x, 50.0), s.timesteps[0], x).prev_sample  # from x = 0: a multiple of x0
        assert (prev.abs().max() <= 1.0) == bounded


def test_T_10000_is_a_longer_chain_with_the_study_betas_by_default():
    """diffusers' DDPMScheduler(num_train_timesteps=10000): betas = linspace(1e-4, 0.02, 10000), not rescaled."""
    family = micro_family(config=dataclasses.replace(MICRO, num_train_timesteps=10_000))
    torch.testing.assert_close(family.noise_scheduler.betas, torch.linspace(1e-4, 0.02, 10_000), rtol=0, atol=0)
    short = training_scheduler(1000)
    assert family.noise_scheduler.alphas_cumprod[-1] < 1e-30 < short.alphas_cumprod[-1]  # q(x_T) nearer N(0, I)
    described = family.describe()
    assert described["beta_rescale"] is False and described["ddpm_beta_rescale"] is False
    assert described["beta_start"] == pytest.approx(1e-4) and described["beta_end"] == pytest.approx(0.02)


def test_beta_rescale_keeps_the_noise_level_at_the_same_fraction_of_the_chain():
    family = micro_family(config=dataclasses.replace(MICRO, num_train_timesteps=10_000, beta_rescale=True))
    short, long = training_scheduler(1000), family.noise_scheduler
    torch.testing.assert_close(long.betas, torch.linspace(1e-5, 0.002, 10_000))
    for frac in (0.1, 0.25, 0.5, 0.75, 0.99):
        a = short.alphas_cumprod[int(frac * 1000)]
        b = long.alphas_cumprod[int(frac * 10_000)]
        assert abs(a - b) < 0.01
    assert family.describe()["beta_rescale"] is True and family.describe()["beta_start"] == pytest.approx(1e-5)
    assert torch.equal(training_scheduler(1000, beta_rescale=True).betas, short.betas)  # T = 1000: nothing to do
    cosine = training_scheduler(10_000, "cosine")
    assert cosine.config.beta_schedule == "squaredcos_cap_v2"
    assert torch.equal(training_scheduler(10_000, "cosine", beta_rescale=True).betas, cosine.betas)


@pytest.mark.parametrize("beta_rescale", [False, True])
def test_save_pretrained_round_trips_the_config_and_the_schedule(tmp_path, beta_rescale):
    from models.ddpm import DDPMFamily, load_ddpm_config

    config = dataclasses.replace(MICRO, num_train_timesteps=10_000, beta_rescale=beta_rescale)
    family = micro_family(config=config)
    family.save_pretrained(tmp_path / "pipe")
    assert load_ddpm_config(tmp_path / "pipe") == config
    again = DDPMFamily.from_pretrained(tmp_path / "pipe")
    assert again.config == config and torch.equal(again.noise_scheduler.betas, family.noise_scheduler.betas)
    loaded = AttributeDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert torch.equal(loaded.scheduler.betas, family.noise_scheduler.betas)
    with pytest.raises(ConfigError, match="no saved ddpm config"):
        load_ddpm_config(tmp_path)


def test_ddpm_variance_fixed_large_is_beta_t_and_fixed_small_is_beta_tilde():
    base = training_scheduler(1000)
    large = make_scheduler("ddpm", base, ddpm_variance="fixed_large")
    small = make_scheduler("ddpm", base)
    assert large.config.variance_type == "fixed_large" and small.config.variance_type == "fixed_small"
    for s in (large, small):
        s.set_timesteps(1000)  # the full chain: the previous timestep of t is t - 1
    ac = base.alphas_cumprod.double()
    for t in (1, 10, 500, 999):
        assert float(large._get_variance(t)) == pytest.approx(float(base.betas[t]), rel=1e-4)
        beta_tilde = (1 - ac[t - 1]) / (1 - ac[t]) * base.betas[t].double()
        assert float(small._get_variance(t)) == pytest.approx(float(beta_tilde), rel=1e-4)
    with pytest.raises(ConfigError, match="unknown DDPM variance"):
        make_scheduler("ddpm", base, ddpm_variance="learned")


def test_full_chain_sampling_runs_T_steps_of_one_batched_forward_each():
    from models.sampling import FULL_CHAIN, generate, inference_steps

    family = micro_family(config=dataclasses.replace(MICRO, num_train_timesteps=20))
    pipe = family.pipeline()
    assert inference_steps(family, None) == inference_steps(pipe, FULL_CHAIN) == inference_steps(family.config, 0) == 20
    assert inference_steps(pipe, 7) == 7
    with pytest.raises(ConfigError, match="full chain"):
        inference_steps(pipe, -1)
    calls = []
    hook = family.module.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    levels = np.zeros((3, 5), dtype=np.int64)
    try:
        for steps in (None, FULL_CHAIN):
            calls.clear()
            images = generate(family, levels, None, 3.0, steps, seed=0, ddpm_variance="fixed_large")
            assert images.shape == (3, 16, 16, 3)
            assert calls == [6] * 20  # T forward passes, each covering both CFG halves of the 3 images
        calls.clear()
        generate(pipe, levels, None, 1.0, 5, seed=0, scheduler="ddim")
        assert calls == [3] * 5
    finally:
        hook.remove()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_sampling_from_the_top_of_a_T_10000_chain_stays_finite(sampler):
    """alpha_bar < 1e-38 for the last ~700 of 10,000 steps: flushed to 0 in float32 (as every entry point flushes
    denormals), a DDPM step at t = 9999 would divide 0 by 0. The samplers keep alpha_bar in float64."""
    torch.set_flush_denormal(True)
    base = training_scheduler(10_000)
    assert base.alphas_cumprod[-1] == 0  # the float32 training table: flushed
    s = make_scheduler(sampler, base, ddpm_variance="fixed_large")
    steps = 10_000 if sampler == "ddpm" else 20
    s.set_timesteps(steps)
    assert len(s.timesteps) == steps  # what inference_steps promises (DPM-Solver++ starts below lambda = -40)
    x, g = torch.randn(2, 3, 4, 4), torch.Generator().manual_seed(0)
    kwargs = {"generator": g} if sampler == "ddpm" else {}
    for t in s.timesteps[:5]:
        x = s.step(torch.randn(2, 3, 4, 4, generator=g), t, x, **kwargs).prev_sample
        assert torch.isfinite(x).all()


def test_a_pipeline_given_a_plain_T_10000_scheduler_samples_finite_images(pipe):
    from diffusers import DDPMScheduler

    original = pipe.scheduler
    pipe.scheduler = DDPMScheduler.from_config(training_scheduler(10_000).config)  # float32 alpha_bar, 0 at the end
    try:
        images = pipe(np.zeros((1, 5), dtype=np.int64), num_inference_steps=3, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
    finally:
        pipe.scheduler = original
    assert np.isfinite(images).all()


@pytest.mark.slow  # a new interpreter
def test_from_pretrained_in_a_fresh_process_that_imports_only_the_pipeline_module(pipe, tmp_path):
    """A folder carrying its own code (diffusers' custom-code layout) loads with the project's classes; so do
    folders saved before it (model_index.json naming models.unet_attribute) and when the U-Net class lived in
    models.ddpm (model_index.json names that module)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    pipe.save_pretrained(tmp_path / "new")
    index = json.loads((tmp_path / "new" / "model_index.json").read_text())
    assert index["unet"] == ["unet_attribute", "AttributeUNet"]
    assert index["_class_name"] == ["pipeline", "AttributeDiffusionPipeline"]
    assert (tmp_path / "new" / "pipeline.py").is_file() and (tmp_path / "new" / "unet" / "unet_attribute.py").is_file()
    shutil_copy = __import__("shutil").copytree
    for name, unet in (("before", "models.unet_attribute"), ("legacy", "models.ddpm")):
        shutil_copy(tmp_path / "new", tmp_path / name)
        (tmp_path / name / "pipeline.py").unlink()
        (tmp_path / name / "unet" / "unet_attribute.py").unlink()
        old = {**index, "_class_name": "AttributeDiffusionPipeline", "unet": [unet, "AttributeUNet"]}
        (tmp_path / name / "model_index.json").write_text(json.dumps(old))
    code = (
        "import sys\n"
        "from models.pipeline_ddpm import AttributeDiffusionPipeline\n"
        "for folder in sys.argv[1:]:\n"
        "    p = AttributeDiffusionPipeline.from_pretrained(folder)\n"
        "    print(type(p).__module__, type(p.unet).__module__, type(p.unet).__name__)\n"
        "print('models.ddpm' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code, *(str(tmp_path / n) for n in ("new", "before", "legacy"))],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:4] == ["models.pipeline_ddpm models.unet_attribute AttributeUNet"] * 3 + ["False"]


def test_unet_is_adagn_with_attention_at_every_level_in_study_presets():
    cfg = PRESETS["study-small"]
    with torch.device("meta"):
        from models.ddpm import AttributeUNet  # defined in models.unet_attribute, still importable from here

        net = AttributeUNet(**cfg.unet_kwargs())
    u = net.unet.config
    assert u.resnet_time_scale_shift == "scale_shift" and u.class_embed_type == "identity"
    assert u.down_block_types == ("AttnDownBlock2D",) * 4 and u.up_block_types == ("AttnUpBlock2D",) * 4
    assert u.layers_per_block == 2 and tuple(u.block_out_channels) == (128, 256, 512, 512)
    assert net.cond_proj.in_features == 30 and net.cond_proj.out_features == 128 * 4


def test_parameter_counts_against_the_study():
    small, large = count_parameters(PRESETS["study-small"]), count_parameters(PRESETS["study-large"])
    # The study reports 112.10M parameters for its DDPM; the small channel set reproduces that.
    assert abs(small / 1e6 - 112.10) < 0.2
    assert large > 2 * small
    assert count_parameters(PRESETS["cpu-tiny"]) < 2_000_000


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown ddpm preset"):
        ddpm_config("huge")
    with pytest.raises(ConfigError, match="divisible"):
        dataclasses.replace(MICRO, image_size=17)
    with pytest.raises(ConfigError, match="norm_num_groups"):
        dataclasses.replace(MICRO, block_out_channels=(12, 32))
    with pytest.raises(ConfigError, match="attention_head_dim"):
        dataclasses.replace(MICRO, attention_head_dim=64)


def test_sampling_precision_bf16_is_close_to_fp32_and_auto_follows_the_device(monkeypatch):
    import models.runtime as runtime
    from models.sampling import generate
    from tests.models_helpers import micro_family

    family = micro_family()
    levels = np.random.default_rng(0).integers(0, 6, (4, 5))
    fp32 = generate(family, levels, None, 3.0, 4, seed=0, scheduler="dpm++", precision="no")
    bf16 = generate(family, levels, None, 3.0, 4, seed=0, scheduler="dpm++", precision="bf16")
    assert bf16.dtype == np.uint8 and bf16.shape == fp32.shape
    # the denoiser in bf16, the scheduler in fp32: the same images up to bf16 rounding (not bit-identical)
    assert 0 < np.abs(bf16.astype(int) - fp32.astype(int)).mean() < 8
    for native in (False, True):
        monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda n=native: n)
        auto = generate(family, levels, None, 3.0, 4, seed=0, scheduler="dpm++", precision="auto")
        assert np.array_equal(auto, bf16 if native and runtime.CPU_AUTO["sample"].bf16 else fp32)
    with pytest.raises(ConfigError, match="sampling precision must be one of auto, bf16, no"):
        generate(family, levels, None, 3.0, 4, seed=0, precision="fp16")
