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
