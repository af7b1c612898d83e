"""A small offline stand-in for Stable Diffusion Nano 2.1, built from the same diffusers/transformers classes.

The real base (`bguisard/stable-diffusion-nano-2-1`) cannot be downloaded on offline machines, so the
`sd-lora` family falls back to this one: AutoencoderKL + CLIPTextModel with a CLIP BPE tokenizer trained
here on the captions + UNet2DConditionModel with SD 2.x-style cross-attention (linear projections).
Like Nano at 64 px, it turns images into 8x8x4 latents (a VAE with fewer down blocks at 32 px).

Pretraining (cpu-16: a few minutes, once; timings in docs/measurements.md):
1. the tokenizer is trained on the training captions (`CLIPTokenizer.train_new_from_iterator`);
2. the CLIP text encoder is trained briefly to read the five levels out of a caption (a throw-away
   linear head on its mean token state) -- a stand-in for CLIP's pretrained semantics: like the real
   text encoder it "knows what the words mean", and it is frozen afterwards;
3. the VAE is trained briefly to reconstruct the faces (MSE + a small KL term), and its latent
   `scaling_factor` is set to 1/std of the latents, the way SD's 0.18215 was chosen;
4. the U-Net is trained with the one training engine on captions SHUFFLED across images (10% empty):
   it learns to draw faces and sees the real distribution of text contexts, but no caption tells it
   anything about its image. The base therefore does not know the attributes, and what the LoRA
   adapters learn about the condition shows in the metrics above the base's reference row.

The result is saved as a real `StableDiffusionPipeline` folder (`save_pretrained`), so the same
`StableDiffusionPipeline.from_pretrained(path)` loads it and the real base. It is cached under
`$CONDFACE_HOME/sd-base/<name>-<hash>` (default `~/.cache/condface`), written atomically under a file
lock so concurrent trials build it once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from data.catalogue import condface_home
from data.io import atomic_dir, file_lock
from models.sd_family import StableDiffusionFamily

BASE_INFO_FILE = "condface_base.json"


def content_key(config: Any) -> str:
    """`name-<short hash of every setting>` of a tiny base's config: a changed setting gets its own cache folder."""
    blob = json.dumps(dataclasses.asdict(config), sort_keys=True).encode()
    return f"{config.name}-{hashlib.sha256(blob).hexdigest()[:10]}"


@dataclass(frozen=True)
class TinyBaseConfig:
    """Architecture and pretraining budget of the tiny offline base."""

    name: str = "cpu-32"
    image_size: int = 32
    # len(vae_channels) - 1 down-samplings: 3 blocks -> 4x, so 32 px -> 8x8x4 latents (Nano: 64 px -> 8x8x4).
    vae_channels: tuple[int, ...] = (32, 64, 64)
    # (32, 64) trains ~2.4x faster per image than (64, 128) and reached the same loss in the same time.
    unet_channels: tuple[int, ...] = (32, 64)
    unet_head_dims: tuple[int, ...] = (2, 4)  # diffusers' `attention_head_dim` = number of heads here, as in SD 2.x
    text_hidden: int = 64
    text_layers: int = 2
    vocab_size: int = 512
    max_caption_tokens: int = 64  # the synthetic captions are at most 62 tokens with this tokenizer
    text_steps: int = 300
    text_lr: float = 2e-3
    # The VAE bounds what any latent model can show: estimator accuracy on 16 px reconstructions rose
    # from 0.52 (250 steps) to 0.60 (500) and 0.71 (1000) class-balanced; real images score 0.93.
    vae_steps: int = 600
    vae_lr: float = 1e-3
    unet_epochs: int = 2
    unet_lr: float = 2e-3
    batch_size: int = 32
    train_images: int | None = 20000  # images of the training split used for pretraining (None: all)
    p_uncond: float = 0.1
    caption_truth: float = 0.0  # fraction of pretraining images shown with their own caption (the rest: shuffled)
    seed: int = 0

    def key(self) -> str:
        return content_key(self)


PRESETS: dict[str, TinyBaseConfig] = {
    "cpu-32": TinyBaseConfig(),
    # 16 px images, a 2-block VAE (2x) -> 8x8x4 latents: for the fastest CPU demos.
    "cpu-16": TinyBaseConfig(name="cpu-16", image_size=16, vae_channels=(32, 64), train_images=20000),
    # Seconds to build: for tests only (it draws noise, not faces).
    "test": TinyBaseConfig(
        name="test", image_size=16, vae_channels=(16, 16), unet_channels=(16, 32), unet_head_dims=(2, 4),
        text_hidden=16, text_layers=1, vocab_size=300, max_caption_tokens=64, text_steps=2, vae_steps=2, unet_epochs=1,
        batch_size=8, train_images=16,
    ),
}


def tiny_base_dir(config: TinyBaseConfig, root: str | Path | None = None) -> Path:
    return Path(root) if root is not None else condface_home() / "sd-base" / config.key()


def describe(config: TinyBaseConfig, path: Path) -> str:
    captions = "shuffled captions" if config.caption_truth == 0 else (
        f"captions shuffled except {config.caption_truth:.0%} true ones")
    return (
        f"tiny offline SD base '{config.name}' ({config.image_size}px, pretrained here on the synthetic faces "
        f"with {captions}; not Stable Diffusion Nano) at {path}"
    )


def build_components(config: TinyBaseConfig, captions: list[str]):
    """Untrained vae, text_encoder, tokenizer (trained on `captions`), unet, scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(config.seed)
    tokenizer = CLIPTokenizer().train_new_from_iterator(captions, vocab_size=config.vocab_size)
    tokenizer.model_max_length = config.max_caption_tokens
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=config.text_hidden, intermediate_size=2 * config.text_hidden,
            num_hidden_layers=config.text_layers, num_attention_heads=max(1, config.text_hidden // 16),
            max_position_embeddings=config.max_caption_tokens, projection_dim=config.text_hidden,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    n = len(config.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=config.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1, norm_num_groups=min(16, config.vae_channels[0]), sample_size=config.image_size,
    )
    latent = config.image_size // 2 ** (n - 1)
    m = len(config.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=config.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (m - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (m - 1),
        cross_attention_dim=config.text_hidden, attention_head_dim=config.unet_head_dims,
        use_linear_projection=True, norm_num_groups=min(16, config.unet_channels[0]),
    )
    # SD 2.x's training schedule: scaled-linear betas 0.00085..0.012 over T = 1000, epsilon prediction.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )
    return vae, text_encoder, tokenizer, unet, scheduler


def pretrain_text_encoder(text_encoder, tokenizer, captions: list[str], levels: torch.Tensor,
                          config: TinyBaseConfig, attention_mask: bool = False) -> float:
    """Train the text encoder to tell the five levels from a caption; return the final batch accuracy.

    A linear head on the mean of the token states (what the U-Net cross-attends to) is trained with it
    and thrown away. attention_mask: pass the tokenizer's mask to the encoder (as IF does with T5; SD
    does not with CLIP). transformers ships the model but no trainer for this objective; this is that loop.
    """
    from data.schema import NUM_ATTRIBUTES, NUM_LEVELS

    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    head = torch.nn.Linear(text_encoder.config.hidden_size, NUM_ATTRIBUTES * NUM_LEVELS)
    opt = torch.optim.AdamW([*text_encoder.parameters(), *head.parameters()], lr=config.text_lr)
    gen = torch.Generator().manual_seed(config.seed)
    text_encoder.train()
    acc = float("nan")
    bar = tqdm(range(config.text_steps), desc="tiny base: text encoder", leave=False)
    for _ in bar:
        b = torch.randint(len(captions), (2 * config.batch_size,), generator=gen)
        states = text_encoder(ids.input_ids[b], attention_mask=ids.attention_mask[b] if attention_mask else None)[0]
        mask = ids.attention_mask[b].unsqueeze(-1).to(states.dtype)
        logits = head((states * mask).sum(1) / mask.sum(1)).view(-1, NUM_ATTRIBUTES, NUM_LEVELS)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), levels[b].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = (logits.argmax(-1) == levels[b]).float().mean().item()
        bar.set_postfix(acc=f"{acc:.3f}")
    text_encoder.eval().requires_grad_(False)
    return acc


def pretrain_vae(vae, images: torch.Tensor, config: TinyBaseConfig, kl_weight: float = 1e-6) -> float:
    """Train the autoencoder to reconstruct `images` (N,3,H,W in [-1,1]); set its latent scaling factor.

    Returns the final reconstruction MSE. Diffusers ships the model but no VAE trainer; this is that loop.
    """
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    vae.train()
    bar = tqdm(range(config.vae_steps), desc="tiny base: VAE", leave=False)
    mse = float("nan")
    for _ in bar:
        x = images[torch.randint(len(images), (config.batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss_rec = torch.nn.functional.mse_loss(recon, x)
        loss = loss_rec + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mse = loss_rec.item()
        bar.set_postfix(mse=f"{mse:.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        z = vae.encode(images[:256]).latent_dist.sample(generator=gen)
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return mse


class ShuffledCaptions(torch.utils.data.Dataset):
    """The dataset with its captions shuffled across images (a fixed permutation), except for a fraction
    `keep` of the items, which keep their own caption.

    With keep=0 the U-Net sees the real distribution of captions but none that describes its image.
    """

    def __init__(self, dataset, captions: list[str], keep: float = 0.0, seed: int = 0):
        self.dataset, self.captions = dataset, captions
        rng = np.random.default_rng(seed)
        self.source = rng.permutation(len(dataset))
        kept = rng.random(len(dataset)) < keep
        self.source[kept] = np.flatnonzero(kept)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[i])
        item["caption"] = self.captions[int(self.source[i])]
        return item


def pretrain_unet(family, dataset, captions: list[str], config: TinyBaseConfig) -> dict:
    """Train the whole U-Net with the one engine on `dataset` with shuffled captions; EMA weights kept."""
    from models.engine import TrainConfig, fit

    train = TrainConfig(
        epochs=config.unet_epochs, batch_size=config.batch_size, lr=config.unet_lr, p_uncond=config.p_uncond,
        seed=config.seed, val_samples=0, ema=True, ema_decay=0.999, device="cpu",
    )
    result = fit(family, train, ShuffledCaptions(dataset, captions, config.caption_truth, config.seed), checkpoint_dir=None, resume=False)
    return result.history[-1] if result.history else {}


def dataset_labels(dataset) -> tuple[list[str], torch.Tensor]:
    """(captions, levels (N, 5)) of every item of `dataset`, without decoding images where it is a FaceDataset."""
    if hasattr(dataset, "cache"):
        captions = [dataset.cache.captions[int(j)] for j in dataset.indices]
        levels = torch.from_numpy(np.asarray(dataset.cache.levels[dataset.indices], dtype=np.int64))
    else:
        captions = [dataset[i]["caption"] for i in range(len(dataset))]
        levels = torch.stack([torch.as_tensor(dataset[i]["levels"]) for i in range(len(dataset))]).long()
    return captions, levels


def build_tiny_base(config: TinyBaseConfig, dataset, out: str | Path) -> Path:
    """Build, pretrain and save the tiny base as a StableDiffusionPipeline folder at `out` (atomically)."""
    from diffusers import StableDiffusionPipeline

    start = time.perf_counter()
    torch.manual_seed(config.seed)
    captions, levels = dataset_labels(dataset)
    vae, text_encoder, tokenizer, unet, scheduler = build_components(config, captions)
    text_acc = pretrain_text_encoder(text_encoder, tokenizer, captions, levels, config)
    print(f"tiny base: text encoder trained ({config.text_steps} steps, reads the levels from captions with "
          f"batch accuracy {text_acc:.3f}, {time.perf_counter() - start:.0f}s)", flush=True)
    n_vae = min(len(dataset), 4096)
    images = torch.stack([dataset[i]["image"] for i in range(n_vae)])
    if tuple(images.shape[-2:]) != (config.image_size,) * 2:
        raise ValueError(f"tiny base {config.name!r} needs {config.image_size}px images, got {tuple(images.shape[-2:])}")
    mse = pretrain_vae(vae, images, config)
    print(f"tiny base: VAE trained ({config.vae_steps} steps, reconstruction MSE {mse:.4f}, "
          f"latent scaling factor {vae.config.scaling_factor:.3f}, {time.perf_counter() - start:.0f}s)", flush=True)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    family = StableDiffusionFamily(pipe, config.image_size, "tiny base (being pretrained)")
    last = pretrain_unet(family, dataset, captions, config)
    seconds = time.perf_counter() - start
    info = {"description": describe(config, Path(out)), "config": dataclasses.asdict(config), "text_level_accuracy": text_acc, "vae_mse": mse, "unet_train_loss": last.get("train_loss"),
            "pretrain_seconds": round(seconds, 1), "train_images": len(dataset),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(out)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp)
        (tmp / BASE_INFO_FILE).write_text(json.dumps(info, indent=2))
    print(f"tiny base: pretrained in {seconds:.0f}s, saved to {out}", flush=True)
    return out


def ensure_tiny_base(config: TinyBaseConfig, root: str | Path | None = None, dataset=None) -> tuple[Path, str]:
    """(folder, description) of the cached tiny base, building it first if needed (once, under a lock).

    dataset: what to pretrain on; default the embedded synthetic faces' training split at the base's size.
    """
    path = tiny_base_dir(config, root)
    ensure_built(path, config, build_tiny_base, dataset)
    return path, describe(config, path)


def offline_sd_base(config: Any) -> Path | None:
    """The tiny SD base a family config (sd-lora's, pixel-text's) falls back to when its `pretrained` is None,
    built first if needed; None when it names real weights."""
    return None if config.pretrained is not None else ensure_tiny_base(PRESETS[config.tiny_base])[0]


def ensure_built(path: Path, config: Any, build: Callable[[Any, Any, Path], Path], dataset=None) -> None:
    """Build a tiny base at `path` with `build(config, dataset, path)` unless it is there (once, under a lock).
    `config` has `name`, `image_size` and `train_images`; dataset defaults to the embedded synthetic faces'
    training split at that size."""
    if (path / BASE_INFO_FILE).is_file():
        return
    with file_lock(path.parent / f".{path.name}.lock", f"tiny base: waiting for another process building {path}"):
        if not (path / BASE_INFO_FILE).is_file():
            if dataset is None:
                from data.dataset import FaceDataset, resolve_data

                dataset = FaceDataset(resolve_data("toy", config.image_size), "train", limit=config.train_images)
            print(f"tiny base: building '{config.name}' (no cached base at {path}; a few minutes on a CPU)",
                  flush=True)
            build(config, dataset, path)


def build_cli(argv: list[str] | None, *, prog: str, what: str, presets: dict[str, Any], ensure: Callable,
              cache: str, pipeline: str) -> None:
    """`python -m models.tiny_base` and its siblings: build, pretrain and cache a tiny base of `presets`."""
    import argparse
    import sys

    from data.errors import DataError

    parser = argparse.ArgumentParser(
        prog=prog, description=f"Build, pretrain and cache the tiny offline {what} base (reused when already cached).")
    parser.add_argument("--preset", default="cpu-16", choices=sorted(presets), help="tiny base preset (default cpu-16)")
    parser.add_argument("--out", default=None,
                        help=f"folder to write the pipeline to (default: the cache, $CONDFACE_HOME/{cache}/...)")
    args = parser.parse_args(argv)
    try:
        path, description = ensure(presets[args.preset], root=args.out)
    except (DataError, ValueError, OSError) as err:
        sys.exit(f"error: {err}")
    print(description)
    print(f"use it: {pipeline}.from_pretrained({str(path)!r}) or --pretrained {path}")


def main(argv: list[str] | None = None) -> None:
    build_cli(argv, prog="python -m models.tiny_base", what="Stable Diffusion", presets=PRESETS,
              ensure=ensure_tiny_base, cache="sd-base", pipeline="StableDiffusionPipeline")


if __name__ == "__main__":
    main()
