"""Shared fixtures. Every test runs offline, on the CPU, with small data the tests build."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; on a shared 2-core machine two threads mostly wait for each other.
    Denormals are flushed as in every entry point of the project (models.runtime)."""
    from models.runtime import configure_torch

    configure_torch(1)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Caches (toy data, estimators) in a temporary CONDFACE_HOME for the module that asks for it."""
    path = tmp_path_factory.mktemp("condface-home")
    old = os.environ.get("CONDFACE_HOME")
    os.environ["CONDFACE_HOME"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CONDFACE_HOME", None)
    else:
        os.environ["CONDFACE_HOME"] = old


@pytest.fixture(scope="module")
def data(home, tmp_path_factory):
    """A small 16 px synthetic face cache (256 train / 64 val / 8 test), one per module."""
    from data.synthetic import toy_cache

    return str(toy_cache(size=16, n_train=256, n_val=64, n_test=8, root=tmp_path_factory.mktemp("data"),
                         progress=False))
