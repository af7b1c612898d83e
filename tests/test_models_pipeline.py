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


def test_large_T_keeps_the_noise_level_at_the_same_fraction_of_the_chain():
    short, long = training_scheduler(1000), training_scheduler(10_000)
    assert long.betas[0] == pytest.approx(1e-5) and long.betas[-1] == pytest.approx(0.002)
    for frac in (0.1, 0.25, 0.5, 0.75, 0.99):
        a = short.alphas_cumprod[int(frac * 1000)]
        b = long.alphas_cumprod[int(frac * 10_000)]
        assert abs(a - b) < 0.01
    cosine = training_scheduler(10_000, "cosine")
    assert cosine.config.beta_schedule == "squaredcos_cap_v2"


def test_unet_is_adagn_with_attention_at_every_level_in_study_presets():
    cfg = PRESETS["study-small"]
    with torch.device("meta"):
        from models.ddpm import AttributeUNet

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
