"""The VAE tuned at the data's resolution (models.vae_tune): it lowers the reconstruction error, saves and loads
safely, and an sd-lora family on it encodes fresh latents and carries it into its saved folder and MLflow model.

Everything runs on the `test` tiny base (16 px) built from the real diffusers classes in a temporary folder.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from data.dataset import to_model_range
from data.synthetic import draw_faces, sample_levels
from models.errors import ConfigError
from models.families import build_family, family_config
from models.mlflow_model import choose_flavor
from models.sd_lora import TUNED_VAE_DIR, load_pipeline, load_pipeline_folder
from models.tiny_base import PRESETS as TINY
from models.tiny_base import ensure_tiny_base
from models.vae_tune import (
    VAE_INFO_FILE,
    latent_std,
    load_vae,
    perceptual_loss,
    psnr,
    reconstruct,
    reconstruction_error,
    save_vae,
    tune_vae,
    vae_tune_config,
)

SIZE = 16


def items(images: torch.Tensor) -> list[dict]:
    return [{"image": image} for image in images]


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    levels = sample_levels(64, np.random.default_rng(0), "uniform")
    images, _ = draw_faces(levels, SIZE, 0)
    return to_model_range(images)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    levels = sample_levels(16, np.random.default_rng(1), "uniform")
    images, captions = draw_faces(levels, SIZE, 1)
    items = [{"image": to_model_range(images[i]), "levels": torch.from_numpy(levels[i]), "caption": captions[i]}
             for i in range(len(levels))]
    path, _ = ensure_tiny_base(TINY["test"], root=tmp_path_factory.mktemp("sd") / "base", dataset=items)
    return str(path)


@pytest.fixture(scope="module")
def tuned(base, faces, tmp_path_factory):
    """(the base's VAE, the same VAE tuned for 20 steps and saved, its folder, the tuning history)."""
    vae = load_pipeline_folder(base).vae
    before = load_pipeline_folder(base).vae
    history = tune_vae(vae, items(faces), vae_tune_config("test", steps=20))
    folder = save_vae(vae, tmp_path_factory.mktemp("vae") / "tuned", {"steps": 20})
    return before, vae, folder, history


def test_tuning_lowers_the_reconstruction_error_in_a_few_steps(tuned, faces):
    before, after, _, history = tuned
    assert [row["step"] for row in history] == list(range(1, 21))
    assert {"loss", "rec", "kl"} <= set(history[0])
    assert reconstruction_error(after, faces) < 0.9 * reconstruction_error(before, faces)
    real = ((faces.movedim(1, -1) + 1) * 127.5).round().to(torch.uint8).numpy()
    as_uint8 = [((reconstruct(v, faces).movedim(1, -1) + 1) * 127.5).round().to(torch.uint8).numpy()
                for v in (before, after)]
    assert psnr(as_uint8[1], real) > psnr(as_uint8[0], real)
    assert latent_std(after, faces) > 0 and latent_std(after, faces) != latent_std(before, faces)


def test_decoder_only_keeps_the_latents(base, faces):
    vae = load_pipeline_folder(base).vae
    with torch.no_grad():
        latents = vae.encode(faces[:8]).latent_dist.mode()
    decoder = [p.clone() for p in vae.decoder.parameters()]
    tune_vae(vae, items(faces), vae_tune_config("test", steps=3, decoder_only=True))
    with torch.no_grad():
        assert torch.equal(vae.encode(faces[:8]).latent_dist.mode(), latents)
    assert any(not torch.equal(a, b) for a, b in zip(decoder, vae.decoder.parameters()))


def test_psnr_of_a_one_level_difference_is_20_log10_255():
    real = np.full((2, 4, 4, 3), 100, dtype=np.uint8)
    assert psnr(real + 1, real) == pytest.approx(20 * np.log10(255), abs=1e-3)


def test_a_saved_vae_loads_back_exactly_and_bad_folders_are_one_line_errors(tuned, faces, tmp_path):
    _, vae, folder, _ = tuned
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((folder / VAE_INFO_FILE).read_text()) == {"steps": 20}
    assert not list(folder.parent.glob(".tuned.*"))  # the temporary folder was renamed, nothing left behind
    assert torch.equal(reconstruct(load_vae(folder), faces[:8]), reconstruct(vae, faces[:8]))
    with pytest.raises(ConfigError, match="no VAE at"):
        load_vae(tmp_path)
    with pytest.raises(ConfigError, match="loss"):
        vae_tune_config("test", loss="huber")


def test_the_perceptual_term_is_used_only_where_its_weights_are_here():
    module, reason = perceptual_loss(0.0)
    assert module is None and reason == "perceptual_weight is 0"
    module, reason = perceptual_loss(1.0)
    if importlib.util.find_spec("torchvision") is None:
        assert module is None and "torchvision" in reason
    else:
        assert (module is None) != (reason is None)


def test_an_sd_lora_on_the_tuned_vae_encodes_fresh_latents_and_ships_the_vae(base, tuned, faces, tmp_path):
    _, vae, folder, _ = tuned
    plain = build_family("sd-lora", family_config("sd-lora", "test", pretrained=base), seed=0, verbose=False)
    on_tuned = build_family("sd-lora", family_config("sd-lora", "test", pretrained=base, vae=str(folder)), seed=0,
                            verbose=False)
    assert "VAE tuned at 16px" in on_tuned.base_description
    gen = [torch.Generator().manual_seed(0) for _ in range(2)]
    z_plain, z_tuned = plain.encode_images(faces[:8], gen[0]), on_tuned.encode_images(faces[:8], gen[1])
    assert z_plain.shape == z_tuned.shape and not torch.allclose(z_plain, z_tuned)

    on_tuned.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / TUNED_VAE_DIR / "diffusion_pytorch_model.safetensors").is_file()
    folder.rename(folder.with_name("moved"))  # the saved LoRA folder needs no other copy of the tuned VAE
    try:
        pipe = load_pipeline(tmp_path / "lora")
        assert torch.equal(reconstruct(pipe.vae, faces[:4]), reconstruct(vae, faces[:4]))
    finally:
        folder.with_name("moved").rename(folder)
    flavor, why = choose_flavor(tmp_path / "lora")
    assert flavor == "pyfunc" and why


def test_the_mlflow_model_of_an_sd_lora_on_a_tuned_vae_samples_with_that_vae(base, tuned, faces, tmp_path):
    from models.families import load_pipeline as load_any
    from models.mlflow_model import save_model

    _, vae, folder, _ = tuned
    fam = build_family("sd-lora", family_config("sd-lora", "test", pretrained=base, vae=str(folder)), seed=0,
                       verbose=False)
    fam.save_pretrained(tmp_path / "lora")
    assert save_model(tmp_path / "mlflow", tmp_path / "lora", guidance_scale=3.0, sampler="ddim",
                      num_inference_steps=2) == "pyfunc"
    pipe = load_any("sd-lora", tmp_path / "mlflow")
    assert torch.equal(reconstruct(pipe.vae, faces[:4]), reconstruct(vae, faces[:4]))


def test_figure_3_1_has_a_row_per_vae_and_tune_vae_needs_the_sd_family(tmp_path):
    from PIL import Image

    from orchestration.config import resolve
    from orchestration.errors import SweepError
    from orchestration.grid import grid_trials
    from orchestration.report.vae_figure import draw_vae_figure
    from orchestration.trainable import model_config

    rows = [np.full((3, SIZE, SIZE, 3), v, dtype=np.uint8) for v in (0, 128, 255)]
    png = draw_vae_figure(*rows, tmp_path / "fig.png", "Figure 3.1", {"psnr": 12.0, "fd_estimator": 3.0}, {"psnr": 20.0})
    with Image.open(png) as image:
        assert image.width > image.height > 0
    with pytest.raises(ValueError, match="at least one image"):
        draw_vae_figure(rows[0][:0], rows[1], rows[2], tmp_path / "empty.png", "empty")
    with pytest.raises(SweepError, match="--tune-vae tunes the VAE of the sd-lora family"):
        resolve("smoke", model="ddpm", tune_vae=True)
    cfg = resolve("smoke", model="sd-lora", tune_vae=True, vae=str(tmp_path))
    assert cfg.vae_preset == "test" and model_config(cfg, grid_trials(cfg)[0]).vae == str(tmp_path)
