"""The names every layer shares: model families, metrics, MLflow tags, the registry alias.

It imports nothing heavy (no torch, MLflow or Ray), and it sits in `data`, the root of the dependency
chain (data <- models <- evaluation <- orchestration), so that every layer can name the same things
the same way. A metric's label, format and better direction are defined here once; the terminal
summary, the report, the sweep's selection and the plots all read them from here.
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any


# --- model families ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """What every layer says about a model family (its code is registered in models.families)."""

    name: str  # how tables and figures name it
    color: str  # its colour in every plot
    conditioning: str  # "levels" (the 30-value attribute vector) or "caption" (text)
    untrained: str  # the reference row of its untrained model (Table 3.1)


# One entry per family, in the fixed order of `--model all`, of tables' columns and of plots' legends.
FAMILY_INFO: dict[str, Family] = {
    "ddpm": Family("attribute DDPM", "tab:blue", "levels", "untrained DDPM"),
    "sd-lora": Family("SD Nano 2.1 + LoRA", "tab:green", "caption", "SD base (no LoRA)"),
    "pixel-text": Family("text-conditioned DDPM (pixels, from scratch)", "tab:orange", "caption",
                         "untrained text DDPM"),
    "if-lora": Family("DeepFloyd IF-I-M + LoRA", "tab:brown", "caption", "IF base (no LoRA)"),
}
FAMILIES = tuple(FAMILY_INFO)
FAMILY_NAMES = {k: f.name for k, f in FAMILY_INFO.items()}
FAMILY_COLORS = {k: f.color for k, f in FAMILY_INFO.items()}
SAMPLER_STYLES = {"ddpm": ("tab:red", "o"), "ddim": ("tab:purple", "s"), "dpm++": ("tab:cyan", "^")}

# --- MLflow names ----------------------------------------------------------------------------------
TAG_PREFIX = "condface."  # every tag this project sets: condface.phase, condface.family, ...
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI
NOTE_LIMIT = 8000  # MLflow's tag value limit (mlflow.utils.validation.MAX_TAG_VAL_LENGTH)
CHAMPION_ALIAS = "champion"  # the registry alias of each family's newest final model
STEP_LOSS_METRIC = "train_loss_step"  # training loss per optimizer step (step = global optimizer step)

# --- settings ------------------------------------------------------------------------------------
# mixed precision of training, sampling and the estimator: bf16 autocast per models.runtime's policy, always, or fp32
MIXED_PRECISIONS = ("auto", "bf16", "no")


# --- metrics ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str  # "min" | "max"
    format: str  # a str.format spec for the value as logged
    selectable: bool = True  # may rank trials (--select-metric)

    def text(self, value: Any) -> str:
        """The value as a table shows it; '-' when it is missing or not finite."""
        return self.format.format(value) if finite(value) else "-"

    def better_than(self, a: float, b: float) -> bool:
        return a < b if self.better == "min" else a > b


# The study's metrics in its tables' order, then this project's. Accuracies are logged as fractions,
# MTCNN as a percent already.
METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("fid", "FID", "min", "{:.2f}"),
    Metric("fd_estimator", "FD on estimator features (FID stand-in)", "min", "{:.3f}"),
    Metric("mtcnn", "MTCNN detection rate", "max", "{:.2f} %"),
    Metric("clip_score", "CLIP-S", "max", "{:.2f}"),
    Metric("est_acc", "estimator accuracy", "max", "{:.2%}"),
    Metric("est_acc_balanced", "estimator accuracy, class-balanced", "max", "{:.2%}"),
    Metric("val_loss", "held-out denoising loss", "min", "{:.5f}"),
    # reported every epoch but not selectable: Min-SNR trials weight it differently, so values do not compare
    Metric("train_loss", "training loss", "min", "{:.5f}", selectable=False),
    # the VAE phase's reconstructions (sd-lora --tune-vae), not generated samples
    Metric("psnr", "PSNR of VAE reconstructions", "max", "{:.2f} dB", selectable=False),
)}
SAMPLE_METRICS = ("fid", "fd_estimator", "mtcnn", "clip_score", "est_acc", "est_acc_balanced")
SELECTABLE = tuple(k for k, m in METRICS.items() if m.selectable)
# The study ranked its grids by several metrics and retrained the configurations with the best estimator accuracy
# (§4.1, §4.2); when Inception weights are missing FID is unavailable and its stand-in (a Frechet distance on the
# estimator's features) takes its place wherever FID is asked for.
FID_STAND_IN = "fd_estimator"
ATTRIBUTE_ACCURACY_KEYS = ("est_acc_bangs", "est_acc_eyeglasses", "est_acc_beard", "est_acc_smiling", "est_acc_age")


def metric(key: str) -> Metric:
    """The catalogue entry of `key`; per-attribute accuracies share est_acc's label stem and format."""
    if key in METRICS:
        return METRICS[key]
    if key.startswith("est_acc_"):
        return Metric(key, f"estimator accuracy ({key[len('est_acc_'):]})", "max", "{:.2%}", selectable=False)
    raise KeyError(f"unknown metric {key!r}: the catalogue (data.catalogue.METRICS) names {', '.join(METRICS)}")


def better(key: str) -> str:
    """'min' or 'max' for a catalogued metric (KeyError for an uncatalogued one: no silent default)."""
    return metric(key).better


def text_conditioned(family: str) -> bool:
    """Whether `family` is conditioned on captions (else on attribute levels)."""
    return FAMILY_INFO[family].conditioning == "caption"


def finite(value: Any) -> bool:
    """A real, finite number (not a bool, None, NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- places ----------------------------------------------------------------------------------------
def condface_home() -> Path:
    """Root of the project's caches (toy data, estimators, tiny bases): $CONDFACE_HOME, else ~/.cache/condface.
    An empty value counts as unset."""
    return Path(os.environ.get("CONDFACE_HOME") or Path.home() / ".cache" / "condface")


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """The embedded MLflow store: an SQLite file in the working directory."""
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlruns.db'}"


HIDDEN = "***"  # what a password looks like wherever a URI is printed, logged or stored
_USERINFO_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@\s:]*:)[^/?#\s]*(?=@)")
_QUERY_SECRET = re.compile(r"(?i)(?P<head>[?&](?:password|passwd|pwd|token|secret|access_token|api_key)=)[^&#\s]*")


def redact_uri(text: str | None) -> str | None:
    """`text` (a URI, or a message holding URIs) fit to print, log or store: the password of every URI's user info
    (`http://user:pw@host`, `postgresql://user:pw@host/db`) and password or token query values shown as ***."""
    if not text or "://" not in text:
        return text
    text = _USERINFO_PASSWORD.sub(lambda m: m["head"] + HIDDEN, text)
    return _QUERY_SECRET.sub(lambda m: m["head"] + HIDDEN, text)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(`uri` without its user info, username, password): `http://user:pw@host:5000` -> (`http://host:5000`, ...).
    Percent-escapes in the user info are decoded (a password with `@` or `:` is written %40, %3A)."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    user, _, host = parts.netloc.rpartition("@")
    name, colon, password = user.partition(":")
    bare = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, urllib.parse.unquote(name) or None, urllib.parse.unquote(password) if colon else None
