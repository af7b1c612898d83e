"""Test tools: what a test needs from the machine (PostgreSQL, Chromium: skipped where missing, failed in CI),
and a command run in-process."""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

# the families of the joint smoke sweep every slow module shares (tests/conftest.py::joint_sweep), and its experiment
JOINT_FAMILIES = "ddpm,sd-lora,pixel-text,if-lora"  # every family: what --model all runs
JOINT_EXPERIMENT = "condface-" + JOINT_FAMILIES.replace(",", "+") + "-smoke"


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


def run_module(module: str, *args: str, cwd: str | Path | None = None, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` run in this process, in `cwd`, with `env` added to the environment: its exit status
    (a message given to sys.exit goes to stderr with status 1), stdout and stderr. The working directory, sys.argv
    and the environment are restored afterwards. Seconds faster than a new interpreter; keep one real process per command where the process itself
    is what is tested."""
    out, err, before, saved, argv = io.StringIO(), io.StringIO(), os.getcwd(), dict(os.environ), sys.argv
    if cwd is not None:
        os.chdir(cwd)
    sys.argv = [module, *args]
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)  # imported before: fine
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    finally:
        sys.argv = argv
        os.chdir(before)
        os.environ.clear()
        os.environ.update(saved)
    if isinstance(code, str):
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess([module, *args], code or 0, out.getvalue(), err.getvalue())
