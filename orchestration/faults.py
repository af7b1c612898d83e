"""Faults a test injects through the environment, never through the user's config (so never MLflow params).

Local Ray workers inherit the driver's environment (a test sets these before it starts Ray).

- CONDFACE_PAUSE_AT=<point>: `reached(point)` prints `[reached] <point>` and, at that point, sleeps until the
  process is killed (the test kills the driver and its Ray runtime, as a dying machine would), to prove that
  `--resume` continues from there. Points: `<phase>` at the start of every phase (e.g. `ddpm/grid`,
  `sd-lora/cfg`), and `<family>/final:trained` / `<family>/final:registered` inside the final phase.
- CONDFACE_FAULT_FAIL_ONCE_AT_EPOCH=<epoch index>: every grid trial crashes once there, before it reports that
  epoch (so Tune retries it from the epoch before).
- CONDFACE_FAULT_DIVERGE_TRIAL=<trial label>: that grid trial trains at lr = inf, so its loss turns NaN
  (a real divergence, through the real engine).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_ENV = "CONDFACE_PAUSE_AT"
FAIL_ONCE_ENV = "CONDFACE_FAULT_FAIL_ONCE_AT_EPOCH"
DIVERGE_ENV = "CONDFACE_FAULT_DIVERGE_TRIAL"


def reached(point: str) -> None:
    if os.environ.get(PAUSE_ENV) == point:
        print(f"[reached] {point}: paused ({PAUSE_ENV})", flush=True)
        while True:
            time.sleep(1)


def diverges(label: str) -> bool:
    """Whether the grid trial `label` is the one told to diverge."""
    return bool(label) and os.environ.get(DIVERGE_ENV) == label


def fail_once(marker_dir: Path, trial_id: str, epoch_index: int) -> None:
    """Crash the trial the first time it reaches the epoch FAIL_ONCE_ENV names; a marker file in `marker_dir`
    remembers that it did (the retried trial passes)."""
    at = os.environ.get(FAIL_ONCE_ENV)
    if at is None or epoch_index != int(at):
        return
    marker = marker_dir / f"failed-{trial_id}"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("1")
        raise RuntimeError(f"injected failure at epoch index {epoch_index} ({FAIL_ONCE_ENV})")
