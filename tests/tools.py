"""What a test needs from the machine (PostgreSQL, Chromium): skipped where it is missing, failed in CI."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, missing: str) -> None:
    """Skip the test when `available` is false, with `missing` as the reason; fail it instead in CI (CI=true),
    where .ci/run installs every tool, so a test that cannot run there is never silently skipped."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{missing} (CI=true: a cluster or browser test must run in CI; .ci/run installs the tools)",
                    pytrace=False)
    pytest.skip(missing)
