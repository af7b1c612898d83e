"""Fine-tune a Stable Diffusion base's VAE (diffusers' `AutoencoderKL`) on the training images at the data's size.

The study blames SD Nano's VAE, trained at 128 px, for the high-frequency detail its samples lack at 64 px
(§4.2) and proposes to tune that VAE on the faces at 64 px (§5, future work). The loss is the latent
diffusion autoencoder's without its adversarial part: an L1 (or MSE) reconstruction term, the KL term
towards N(0, I) weighted 1e-6 (LDM's `kl_weight`; the tiny base pretrains its VAE with the same weight), and
LPIPS (weight 1, LDM's `perceptual_weight`) only where its VGG16 weights are present locally -- otherwise
the term is left out and recorded as unavailable with the reason. Diffusers ships the model but no trainer
for it; `tune_vae` is that loop.

Encoder and decoder both train by default (the study: "ajustar o re-entrenar el VAE"): the latents change,
so the LoRA trains on the tuned VAE's latents. `decoder_only` is the drop-in alternative (Stability AI's
ft-MSE VAE: same latents, a better decoder). The latent `scaling_factor` is kept: it is the scale the base's
U-Net was trained on. Saved with `save_pretrained` (safetensors) into a temporary folder, then renamed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL

from data.io import atomic_dir
from models.errors import ConfigError

VAE_INFO_FILE = "condface_vae.json"
LOSSES = ("l1", "mse")


@dataclass(frozen=True)
class VAETuneConfig:
    """The tuning budget and loss. Steps, lr and batch are this project's choices (the study tuned no VAE)."""

    preset: str = "custom"
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-5
    loss: str = "l1"  # LDM's reconstruction term; "mse" as Stability AI's ft-MSE VAE
    kl_weight: float = 1e-6
    perceptual_weight: float = 1.0  # LPIPS (VGG16), used only where its weights are present
    decoder_only: bool = False
    train_images: int | None = None  # the first N training images (None: all)
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"VAE tuning needs steps >= 1 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        if self.loss not in LOSSES:
            raise ConfigError(f"VAE reconstruction loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.lr <= 0 or self.kl_weight < 0 or self.perceptual_weight < 0:
            raise ConfigError("VAE tuning needs lr > 0 and non-negative kl/perceptual weights")


PRESETS: dict[str, VAETuneConfig] = {
    "study": VAETuneConfig("study"),  # 2000 x 32 = 64k images, ~0.4 of CelebA's training split, at 64 px
    "cpu": VAETuneConfig("cpu", steps=300, lr=2e-4, train_images=4096),
    "test": VAETuneConfig("test", steps=6, batch_size=8, lr=1e-3, train_images=64),
}


def vae_tune_config(preset: str, **overrides: Any) -> VAETuneConfig:
    if preset not in PRESETS:
        raise ConfigError(f"unknown VAE tuning preset {preset!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def perceptual_loss(weight: float):
    """(LPIPS network: (a, b) in [-1, 1] -> per-image distances, or None; why it is unavailable, or None). Never
    downloads: the VGG16 weights must be in torch hub's cache already (torchmetrics ships only LPIPS's heads)."""
    if weight == 0:
        return None, "perceptual_weight is 0"
    if importlib.util.find_spec("torchvision") is None:
        return None, "LPIPS needs torchvision (not installed) and its VGG16 ImageNet weights; term left out"
    from torchvision.models import VGG16_Weights

    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG16_Weights.DEFAULT.url).name
    if not file.is_file():
        return None, f"LPIPS's VGG16 weights are not in torch hub's cache ({file}); term left out"
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    # its network, not the metric: the metric would accumulate every step's score (and graph) in its state
    return LearnedPerceptualImagePatchSimilarity(net_type="vgg").net, None


def _trainable(vae: AutoencoderKL, decoder_only: bool) -> list[torch.nn.Parameter]:
    vae.requires_grad_(False)
    parts = (vae.decoder, vae.post_quant_conv) if decoder_only else (vae,)
    params = [p for part in parts if part is not None for p in part.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def tune_vae(vae: AutoencoderKL, dataset, config: VAETuneConfig, perceptual=None,
             device: str | torch.device = "cpu") -> list[dict[str, float]]:
    """Train `vae` in place on the "image"s (3, H, W in [-1, 1]) of `dataset`'s items (a FaceDataset), drawn at
    random with replacement; return one row of losses per step."""
    gen = torch.Generator().manual_seed(config.seed)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=config.steps * config.batch_size,
                                             generator=gen)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler)
    vae.to(device).float()
    opt = torch.optim.AdamW(_trainable(vae, config.decoder_only), lr=config.lr)
    rec_loss = torch.nn.functional.l1_loss if config.loss == "l1" else torch.nn.functional.mse_loss
    if perceptual is not None:
        perceptual = perceptual.to(device).eval()
    vae.train()
    history = []
    for step, batch in enumerate(loader, start=1):
        x = batch["image"].to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        terms = {"rec": rec_loss(recon, x), "kl": posterior.kl().mean()}
        loss = terms["rec"] + config.kl_weight * terms["kl"]
        if perceptual is not None:
            terms["lpips"] = perceptual(recon.clamp(-1, 1), x).mean()
            loss = loss + config.perceptual_weight * terms["lpips"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], config.grad_clip)
        opt.step()
        history.append({"step": step, "loss": loss.item(), **{k: v.item() for k, v in terms.items()}})
    vae.eval().requires_grad_(False)
    return history


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Deterministic reconstructions (the posterior's mode) of `images` in [-1, 1], on the CPU."""
    device = next(vae.parameters()).device
    out = [vae.decode(vae.encode(images[i:i + batch_size].to(device)).latent_dist.mode()).sample.float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).clamp(-1, 1)


@torch.no_grad()
def latent_std(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """The std of the scaled latents (posterior mode x scaling_factor) of `images`: about 1 is the scale the base's
    U-Net was trained on, so a tuned encoder that drifts from it shows here."""
    device = next(vae.parameters()).device
    return float((vae.encode(images.to(device)).latent_dist.mode() * vae.config.scaling_factor).std())


def reconstruction_error(vae: AutoencoderKL, images: torch.Tensor, loss: str = "l1") -> float:
    """The mean L1 (or MSE) between `images` and their deterministic reconstructions."""
    recon = reconstruct(vae, images)
    fn = torch.nn.functional.l1_loss if loss == "l1" else torch.nn.functional.mse_loss
    return float(fn(recon, images.float().cpu()))


def psnr(reconstructed: np.ndarray, real: np.ndarray) -> float:
    """Mean per-image PSNR (dB) of uint8 (N, H, W, 3) images against the real ones."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = (torch.from_numpy(np.asarray(x, dtype=np.float32) / 255.0) for x in (reconstructed, real))
    return float(peak_signal_noise_ratio(a, b, data_range=1.0, dim=(1, 2, 3)))


def save_vae(vae: AutoencoderKL, directory: str | Path, info: dict[str, Any]) -> Path:
    """`save_pretrained` (safetensors) + what it was tuned with, written atomically."""
    with atomic_dir(directory) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
        (tmp / VAE_INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
    return Path(directory)


def load_vae(directory: str | Path) -> AutoencoderKL:
    """A saved (tuned) VAE folder; one-line error when it holds none."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ConfigError(f"no VAE at {directory} (no config.json): point at a folder AutoencoderKL.save_pretrained "
                          "wrote, or run the sweep with --tune-vae to make one")
    return AutoencoderKL.from_pretrained(str(directory), use_safetensors=True)


__all__ = ["VAETuneConfig", "PRESETS", "vae_tune_config", "tune_vae", "reconstruct", "reconstruction_error", "psnr",
           "latent_std", "perceptual_loss", "save_vae", "load_vae", "VAE_INFO_FILE"]
