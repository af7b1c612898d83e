"""Trained models in MLflow's own formats, and one loader for every form a trained model takes.

**The pyfunc model (`CondfaceModel`)**, for every family: an `mlflow.pyfunc` model whose artifacts are
the family's `save_pretrained` folder (`pipeline`), a small JSON (`condface`: family, sampling defaults,
the training data's attribute-level frequencies) and, for an sd-lora or if-lora on a tiny offline base, that
base's folder (`base`). `code_paths` ships this project's `models` and `data` packages with it, so the
served model needs only the packages in its requirements, never a checkout of this project.

    model = mlflow.pyfunc.load_model("models:/condface-ddpm@champion")
    out = model.predict(pd.DataFrame({"bangs": [0, 5], "smiling": [5, 0]}), params={"guidance_scale": 3.0})
    png_bytes = base64.b64decode(out["image"][0])

    mlflow models serve -m models:/condface-ddpm@champion --env-manager local -p 5001
    curl -X POST localhost:5001/invocations -H 'Content-Type: application/json' \
         -d '{"dataframe_records": [{"bangs": 5, "smiling": 0}], "params": {"seed": 3}}'
    -> {"predictions": [{"image": "<base64 PNG>", "bangs": 5, "eyeglasses": 2, ...}]}

Input: a DataFrame, one row per image. DDPM: integer columns `bangs`, `eyeglasses`, `beard`, `smiling`,
`age` (levels 0..5). A column left out, or -1 in a row, means "any": that attribute's level is drawn per
image from the training data's level frequencies saved with the model (uniform where none were saved).
(Not a missing value in some rows: MLflow's schema check refuses NaN in an integer column, so every JSON
record must name the same attributes.) sd-lora: the
same columns (turned into captions in the training captions' style) or a string column `prompt`.
Params (`ParamSchema`, all optional): `guidance_scale` (double), `num_inference_steps` (long; 0 = the
model's whole chain), `sampler` ("ddpm" | "ddim" | "dpm++"), `seed` (long), `precision` ("auto" | "bf16" |
"no": the denoiser under bf16 autocast or in fp32, as `models.sampling.generate`); their defaults are what
the sweep evaluated the model with. Output: a DataFrame with `image` -- the image as a base64-encoded PNG
string -- and, per row, the levels it was drawn for (DDPM, and sd-lora without prompts) or its `prompt`.

**The LoRA and MLflow's diffusers flavor.** MLflow 3.x has `mlflow.diffusers`: LoRA adapter weights
plus a reference to the base (a Hub id or a local path); its pyfunc loads the base with
`DiffusionPipeline.from_pretrained` and applies the adapter. It is used (`choose_flavor`) for an sd-lora
trained on a Hub base (`--pretrained bguisard/stable-diffusion-nano-2-1`) whose training schedule is the
base's own. It cannot express what the project's default needs: the tiny offline base is built on this
machine (a local path in the flavor points into this machine's cache), and a LoRA trained with another
T (the study's T = 10,000) would be sampled by the flavor's pyfunc on the base's T = 1000 chain. Those
(and a base in a local folder) get the pyfunc, which ships the tiny base as its `base` artifact or,
for another base, names it in the JSON (`base`; pass `model_config={"base": ...}` to point elsewhere).
An if-lora always gets the pyfunc: the flavor's pipeline would sample IF with its learned variance, which
LoRA training on epsilon leaves untrained (models.if_family).
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from data.catalogue import redact_uri, text_conditioned
from data.cli import first_line
from data.schema import ATTRIBUTES, NUM_LEVELS
from data.synthetic_captions import level_captions
from models.errors import ConfigError
from models.runtime import MIXED_PRECISIONS
from models.schedulers import SAMPLERS

INFO_ARTIFACT = "condface"
INFO_FILE = "condface_model.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
REQUIREMENTS = ("torch", "diffusers", "transformers", "peft", "safetensors", "accelerate", "numpy", "pandas",
                "pillow", "mlflow")
ANY = -1  # an input level meaning "any" (drawn from the data's level frequencies)
LORA_LOADERS = {"sd-lora": "models.sd_lora", "if-lora": "models.if_lora"}  # families saved as adapters on a base
# The pyfunc's code (MLflow's "models from code"): run when the model loads, with the shipped packages on sys.path.
ENTRY_POINT = ("import mlflow\n\nfrom models.mlflow_model import CondfaceModel\n\n"
               "mlflow.models.set_model(CondfaceModel())\n")


# --------------------------------------------------------------------------------------------------
# What a folder holds
# --------------------------------------------------------------------------------------------------
def download(model: str, uri: str) -> Path:
    """The local copy of `model` (models:/, runs:/ or mlflow-artifacts: URI) from the MLflow store at `uri`."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError(f"no MLflow store at {redact_uri(uri)}: pass --tracking-uri (or set MLFLOW_TRACKING_URI)")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model, tracking_uri=uri))
    except mlflow.MlflowException as err:
        raise ConfigError(redact_uri(f"cannot get {model} from {uri}: {first_line(err.message)}")) from None
    except OSError as err:
        raise ConfigError(redact_uri(f"cannot get {model} from {uri}: {err}")) from None


def family_of(folder: str | Path) -> str:
    """The family of a `save_pretrained` folder (`models.families.family_of`), or ConfigError."""
    from models.families import family_of as of

    return of(folder)


@dataclasses.dataclass
class Resolved:
    """A trained model found in a folder: its family, its `save_pretrained` folder (None for an MLflow
    diffusers-flavor LoRA), what the MLflow model says about it (empty for a plain folder) and its base."""

    family: str
    pipeline_dir: Path | None
    info: dict[str, Any]
    base: str | None = None
    flavor: str = "folder"  # "folder" | "pyfunc" | "diffusers"
    mlflow_dir: Path | None = None


def resolve_folder(folder: str | Path) -> Resolved:
    """A `save_pretrained` folder, or an MLflow model folder (this module's pyfunc or a diffusers-flavor LoRA)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"no model at {folder}: give a pipeline folder, an MLflow model folder, or a models:/ or "
                          "runs:/ URI")
    if not (folder / "MLmodel").is_file():
        return Resolved(family_of(folder), folder, {})
    from mlflow.models import Model

    flavors = Model.load(str(folder)).flavors
    if "diffusers" in flavors:
        conf = flavors["diffusers"]
        info = json.loads((folder / conf["adapter_weights"] / "condface_lora.json").read_text()) if (
            folder / conf["adapter_weights"] / "condface_lora.json").is_file() else {}
        return Resolved("sd-lora", folder / conf["adapter_weights"], {"family": "sd-lora", **info},
                        base=conf["base_model"], flavor="diffusers", mlflow_dir=folder)
    artifacts = flavors.get("python_function", {}).get("artifacts") or {}
    if "pipeline" not in artifacts or INFO_ARTIFACT not in artifacts:
        raise ConfigError(f"{folder} is an MLflow model but not a condface one (no pipeline artifact)")
    path = {k: folder / v["path"] for k, v in artifacts.items()}
    info = json.loads(path[INFO_ARTIFACT].read_text())
    base = str(path["base"]) if "base" in path else info.get("base")
    return Resolved(info["family"], path["pipeline"], info, base=base, flavor="pyfunc", mlflow_dir=folder)


def load_resolved(model: Resolved, sampler: str = "ddpm", ddpm_variance: str = "fixed_small"):
    """The sampling pipeline of a resolved model."""
    if model.family in LORA_LOADERS:  # adapters: onto their base (shipped in the model, or named), with the sampler
        load = importlib.import_module(LORA_LOADERS[model.family]).load_pipeline
        return load(model.pipeline_dir, sampler=sampler, ddpm_variance=ddpm_variance, base=model.base)
    from models.families import family_spec

    return family_spec(model.family).load(str(model.pipeline_dir))


def pipeline_folder(folder: str | Path) -> Path:
    """The `save_pretrained` folder inside an MLflow model folder (the folder itself otherwise)."""
    resolved = resolve_folder(folder)
    if resolved.pipeline_dir is None:
        raise ConfigError(f"{folder} holds no pipeline folder")
    return resolved.pipeline_dir


# --------------------------------------------------------------------------------------------------
# Conditions: levels by name, "any" drawn from the data's level frequencies
# --------------------------------------------------------------------------------------------------
def level_frequencies(data_root: str | Path) -> dict[str, list[float]]:
    """Per attribute, the fraction of training images at each level 0..5 (from a data cache)."""
    from data.cache import FaceCache

    cache = FaceCache.open(data_root)
    levels = cache.levels[cache.indices("train")]
    return {a: (np.bincount(levels[:, i], minlength=NUM_LEVELS) / max(1, len(levels))).round(6).tolist()
            for i, a in enumerate(ATTRIBUTES)}


def draw_levels(given: dict[str, Any], n: int, frequencies: dict[str, list[float]] | None,
                rng: np.random.Generator) -> np.ndarray:
    """(n, 5) levels: `given[a]` (an int or n ints) where set, else drawn per image from `frequencies[a]`
    (uniform without them). Unknown names and levels outside 0..5 raise ConfigError."""
    unknown = sorted(set(given) - set(ATTRIBUTES))
    if unknown:
        raise ConfigError(f"unknown attribute {unknown[0]!r}: use {', '.join(ATTRIBUTES)}")
    out = np.zeros((n, len(ATTRIBUTES)), dtype=np.int64)
    for i, a in enumerate(ATTRIBUTES):
        p = np.asarray((frequencies or {}).get(a) or [1.0] * NUM_LEVELS, dtype=np.float64)
        drawn = rng.choice(NUM_LEVELS, size=n, p=p / p.sum())  # always drawn: the same stream whatever is given
        value = given.get(a)
        if value is None:
            out[:, i] = drawn
            continue
        try:
            arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))
        except (TypeError, ValueError):
            raise ConfigError(f"{a} must be an integer level 0..{NUM_LEVELS - 1}, got {value!r}") from None
        known = ~np.isnan(arr)  # a missing value (None/NaN) in a row means "any" for that row
        vals = arr[known]
        if vals.size and (not np.all(vals == np.round(vals)) or vals.min() < 0 or vals.max() >= NUM_LEVELS):
            bad = next(v for v in vals if v != round(v) or not 0 <= v < NUM_LEVELS)
            raise ConfigError(f"{a} must be an integer level 0..{NUM_LEVELS - 1}, got {bad:g}")
        out[:, i] = np.where(known, np.nan_to_num(arr).astype(np.int64), drawn)
    return out


def png_base64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------------------------------
# The pyfunc model
# --------------------------------------------------------------------------------------------------
class CondfaceModel(mlflow.pyfunc.PythonModel):
    """Either family as an MLflow pyfunc model (see the module docstring for input, params and output)."""

    def load_context(self, context) -> None:
        from models.runtime import configure_torch, resolve_device

        configure_torch(0)
        artifacts = dict(context.artifacts)
        self.info = json.loads(Path(artifacts[INFO_ARTIFACT]).read_text())
        base = (getattr(context, "model_config", None) or {}).get("base") or artifacts.get("base") or \
            self.info.get("base")
        self.model = Resolved(self.info["family"], Path(artifacts["pipeline"]), self.info, base=base, flavor="pyfunc")
        self.pipe = load_resolved(self.model).to(resolve_device())  # the GPU where one is visible

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from models.sampling import generate

        params = {**self.info.get("defaults", {}), **{k: v for k, v in (params or {}).items() if v is not None}}
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        n = len(frame)
        if n == 0:
            return pd.DataFrame({"image": pd.Series([], dtype=str)})
        sampler = str(params.get("sampler", "ddpm"))
        if sampler not in SAMPLERS:
            raise mlflow.MlflowException.invalid_parameter_value(
                f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
        seed = int(params.get("seed", 0))
        prompts = None
        if text_conditioned(self.model.family) and "prompt" in frame.columns:
            prompts = [str(p) for p in frame["prompt"]]
            levels = None
        else:
            given = {a: frame[a].to_numpy(dtype=np.float64, na_value=np.nan) for a in ATTRIBUTES if a in frame.columns}
            given = {a: np.where(v == ANY, np.nan, v) for a, v in given.items()}  # -1: "any" in that row
            try:
                levels = draw_levels(given, n, self.info.get("level_frequencies"), np.random.default_rng(seed))
            except ConfigError as err:
                raise mlflow.MlflowException.invalid_parameter_value(str(err)) from None
            if text_conditioned(self.model.family):
                prompts = level_captions(levels, seed)
        try:
            images = generate(self.pipe, levels, prompts, float(params.get("guidance_scale", 3.0)),
                              int(params.get("num_inference_steps", 0)), seed, sampler,
                              ddpm_variance=self.info.get("ddpm_variance", "fixed_small"),
                              precision=check_precision(str(params.get("precision", "no"))))
        except (ConfigError, ValueError) as err:
            raise mlflow.MlflowException.invalid_parameter_value(first_line(err)) from None
        out = pd.DataFrame({"image": [png_base64(im) for im in images]})
        if levels is not None and not text_conditioned(self.model.family):
            for i, a in enumerate(ATTRIBUTES):
                out[a] = levels[:, i]
        else:
            out["prompt"] = prompts
        return out


def check_precision(precision: str) -> str:
    """`precision` if it is a sampling precision the model takes, else ConfigError."""
    if precision not in MIXED_PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(MIXED_PRECISIONS)}")
    return precision


def signature(family: str, defaults: dict[str, Any]):
    """The model signature: levels by name (text families: or a prompt), the sampling params, base64 PNGs out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    # long (MLflow refuses ints for a double column and NaN for a long one): -1 in a row means "any" there
    inputs = [ColSpec(DataType.long, a, required=False) for a in ATTRIBUTES]
    outputs = [ColSpec(DataType.string, "image")]
    if text_conditioned(family):
        inputs.append(ColSpec(DataType.string, "prompt", required=False))
        outputs.append(ColSpec(DataType.string, "prompt", required=False))
    else:
        outputs += [ColSpec(DataType.long, a) for a in ATTRIBUTES]
    params = ParamSchema([
        ParamSpec("guidance_scale", DataType.double, float(defaults["guidance_scale"])),
        ParamSpec("num_inference_steps", DataType.long, int(defaults["num_inference_steps"])),
        ParamSpec("sampler", DataType.string, str(defaults["sampler"])),
        ParamSpec("seed", DataType.long, int(defaults.get("seed", 0))),
        ParamSpec("precision", DataType.string, str(defaults.get("precision", "no"))),
    ])
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs), params=params)


def input_example(family: str, defaults: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Two faces: every attribute set (a smiling young person with bangs), and only two set (-1: "any")."""
    frame = pd.DataFrame({"bangs": [5, ANY], "eyeglasses": [0, 4], "beard": [0, ANY], "smiling": [5, ANY],
                          "age": [1, 4]})
    return frame, {"guidance_scale": float(defaults["guidance_scale"]), "seed": 0}


def requirements() -> list[str]:
    """The packages the model needs, pinned to the versions it was saved with (no slow inference by MLflow)."""
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def choose_flavor(pipeline_dir: str | Path) -> tuple[str, str]:
    """("pyfunc" | "diffusers", why) for a saved model (see the module docstring)."""
    family = family_of(pipeline_dir)
    if family == "ddpm":
        return "pyfunc", "the attribute DDPM is a custom pipeline: MLflow's diffusers flavor holds LoRA adapters only"
    if family == "if-lora":
        return "pyfunc", ("IF's pipeline samples with its learned variance, which the LoRA's training (epsilon only) "
                          "leaves untrained: the pyfunc samples with the fixed variance it trained for")
    if family != "sd-lora":
        return "pyfunc", f"the {family} model is a whole pipeline trained here: MLflow's diffusers flavor holds LoRA " \
                         "adapters on a Hub base only"
    if importlib.util.find_spec("mlflow.diffusers") is None:
        return "pyfunc", f"this MLflow ({mlflow.__version__}) has no diffusers flavor"
    if (Path(pipeline_dir) / "vae").is_dir():
        return "pyfunc", ("the LoRA trained on a tuned VAE (shipped in its folder), which MLflow's diffusers flavor "
                          "(adapter weights on a named base) cannot carry")
    info = json.loads((Path(pipeline_dir) / "condface_lora.json").read_text())
    pretrained = info["lora_config"].get("pretrained")
    if pretrained is None or Path(pretrained).exists():
        return "pyfunc", ("the base is the tiny offline base built on this machine (shipped as the `base` artifact)"
                          if pretrained is None or (Path(pretrained) / "condface_base.json").is_file() else
                          f"the base is a local folder ({pretrained}), which MLflow's diffusers flavor could only "
                          "name by a path on this machine")
    from diffusers import DDPMScheduler

    try:
        base = DDPMScheduler.load_config(pretrained, subfolder="scheduler", local_files_only=True)
    except Exception as err:  # noqa: BLE001 -- any failure means the flavor cannot be checked: keep the pyfunc
        return "pyfunc", f"the base's scheduler config could not be read offline ({type(err).__name__})"
    trained = info.get("scheduler") or {}
    same = all(trained.get(k) == base.get(k) for k in ("num_train_timesteps", "beta_start", "beta_end",
                                                        "beta_schedule", "prediction_type"))
    if not same:
        return "pyfunc", ("the LoRA trained on another noise schedule than the base's (T = "
                          f"{trained.get('num_train_timesteps')}), which the diffusers flavor's pyfunc cannot sample")
    return "diffusers", f"a LoRA on the Hub base {pretrained} with the base's own schedule"


def save_model(path: str | Path, pipeline_dir: str | Path, *, guidance_scale: float, sampler: str,
               num_inference_steps: int, ddpm_variance: str = "fixed_small", precision: str = "no",
               frequencies: dict[str, list[float]] | None = None, mlflow_model=None,
               flavor: str | None = None) -> str:
    """Save the model at `pipeline_dir` (a family's save_pretrained folder) as an MLflow model at `path`:
    the pyfunc, or MLflow's diffusers flavor where it can express the model. Returns the flavor used.
    `precision` is the pyfunc's default sampling precision (the diffusers flavor's pyfunc has no such param)."""
    check_precision(precision)
    family = family_of(pipeline_dir)
    flavor = flavor or choose_flavor(pipeline_dir)[0]
    defaults = {"guidance_scale": float(guidance_scale), "num_inference_steps": int(num_inference_steps),
                "sampler": sampler, "seed": 0, "precision": precision}
    info: dict[str, Any] = {"family": family, "defaults": defaults, "ddpm_variance": ddpm_variance,
                            "level_frequencies": frequencies, "attributes": list(ATTRIBUTES)}
    if flavor == "diffusers":
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

        lora = json.loads((Path(pipeline_dir) / "condface_lora.json").read_text())
        size = int(lora["lora_config"]["image_size"])
        sig = ModelSignature(
            inputs=Schema([ColSpec(DataType.string, "prompt")]), outputs=Schema([ColSpec(DataType.binary, "image")]),
            params=ParamSchema([ParamSpec("num_inference_steps", DataType.integer, int(num_inference_steps) or 50),
                                ParamSpec("guidance_scale", DataType.double, float(guidance_scale)),
                                ParamSpec("height", DataType.integer, size), ParamSpec("width", DataType.integer, size),
                                ParamSpec("negative_prompt", DataType.string, "")]))
        importlib.import_module("mlflow.diffusers").save_model(adapter_path=str(pipeline_dir), path=str(path),
                                    base_model=lora["lora_config"]["pretrained"], signature=sig,
                                    mlflow_model=mlflow_model, pip_requirements=requirements(),
                                    metadata={"condface": json.dumps(info)})
        return flavor

    import tempfile

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        info_path = Path(tmp) / INFO_FILE
        artifacts = {"pipeline": str(pipeline_dir), INFO_ARTIFACT: str(info_path)}
        if family in LORA_LOADERS:
            from models.families import MARKERS

            lora = json.loads((Path(pipeline_dir) / MARKERS[family]).read_text())["lora_config"]
            base = _tiny_base_folder(family, lora)
            if base is not None:
                artifacts["base"] = str(base)
            else:
                info["base"] = lora["pretrained"]
        info_path.write_text(json.dumps(info, indent=2))
        entry = Path(tmp) / "condface_pyfunc.py"  # models from code: no pickled object, the class is imported
        entry.write_text(ENTRY_POINT)
        mlflow.pyfunc.save_model(
            str(path), python_model=str(entry), artifacts=artifacts,
            code_paths=[str(root / "models"), str(root / "data")], signature=signature(family, defaults),
            input_example=input_example(family, defaults), pip_requirements=requirements(),
            mlflow_model=mlflow_model, metadata={"condface_family": family},
        )
    return "pyfunc"


def _tiny_base_folder(family: str, lora_config: dict[str, Any]) -> Path | None:
    """The tiny offline base's folder a `family` LoRA trained on (None for any other base)."""
    pretrained = lora_config.get("pretrained")
    if pretrained is not None:
        return Path(pretrained) if (Path(pretrained) / "condface_base.json").is_file() else None
    if family == "if-lora":
        from models.tiny_if_base import PRESETS as IF_PRESETS
        from models.tiny_if_base import ensure_tiny_if_base

        return Path(ensure_tiny_if_base(IF_PRESETS[lora_config["tiny_base"]])[0])
    from models.tiny_base import PRESETS, ensure_tiny_base

    return Path(ensure_tiny_base(PRESETS[lora_config["tiny_base"]])[0])


__all__ = ["CondfaceModel", "save_model", "choose_flavor", "resolve_folder", "load_resolved", "pipeline_folder",
           "level_frequencies", "draw_levels", "family_of", "signature", "Resolved"]
