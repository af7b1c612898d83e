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


def _ddpm() -> FamilySpec:
    from models.ddpm import PRESETS, DDPMFamily, ddpm_config
    from models.pipeline_ddpm import AttributeDiffusionPipeline

    return FamilySpec(presets=tuple(PRESETS), config=ddpm_config, build=DDPMFamily,
                      load=AttributeDiffusionPipeline.from_pretrained)


def _sd_lora() -> FamilySpec:
    from models.sd_lora import PRESETS, SDLoRAFamily, load_pipeline, lora_config

    return FamilySpec(presets=tuple(PRESETS), config=lora_config, build=SDLoRAFamily, load=load_pipeline)


def _if_lora() -> FamilySpec:
    from models.if_lora import PRESETS, IFLoRAFamily, if_lora_config, load_pipeline

    return FamilySpec(presets=tuple(PRESETS), config=if_lora_config, build=IFLoRAFamily, load=load_pipeline)


FAMILIES: dict[str, Callable[[], FamilySpec]] = {"ddpm": _ddpm, "sd-lora": _sd_lora, "if-lora": _if_lora}


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
