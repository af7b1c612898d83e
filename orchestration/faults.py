"""Named points in the driver where a test can stop it, to prove that `--resume` continues from there.

`reached(point)` prints `[reached] <point>` and, when the environment variable CONDFACE_PAUSE_AT names
that point, sleeps until the process is killed (the test kills the driver and its Ray runtime, as a
dying machine would). Points: `<phase>` at the start of every phase (e.g. `ddpm/grid`, `sd-lora/cfg`),
and `<family>/final:trained` / `<family>/final:registered` inside the final phase.
"""

from __future__ import annotations

import os
import time

PAUSE_ENV = "CONDFACE_PAUSE_AT"


def reached(point: str) -> None:
    if os.environ.get(PAUSE_ENV) == point:
        print(f"[reached] {point}: paused ({PAUSE_ENV})", flush=True)
        while True:
            time.sleep(1)
