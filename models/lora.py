"""What the LoRA families share: peft adapters on a frozen diffusers U-Net, their settings and saved info.

Used by `models.sd_lora` (Stable Diffusion Nano, latent space) and `models.if_lora` (DeepFloyd IF stage I,
pixel space). Each saves only its adapters (diffusers' LoRA format, safetensors) beside a JSON naming the
family, the settings and the training schedule (sd-lora: `LORA_INFO_FILE`; each family its own file name, which
tells its folders apart), and loads them onto a fresh base with the pipeline's `load_lora_weights`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.errors import ConfigError

# The attention projections of diffusers' `Attention`: queries, keys, values and output, in self- and
# cross-attention blocks alike.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_INFO_FILE = "condface_lora.json"


def add_lora(unet: torch.nn.Module, rank: int, alpha: float | None = None,
             targets: Sequence[str] = LORA_TARGETS) -> None:
    """Freeze `unet` and add a peft LoRA adapter (B = 0 at start) on every module named in `targets`.

    Only the adapter weights require grad afterwards; they are kept in fp32 whatever the base's dtype.
    """
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, init_lora_weights="gaussian",
                   target_modules=list(targets))
    )
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def lora_state_dict(unet: torch.nn.Module, peft_names: bool = False) -> dict[str, torch.Tensor]:
    """The U-Net's adapters for a pipeline's `save_lora_weights`: in diffusers' older key format, or with
    `peft_names` in peft's (`lora_A`/`lora_B`), which `load_lora_weights` reads too. IF needs peft's: the
    older format has names for the `to_*` projections only, and a mix of both formats loads only one part."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    return state if peft_names else convert_state_dict_to_diffusers(state)


def check_lora_settings(rank: int, num_train_timesteps: int, prediction_type: str | None) -> None:
    """ConfigError for a LoRA rank, T or prediction type no family can train with."""
    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    if num_train_timesteps < 2:
        raise ConfigError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    if prediction_type not in (None, "epsilon", "v_prediction"):
        raise ConfigError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")


def read_lora_info(lora_dir: str | Path, family: str, info_file: str = LORA_INFO_FILE) -> dict[str, Any]:
    """The JSON a `family` LoRA saved beside its weights as `info_file`; ConfigError if `lora_dir` holds none."""
    path = Path(lora_dir) / info_file
    if not path.is_file():
        raise ConfigError(f"{lora_dir} holds no {family} weights (no {info_file}); point at a saved LoRA folder")
    return json.loads(path.read_text())

