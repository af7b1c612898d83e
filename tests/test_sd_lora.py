"""SD + LoRA family: LoRA placement, frozen base, LoRA-only save/load, v-prediction Min-SNR, parameter counts.

Everything runs on the `test` tiny base (16 px, a few hundred thousand parameters) built from the real
diffusers/transformers classes in a temporary folder; the SD 2.x counts use the meta device.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.training_utils import compute_snr

from models.engine import TrainConfig, fit
from models.errors import ConfigError
from models.families import build_family, family_config
from models.objective import training_loss
from models.sampling import generate
from models.sd_lora import (
    LORA_TARGETS,
    SDLoRAFamily,
    count_sd2_parameters,
    load_pipeline,
    load_pipeline_folder,
    lora_config,
)
from models.tiny_base import PRESETS as TINY
from models.tiny_base import ensure_tiny_base
from tests.models_helpers import FACE_SIZE, captioned_faces


@pytest.fixture(scope="module")
def data() -> list[dict]:
    return captioned_faces(32)


@pytest.fixture(scope="module")
def base(tmp_path_factory, data) -> str:
    path, description = ensure_tiny_base(TINY["test"], root=tmp_path_factory.mktemp("sd") / "base", dataset=data)
    assert "tiny offline SD base" in description
    return str(path)


def family(base: str, **overrides) -> SDLoRAFamily:
    config = family_config("sd-lora", "test", pretrained=base, image_size=FACE_SIZE, **overrides)
    return build_family("sd-lora", config, seed=0)


def one_step(fam: SDLoRAFamily, data: list[dict], **overrides) -> None:
    cfg = dict(epochs=1, batch_size=8, lr=1e-2, val_samples=0, ema=False, max_steps_per_epoch=1, progress=False,
               verbose=False)
    fit(fam, TrainConfig(**{**cfg, **overrides}), data)


def test_lora_sits_on_exactly_every_attention_projection(base):
    fam = family(base, rank=4)
    unet = fam.module
    expected = {
        f"{name}.{proj}"
        for name, mod in unet.named_modules() if isinstance(mod, Attention)
        for proj in LORA_TARGETS
    }
    adapted = {name for name, mod in unet.named_modules() if hasattr(mod, "lora_A")}
    assert adapted == expected
    assert any(".attn1." in n for n in adapted) and any(".attn2." in n for n in adapted)  # self and cross
    trainable = fam.trainable_parameters()
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert not any(p.requires_grad for net in (fam.vae, fam.text_encoder) for p in net.parameters())
    # r * (in + out) per adapted linear layer
    expected_count = sum(4 * (m.in_features + m.out_features) for n, m in unet.named_modules() if n in expected)
    assert fam.parameter_counts()["trainable"] == expected_count


def test_a_training_step_changes_only_lora_weights(base, data):
    fam = family(base)
    nets = {"unet": fam.module, "vae": fam.vae, "text": fam.text_encoder}
    before = {f"{k}.{n}": p.detach().clone() for k, net in nets.items() for n, p in net.named_parameters()}
    one_step(fam, data)
    after = {f"{k}.{n}": p.detach() for k, net in nets.items() for n, p in net.named_parameters()}
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    lora_b = {n for n in before if ".lora_B." in n}
    assert lora_b and lora_b <= changed  # B starts at zero, so the first step moves every B
    assert all(".lora_" in n for n in changed)


def test_lora_save_then_load_onto_a_fresh_base_reproduces_samples(base, data, tmp_path):
    fam = family(base, rank=2)
    one_step(fam, data, lr=5e-2)
    captions = [item["caption"] for item in data[:3]]
    kwargs = dict(levels=None, captions=captions, guidance_scale=3.0, num_inference_steps=4, seed=7, scheduler="ddim")
    trained = generate(fam, **kwargs)
    assert trained.dtype == np.uint8 and trained.shape == (3, FACE_SIZE, FACE_SIZE, 3)

    fam.save_pretrained(tmp_path / "lora")
    files = sorted(p.name for p in (tmp_path / "lora").iterdir())
    assert files == ["condface_lora.json", "pytorch_lora_weights.safetensors"]  # only the adapters
    loaded = load_pipeline(tmp_path / "lora", sampler="ddim")
    np.testing.assert_array_equal(generate(loaded, **kwargs), trained)

    untouched = family(base, rank=2)  # same base, zero-initialised B: the base's own samples
    assert not np.array_equal(generate(untouched, **kwargs), trained)


def test_an_untrained_lora_family_samples_exactly_like_its_base(base):
    """So the base's reference row can be scored through the same family and pipeline code (B starts at zero)."""
    captions = ["a child", "an old man with a full short beard"]
    kwargs = dict(levels=None, captions=captions, guidance_scale=3.0, num_inference_steps=3, seed=1, scheduler="ddim")
    fam = family(base)
    plain = load_pipeline_folder(base)
    np.testing.assert_array_equal(generate(fam, **kwargs), generate(plain, **kwargs))


def test_any_diffusers_sampler_gives_images_of_the_right_shape(base):
    fam = family(base)
    for sampler in ("ddpm", "ddim", "dpm++"):
        images = generate(fam, None, ["a child", ""], 2.0, 3, seed=0, scheduler=sampler)
        assert images.shape == (2, FACE_SIZE, FACE_SIZE, 3) and images.dtype == np.uint8


def test_prediction_type_comes_from_the_base_scheduler_and_min_snr_uses_the_v_formula(base, data, tmp_path):
    vbase = tmp_path / "vbase"
    shutil.copytree(base, vbase)
    sched_file = vbase / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_file.read_text())
    sched["prediction_type"] = "v_prediction"
    sched_file.write_text(json.dumps(sched))
    fam, eps_fam = family(str(vbase)), family(base)
    assert eps_fam.prediction_type == "epsilon"
    assert fam.prediction_type == "v_prediction"

    scheduler = fam.noise_scheduler
    t = torch.arange(scheduler.config.num_train_timesteps)
    snr = compute_snr(scheduler, t)
    v_weights = torch.clamp(snr, max=5.0) / (snr + 1)
    eps_weights = torch.clamp(snr, max=5.0) / snr
    batch = {k: (torch.stack([data[0][k]]) if k != "caption" else [data[0]["caption"]]) for k in data[0]}

    def weight(f, seed):  # one sample per batch: weighted / unweighted loss is that sample's Min-SNR weight
        return training_loss(f, batch, seed, 0, 0.0, 5.0).item() / training_loss(f, batch, seed, 0, 0.0, None).item()

    for seed in range(4):
        w_v = weight(fam, seed)
        assert (v_weights - w_v).abs().min() < 1e-5
        assert w_v < 5 / 6 + 1e-6  # v weights never exceed gamma / (gamma + 1); eps weights reach 1
        assert (eps_weights - weight(eps_fam, seed)).abs().min() < 1e-5


def test_T_10000_keeps_the_base_betas_unscaled_by_default(base):
    fam_1k, fam_10k = family(base), family(base, num_train_timesteps=10_000)
    s1, s10 = fam_1k.noise_scheduler, fam_10k.noise_scheduler
    assert len(s10.betas) == 10_000 and s10.config.beta_schedule == s1.config.beta_schedule == "scaled_linear"
    # the base's scaled-linear betas 0.00085..0.012, now over 10,000 steps: a longer chain
    torch.testing.assert_close(s10.betas, torch.linspace(0.00085**0.5, 0.012**0.5, 10_000) ** 2)
    assert float(s10.alphas_cumprod[-1]) < 1e-20 < float(s1.alphas_cumprod[-1])
    assert fam_10k.describe()["beta_rescale"] is False and fam_10k.describe()["lora_beta_rescale"] is False


def test_beta_rescale_scales_the_base_betas_for_another_T(base):
    fam_1k, fam_10k = family(base), family(base, num_train_timesteps=10_000, beta_rescale=True)
    a1, a10 = fam_1k.noise_scheduler.alphas_cumprod, fam_10k.noise_scheduler.alphas_cumprod
    assert len(a10) == 10_000 and fam_10k.describe()["beta_rescale"] is True
    assert float(fam_10k.noise_scheduler.betas[0]) == pytest.approx(0.000085, rel=1e-4)
    for frac in (0.1, 0.5, 0.9):  # same noise level at the same fraction of the chain
        assert abs(float(a1[int(frac * 1000)]) - float(a10[int(frac * 10_000)])) < 0.02


def test_a_saved_lora_samples_with_the_schedule_it_trained_with(base, tmp_path):
    for rescale in (False, True):
        fam = family(base, num_train_timesteps=2000, beta_rescale=rescale)
        fam.save_pretrained(tmp_path / str(rescale))
        loaded = load_pipeline(tmp_path / str(rescale), sampler="ddpm", ddpm_variance="fixed_large")
        torch.testing.assert_close(loaded.scheduler.betas, fam.noise_scheduler.betas)
        assert loaded.scheduler.config.variance_type == "fixed_large"


def test_stable_diffusion_2_unet_parameter_counts_match_the_study():
    unet, lora4 = count_sd2_parameters(4)
    assert unet == 865_910_724 and round(unet / 1e6, 2) == 865.91  # the study: 865.91M
    assert lora4 == 829_952 and abs(lora4 - 830_000) / 830_000 < 0.001  # the study: about 830K at r = 4
    assert count_sd2_parameters(2)[1] * 2 == lora4 == count_sd2_parameters(8)[1] // 2


def test_tiny_base_is_built_once_and_reused(base, data, tmp_path):
    stamp = (tmp_path / "stamp")
    stamp.write_text("x")
    root = base
    path, _ = ensure_tiny_base(TINY["test"], root=root, dataset=None)  # cached: no data needed, nothing rebuilt
    assert str(path) == base
    assert (path / "model_index.json").stat().st_mtime <= stamp.stat().st_mtime


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot load the Stable Diffusion base"):
        SDLoRAFamily(lora_config("study", pretrained=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="rank"):
        lora_config("test", rank=0)
    with pytest.raises(ConfigError, match="image_size"):
        lora_config("cpu-16", image_size=32)
    with pytest.raises(ConfigError, match="unknown sd-lora preset"):
        lora_config("huge")


def test_bf16_sampling_runs_the_whole_latent_pipeline(base):
    fp32 = generate(family(base), None, ["a face", "a smiling face"], 3.0, 3, seed=0, scheduler="dpm++")
    bf16 = generate(family(base), None, ["a face", "a smiling face"], 3.0, 3, seed=0, scheduler="dpm++",
                    precision="bf16")
    assert bf16.dtype == np.uint8 and bf16.shape == fp32.shape
    assert np.abs(bf16.astype(int) - fp32.astype(int)).mean() < 12  # bf16 rounding, not another image
