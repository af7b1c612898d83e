"""Model families by name, so callers never branch on family internals.

    config = family_config("ddpm", "cpu-tiny", num_train_timesteps=10_000)
    family = build_family("ddpm", config, seed=0)

    pipe = load_pipeline("ddpm", "runs/final/pipeline")  # what a family's save_pretrained wrote

A family registers a `FamilySpec` factory in FAMILIES (imported lazily: building the registry
loads no model code).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from models.errors import ConfigError
from models.family import DiffusionFamily


@dataclass(frozen=True)
class FamilySpec:
    presets: tuple[str, ...]
    config: Callable[..., Any]  # (preset, **overrides) -> the family's frozen config dataclass
    build: Callable[[Any], DiffusionFamily]  # config -> family with freshly initialised weights
    load: Callable[[str], DiffusionPipeline]  # folder written by the family's save_pretrained -> sampling pipeline
    # config -> one line naming the pretrained weights the family builds on (a base, a text encoder), without loading
    # them; None: it builds on nothing pretrained. Printed by the sweep and tagged condface.base on every run.
    base: Callable[[Any], str] | None = None
    real_base_hint: str | None = None  # how to use the real base, said when a config falls back to a tiny stand-in
    # config -> the folder of the tiny offline base it falls back to, built and cached first if needed; None when it
    # names real weights. The sweep calls it once, with the node's CPUs, before any trial needs the base.
    offline_base: Callable[[Any], Path | None] | None = None


def _ddpm() -> FamilySpec:
    from models.ddpm import PRESETS, DDPMFamily, ddpm_config
    from models.pipeline_ddpm import AttributeDiffusionPipeline

    return FamilySpec(presets=tuple(PRESETS), config=ddpm_config, build=DDPMFamily,
                      load=AttributeDiffusionPipeline.from_pretrained)


def _sd_lora() -> FamilySpec:
    from models.sd_lora import PRESETS, REAL_BASE_HINT, SDLoRAFamily, base_summary, load_pipeline, lora_config
    from models.tiny_base import offline_sd_base

    return FamilySpec(presets=tuple(PRESETS), config=lora_config, build=SDLoRAFamily, load=load_pipeline,
                      base=base_summary, real_base_hint=REAL_BASE_HINT, offline_base=offline_sd_base)


def _pixel_text() -> FamilySpec:
    from models.pixel_text import (
        PRESETS,
        REAL_TEXT_ENCODER_HINT,
        PixelTextFamily,
        PixelTextPipeline,
        pixel_text_config,
        text_encoder_summary,
    )
    from models.tiny_base import offline_sd_base

    return FamilySpec(presets=tuple(PRESETS), config=pixel_text_config, build=PixelTextFamily,
                      load=PixelTextPipeline.from_pretrained, base=text_encoder_summary,
                      real_base_hint=REAL_TEXT_ENCODER_HINT, offline_base=offline_sd_base)


def _if_lora() -> FamilySpec:
    from models.if_lora import PRESETS, REAL_BASE_HINT, IFLoRAFamily, base_summary, if_lora_config, load_pipeline
    from models.tiny_if_base import offline_if_base

    return FamilySpec(presets=tuple(PRESETS), config=if_lora_config, build=IFLoRAFamily, load=load_pipeline,
                      base=base_summary, real_base_hint=REAL_BASE_HINT, offline_base=offline_if_base)


# One entry per family, in data.catalogue.FAMILIES' order (a test checks that both name the same families).
FAMILIES: dict[str, Callable[[], FamilySpec]] = {"ddpm": _ddpm, "sd-lora": _sd_lora, "pixel-text": _pixel_text,
                                                 "if-lora": _if_lora}
# The file a family's save_pretrained writes that tells its folders apart, checked in this order. Last, the DDPM's:
# a DDPM folder saved before condface_ddpm.json existed holds only diffusers' model_index.json (see family_of).
MARKERS: dict[str, str] = {"sd-lora": "condface_lora.json", "pixel-text": "condface_pixel_text.json",
                           "if-lora": "condface_if_lora.json", "ddpm": "condface_ddpm.json"}


def family_spec(model: str) -> FamilySpec:
    if model not in FAMILIES:
        raise ConfigError(f"unknown model {model!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[model]()


def family_config(model: str, preset: str, **overrides: Any) -> Any:
    """The named preset of `model` with field overrides (unknown fields raise ConfigError)."""
    try:
        return family_spec(model).config(preset, **overrides)
    except TypeError as err:  # dataclasses.replace on an unknown field
        raise ConfigError(f"bad {model} setting: {err}") from err


def build_family(model: str, config: Any, seed: int = 0, verbose: bool = True) -> DiffusionFamily:
    """A fresh family whose weight initialisation is seeded (the global RNG is left untouched).
    verbose=False: families that describe themselves on construction (sd-lora: its base) stay quiet."""
    import inspect

    spec = family_spec(model)
    quiet = {} if verbose or "verbose" not in inspect.signature(spec.build).parameters else {"verbose": False}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build(config, **quiet)


def family_of(folder: str | Path) -> str:
    """The family whose save_pretrained wrote `folder` (by the file each family marks its folders with), or
    ConfigError."""
    folder = Path(folder)
    for family, marker in MARKERS.items():
        if (folder / marker).is_file():
            return family
    if (folder / "model_index.json").is_file():
        return "ddpm"
    raise ConfigError(f"{folder} holds no saved condface model (none of {', '.join(MARKERS.values())} or "
                      "model_index.json): point at a pipeline folder, an MLflow model, or a models:/ or runs:/ URI")


def load_pipeline(model: str, path: str | Path) -> DiffusionPipeline:
    """The sampling pipeline saved at `path` by a `model` family's save_pretrained, or inside an MLflow model
    folder (what `mlflow.artifacts.download_artifacts("models:/condface-ddpm@champion")` gives; its sd-lora base
    comes from the model too, see models.mlflow_model). One-line error if absent."""
    if not Path(path).is_dir():
        raise ConfigError(f"no saved {model} pipeline at {path}: point at the folder save_pretrained wrote")
    if (Path(path) / "MLmodel").is_file():
        from models.mlflow_model import load_resolved, resolve_folder

        resolved = resolve_folder(path)
        if resolved.family != model:
            raise ConfigError(f"the MLflow model at {path} is a {resolved.family} model, not {model}")
        return load_resolved(resolved)
    return family_spec(model).load(str(path))
