"""What the evaluation needs to know: which metric models to load, where from, and on which device."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evaluation.errors import EvalError

if TYPE_CHECKING:
    import torch

FID_PROTOCOLS = ("paired", "unpaired")
# Sample counts. The study computed FID on 100 (final comparison) and 250 (CFG sweep) samples, which
# biases FID strongly upward; `large` is the usual protocol for numbers comparable with the literature.
FID_SAMPLES = {"study-final": 100, "study-cfg": 250, "large": 10_000}


def eval_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device evaluation runs on, from the project's one resolver (`models.runtime.resolve_device`).

    Its ConfigError (a cuda request without a visible GPU, an unknown name) becomes the evaluation
    layer's one-line EvalError with the same message, so every evaluation entry point reports it alike.
    """
    from models.errors import ConfigError
    from models.runtime import resolve_device

    try:
        return resolve_device(name)
    except ConfigError as err:
        raise EvalError(str(err)) from None


@dataclass(frozen=True)
class EvalConfig:
    """Which metrics to compute and with which model files.

    estimator: directory written by `evaluation.train_estimator` (None: estimator metrics unavailable).
    inception_weights: the torch-fidelity Inception file `weights-inception-2015-12-05-6726825d.pth`
        (None: look in torch hub's checkpoint cache). Without it or without torch-fidelity, `fid` is
        recorded unavailable and `fd_estimator` stands in.
    clip_model: a Hugging Face CLIP id or a local directory (None: clip_score unavailable).
    hub_download: allow downloads from the Hugging Face Hub; off by default so offline runs fail fast.
    mtcnn_size: images are upscaled to this many pixels before MTCNN (see metrics/mtcnn.py).
    """

    estimator: str | None = None
    inception_weights: str | None = None
    clip_model: str | None = None
    mtcnn: bool = True
    mtcnn_size: int = 160
    fid_protocol: str = "paired"
    device: str = "auto"  # "auto" (cuda when available) | "cpu" | "cuda" | "cuda:N"
    batch_size: int = 64
    hub_download: bool = False

    def __post_init__(self) -> None:
        if self.fid_protocol not in FID_PROTOCOLS:
            raise EvalError(f"unknown FID protocol {self.fid_protocol!r}: use one of {', '.join(FID_PROTOCOLS)}")
        if self.batch_size < 1:
            raise EvalError(f"evaluation batch size must be >= 1, got {self.batch_size}")
        if self.mtcnn_size < 48:
            raise EvalError(f"mtcnn_size must be >= 48 px (MTCNN's last stage sees 48x48 crops), got {self.mtcnn_size}")

    def replace(self, **changes) -> EvalConfig:
        return dataclasses.replace(self, **changes)


EVAL_PRESETS: dict[str, EvalConfig] = {
    # The study: Inception FID, MTCNN, CLIP score with torchmetrics' default CLIP, the ResNet-50 estimator.
    "study": EvalConfig(clip_model="openai/clip-vit-large-patch14"),
    # The CPU demo: no CLIP model offline; FID falls back to the estimator's features unless Inception is there.
    "cpu": EvalConfig(),
}


def eval_preset(name: str, **overrides) -> EvalConfig:
    if name not in EVAL_PRESETS:
        raise EvalError(f"unknown evaluation preset {name!r}: use one of {', '.join(EVAL_PRESETS)}")
    return EVAL_PRESETS[name].replace(**overrides)
