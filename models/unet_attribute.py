"""The attribute-conditioned U-Net of the DDPM family, alone in its module.

`AttributeUNet` is diffusers' `UNet2DModel` (ResNet blocks with `resnet_time_scale_shift=
"scale_shift"`, i.e. AdaGN) with a learned `Linear(30, time_embed_dim)` in front of its identity
class embedding: the projected attribute vector c is added to the time embedding, as class
conditioning is in "Diffusion models beat GANs". The all-zero c is the unconditional input.

It lives here, below both `models.pipeline_ddpm` (which imports it so that
`AttributeDiffusionPipeline.from_pretrained` finds the class in a fresh process) and `models.ddpm`
(presets and the family adapter), so that imports point one way:
unet_attribute <- pipeline_ddpm <- ddpm. `models.ddpm.AttributeUNet` still names it.

Self-contained (torch and diffusers only): a saved pipeline folder carries this file as
`unet/unet_attribute.py`, so that plain diffusers can load the folder with `trust_remote_code=True`
in a process that has never imported this project (see `models.pipeline_ddpm`).
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

COND_DIM = 30  # data.schema.COND_DIM (5 attributes x 6 levels), written out: this file is saved with the weights


class AttributeUNet(ModelMixin, ConfigMixin):
    """UNet2DModel + a learned projection of the 30-value attribute vector into its time embedding."""

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (256, 512, 768, 768),
        layers_per_block: int = 2,
        attention: str = "all",
        attention_head_dim: int = 64,
        norm_num_groups: int = 32,
        dropout: float = 0.0,
        cond_dim: int = COND_DIM,
    ):
        super().__init__()
        levels = len(block_out_channels)
        with_attn = {"all": [True] * levels, "lowest": [False] * (levels - 1) + [True], "none": [False] * levels}
        attn = with_attn[attention]
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            dropout=dropout,
            resnet_time_scale_shift="scale_shift",
            add_attention=attention != "none",
            class_embed_type="identity",
        )
        self.cond_proj = torch.nn.Linear(cond_dim, block_out_channels[0] * 4)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor, return_dict: bool = True
    ) -> UNet2DOutput | tuple:
        emb = self.cond_proj(cond.to(self.cond_proj.weight.dtype))
        return self.unet(sample, timestep, class_labels=emb, return_dict=return_dict)


__all__ = ["AttributeUNet"]
