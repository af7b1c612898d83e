"""Runs described in words (their `mlflow.note.content`) and image caches as MLflow dataset inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.catalogue import CHAMPION_ALIAS, TAG_PREFIX


def param_str(v: Any) -> str:
    """A param value as MLflow stores it: sequences comma-joined, None as "none", within MLflow's length limit."""
    if isinstance(v, (list, tuple)):
        v = ",".join(str(x) for x in v)
    return ("none" if v is None else str(v))[:6000]


def dataset_input(data_root: str | Path, context: str = "training"):
    """An image cache as an MLflow dataset input: named by its folder, digest = md5 of its manifest (what it
    holds and how it was made), source = its path, schema = what a data item is."""
    import hashlib

    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, DataType, Schema

    from data.schema import ATTRIBUTES

    root = Path(data_root).resolve()
    digest = hashlib.md5((root / "manifest.json").read_bytes()).hexdigest()[:8]
    schema = Schema([ColSpec(DataType.binary, "image"), *(ColSpec(DataType.long, a) for a in ATTRIBUTES),
                     ColSpec(DataType.string, "caption")])
    dataset = MetaDataset(LocalArtifactDatasetSource(str(root)), name=root.name, digest=digest, schema=schema)
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])


def run_description(name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """What a run is, in words (its `mlflow.note.content`), from its phase tag, name and params."""
    phase, family = tags.get(f"{TAG_PREFIX}phase"), tags.get(f"{TAG_PREFIX}family", "")
    p = {k: param_str(v) for k, v in params.items()}

    def axes() -> str:
        snr = p.get("trial.min_snr_gamma", "none")
        parts = [f"gradient accumulation {p.get('trial.grad_accum')}", f"T = {p.get('trial.timesteps')}",
                 f"Min-SNR {'off' if snr in ('none', '0', '0.0') else 'gamma ' + snr}"]
        if p.get("trial.channels") not in (None, "none"):
            parts.append(f"channels {p['trial.channels']} ({p.get('trial.channels_list', '?')})")
        if p.get("trial.lora_rank") not in (None, "none"):
            parts.append(f"LoRA rank {p['trial.lora_rank']}")
        parts.append(f"augmentation {p.get('trial.augment', p.get('augment', '?'))}")
        parts.append(f"lr {p.get('trial.lr', '?')}, guidance {p.get('trial.guidance_scale', '?')}")
        return ", ".join(parts)

    if phase == "sweep":
        return (f"The sweep {name} ({family}, preset {tags.get(f'{TAG_PREFIX}preset', '?')}): its nested runs are "
                "the reference rows, the grid trials, the final run(s) and the CFG sweep(s); the study's summary "
                "metrics are logged here.")
    if phase == "grid":
        return (f"Grid trial of the {family} study ({name}): {axes()}. Trained {p.get('train.epochs', '?')} "
                f"epoch(s); every epoch it samples a fixed, seeded set of validation conditions, scores them "
                f"(ranked by {p.get('select_metric', '?')}) and draws the attribute grid (the image series).")
    if phase == "final":
        registered = (f"registered in the Model Registry with the alias '{CHAMPION_ALIAS}' (the logged model below)"
                      if tags.get(f"{TAG_PREFIX}seed_role") != "spread" else
                      "not registered: a further seed of the same configuration, for the seed-to-seed spread")
        return (f"Final run of {family} ({name}): the grid's best configuration -- {axes()} -- retrained for "
                f"{p.get('train.epochs', '?')} epoch(s) with seed {p.get('train.seed', '?')}, scored on the final "
                f"sample set (final_* metrics) and {registered}.")
    if phase == "reference":
        return (f"Reference rows ({name.split(': ', 1)[-1]}): scored by the same evaluation code as the models, "
                "for the study's Table 3.1; metrics are named <row>.<metric>.")
    if phase == "cfg":
        return (f"CFG sweep of the final {family} model: guidance scales {p.get('cfg_scales', '?')}, "
                f"{p.get('cfg_samples', '?')} samples each; one step per scale, image quality vs estimator "
                "accuracy in cfg/cfg_pareto.png.")
    if phase == "samplers":
        return (f"Sampler sweep of the final {family} model: every sampler x step count, image quality and "
                "accuracy against the number of U-Net passes.")
    return name
