"""The attribute estimator: a transformers ResNet whose pooled features feed five 6-way heads.

The study's estimator is a ResNet-50 (ImageNet weights) with, per attribute, dropout 0.2 and a linear
layer with 6 outputs; the loss is the mean of the five cross-entropies. Here the backbone is
transformers' `ResNetModel` (no torchvision), built from a `ResNetConfig`, optionally initialised
from `microsoft/resnet-50` (or a local copy). Inputs are images in [0, 1]; the model resizes them
to its `input_size` and normalises them with the ImageNet statistics, so the same estimator scores
16, 32 or 64 px images.

Presets:
    study  ResNet-50, 64 px input, ImageNet weights when they can be loaded (else from scratch, and the
           training report says so); phase 1: 5 epochs heads only at lr 1e-3, phase 2: 15 epochs of the
           whole network at lr 1e-4; Adam; ReduceLROnPlateau(patience 5) on validation accuracy.
    small  the CPU / embedded default: a 3-stage basic-block ResNet (0.32M parameters) at 32 px input
           (16 px images are upscaled, 64 px downscaled) whose stem keeps its stride-2 convolution but
           drops the max-pool, so the last stage still sees 4x4 (CIFAR-style ResNets do the same for
           small images; +4 points of accuracy on the synthetic faces for 2x the compute). Trained from
           scratch: a random backbone has nothing worth freezing, so phase 1 is skipped and phase 2
           trains the whole network for 6 epochs at a from-scratch learning rate (3e-3, batch 64); same
           loss, heads, Adam and ReduceLROnPlateau, with patience 1 because the run is only 6 epochs.
           30% of the training images get a blur / down-up resize / noise (evaluation/degrade.py), so
           soft generated faces are still read: that costs ~1 point of clean accuracy and gains 4-13
           points on degraded faces. ~85 s of one CPU core on the 20k-image toy sets.

Saved as a directory: `estimator.safetensors` + `config.json` (+ the training report).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import ResNetConfig, ResNetModel

from data.cli import first_line
from data.io import atomic_dir
from data.schema import ATTRIBUTES, NUM_LEVELS
from evaluation.errors import EvalError

WEIGHTS_NAME = "estimator.safetensors"
CONFIG_NAME = "config.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EstimatorConfig:
    preset: str
    embedding_size: int
    hidden_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    layer_type: str  # "basic" | "bottleneck"
    input_size: int
    pretrained: str | None  # Hugging Face id or local directory of a ResNetModel; None = from scratch
    stem_pool: bool = True  # False drops the stem's max-pool (stride 4 -> 2), keeping detail in small inputs
    dropout: float = 0.2
    heads_epochs: int = 5  # phase 1 (only with a pretrained backbone)
    heads_lr: float = 1e-3
    full_epochs: int = 15  # phase 2
    full_lr: float = 1e-4
    batch_size: int = 32
    patience: int = 5  # ReduceLROnPlateau on validation accuracy
    augment: str = "study"  # data.augment name
    degrade: float = 0.0  # probability of one blur / resize / noise degradation per training image (degrade.py)
    train_limit: int | None = None  # use only the first N training images (None: all)
    seed: int = 0
    # Training speed (scoring always runs in fp32). "auto": per models.runtime's policy for the estimator; "bf16":
    # always; "no": fp32. channels_last None: auto (the same policy). compile: torch.compile the training forward.
    mixed_precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False

    def replace(self, **changes) -> EstimatorConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> EstimatorConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        return cls(**{**d, "hidden_sizes": tuple(d["hidden_sizes"]), "depths": tuple(d["depths"])})

    def resnet_config(self) -> ResNetConfig:
        return ResNetConfig(
            embedding_size=self.embedding_size,
            hidden_sizes=list(self.hidden_sizes),
            depths=list(self.depths),
            layer_type=self.layer_type,
        )


ESTIMATOR_PRESETS: dict[str, EstimatorConfig] = {
    "study": EstimatorConfig(
        preset="study", embedding_size=64, hidden_sizes=(256, 512, 1024, 2048), depths=(3, 4, 6, 3),
        layer_type="bottleneck", input_size=64, pretrained="microsoft/resnet-50",
    ),
    "small": EstimatorConfig(
        preset="small", embedding_size=32, hidden_sizes=(32, 64, 128), depths=(1, 1, 1), layer_type="basic",
        input_size=32, pretrained=None, stem_pool=False, heads_epochs=0, full_epochs=6, full_lr=3e-3,
        batch_size=64, patience=1, augment="none", degrade=0.3,
    ),
}


def estimator_preset(name: str, **overrides) -> EstimatorConfig:
    if name not in ESTIMATOR_PRESETS:
        raise EvalError(f"unknown estimator preset {name!r}: use one of {', '.join(ESTIMATOR_PRESETS)}")
    return ESTIMATOR_PRESETS[name].replace(**overrides)


class AttributeEstimator(nn.Module):
    """pixels (B, 3, H, W) in [0, 1] -> logits (B, 5, 6); `features` gives the pooled backbone features."""

    def __init__(self, config: EstimatorConfig, backbone: ResNetModel | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else ResNetModel(config.resnet_config())
        if not config.stem_pool:
            self.backbone.embedder.pooler = nn.Identity()
        self.num_features = int(config.hidden_sizes[-1])
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Dropout(config.dropout), nn.Linear(self.num_features, NUM_LEVELS)) for _ in ATTRIBUTES
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.mean.dtype)
        if x.shape[-2:] != (self.config.input_size, self.config.input_size):
            x = F.interpolate(x, size=self.config.input_size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return self.backbone(pixel_values=x).pooler_output.flatten(1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(features) for head in self.heads], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(pixels))

    @torch.no_grad()
    def predict(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> predicted levels (B, 5) int64."""
        return self(images_uint8.to(self.mean.device).float() / 255.0).argmax(-1)

    def write(self, directory: str | Path, extra: dict | None = None) -> None:
        """Write weights + config into an existing directory (use `save` or data.io.atomic_dir for atomicity)."""
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, directory / WEIGHTS_NAME)
        meta = {"config": self.config.to_json(), "attributes": list(ATTRIBUTES), **(extra or {})}
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2))

    def save(self, out: str | Path, extra: dict | None = None) -> Path:
        with atomic_dir(out) as tmp:
            self.write(tmp, extra)
        return Path(out)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> AttributeEstimator:
        path = Path(path)
        if not (path / WEIGHTS_NAME).is_file() or not (path / CONFIG_NAME).is_file():
            raise EvalError(
                f"no attribute estimator at {path}: train one with "
                f"`python -m evaluation.train_estimator --data toy --out {path}`"
            )
        meta = json.loads((path / CONFIG_NAME).read_text())
        if tuple(meta.get("attributes", ())) != ATTRIBUTES:
            raise EvalError(f"estimator {path} was trained for attributes {meta.get('attributes')}: retrain it")
        model = cls(EstimatorConfig.from_json(meta["config"]))
        model.load_state_dict(load_file(path / WEIGHTS_NAME))
        return model.to(device).eval()


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def build_estimator(config: EstimatorConfig, hub_download: bool = False) -> tuple[AttributeEstimator, str]:
    """A fresh estimator and a note on its initialisation (ImageNet weights, or from scratch and why)."""
    if config.pretrained is None:
        return AttributeEstimator(config), "backbone initialised at random (preset trains from scratch)"
    try:
        backbone = ResNetModel.from_pretrained(config.pretrained, local_files_only=not hub_download)
    except (OSError, ValueError) as err:
        reason = first_line(err)
        return AttributeEstimator(config), (
            f"ImageNet weights {config.pretrained!r} could not be loaded ({reason[:160]}); "
            "backbone trained FROM SCRATCH"
        )
    # the saved estimator is rebuilt from EstimatorConfig alone, so the pretrained architecture must match it
    expected, got = config.resnet_config(), backbone.config
    fields = ("embedding_size", "hidden_sizes", "depths", "layer_type", "hidden_act", "downsample_in_first_stage",
              "downsample_in_bottleneck")
    diff = [f for f in fields if _plain(getattr(got, f, None)) != _plain(getattr(expected, f, None))]
    if diff:
        raise EvalError(
            f"pretrained backbone {config.pretrained} differs from preset {config.preset} in "
            + ", ".join(f"{f} ({getattr(got, f, None)} vs {getattr(expected, f, None)})" for f in diff)
            + ": use a matching preset or backbone"
        )
    return AttributeEstimator(config, backbone=backbone), f"backbone initialised from {config.pretrained}"
