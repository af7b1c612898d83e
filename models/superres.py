"""DeepFloyd IF stage II: 4x super-resolution of generated faces to 256 px (the study's Figure 4.10).

The study ran IF's second stage on some of its 64 px samples "a modo de prueba" (§4.3). Here it runs where its
weights are present -- the Hub id `DeepFloyd/IF-II-M-v1.0` in the local Hugging Face cache, or a local folder of
the same layout -- and is otherwise unavailable, with the reason: nothing is downloaded and nothing stands in.
Each image is upscaled with its own caption as the prompt (IF's T5 text encoder, which the folder must hold).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IF_STAGE_II = "DeepFloyd/IF-II-M-v1.0"
OUTPUT_SIZE = 256


class SuperResUnavailable(RuntimeError):
    """IF stage II cannot run here; the message is the one-line reason."""


def load_superres(id_or_path: str):
    """IFSuperResolutionPipeline from a local folder or the local Hub cache (never the network), without its
    safety checker and watermarker (research use, as the study's); SuperResUnavailable when it is not there."""
    from diffusers import IFSuperResolutionPipeline

    from models.if_family import SENTENCEPIECE_MISSING, sentencepiece_missing

    local = Path(id_or_path).expanduser()
    source = str(local) if local.exists() else id_or_path
    if sentencepiece_missing(local):
        raise SuperResUnavailable(f"IF stage II at {local}: {SENTENCEPIECE_MISSING}")
    try:
        pipe = IFSuperResolutionPipeline.from_pretrained(source, safety_checker=None, feature_extractor=None,
                                                         watermarker=None, requires_safety_checker=False,
                                                         local_files_only=True)
    except Exception as err:  # noqa: BLE001 -- absent, partial or foreign folders fail in many ways: each is a reason
        if sentencepiece_missing(local, err):
            raise SuperResUnavailable(f"IF stage II {id_or_path!r}: {SENTENCEPIECE_MISSING}") from None
        where = f"folder {local}" if local.exists() else f"{id_or_path!r} is not a folder here nor in the local " \
                                                         "Hugging Face cache (offline: nothing is downloaded)"
        raise SuperResUnavailable(f"IF stage II weights not loadable from {where}: "
                                  f"{str(err).strip().splitlines()[0][:200]}") from None
    if pipe.text_encoder is None or pipe.tokenizer is None:
        raise SuperResUnavailable(f"{id_or_path} has no T5 text encoder and tokenizer: IF stage II needs them to "
                                  "read the captions")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def upscale(pipe, images: np.ndarray, captions: list[str], seed: int, steps: int = 50,
            noise_level: int = 250) -> np.ndarray:
    """uint8 (n, h, w, 3) images -> uint8 (n, 256, 256, 3) (the unet's sample size), one caption each."""
    device = pipe.unet.device
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    size = pipe.unet.config.sample_size
    out = pipe(prompt=list(captions), image=x, height=size, width=size, num_inference_steps=steps,
               noise_level=noise_level, generator=torch.Generator(device="cpu").manual_seed(seed),
               output_type="pt", clean_caption=False).images
    return ((out.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


__all__ = ["IF_STAGE_II", "SuperResUnavailable", "load_superres", "upscale", "OUTPUT_SIZE"]
