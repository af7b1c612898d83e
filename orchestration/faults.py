"""Faults a test injects through the environment, never through the user's config (so never MLflow params).

Local Ray workers inherit the driver's environment (a test sets these before it starts Ray).

- CONDFACE_PAUSE_AT=<point>: `reached(point)` prints `[reached] <point>` and, at that point, sleeps until the
  process is killed (the test kills the driver and its Ray runtime, as a dying machine would), to prove that
  `--resume` continues from there. Points: `<phase>` at the start of every phase (e.g. `ddpm/grid`,
  `sd-lora/cfg`), and `<family>/final:trained` / `<family>/final:registered` inside the final phase, then for each
  further seed (--final-seeds) `<family>/final/seed<N>` and `<family>/final/seed<N>:trained`; and
  `<family>/<grid|final>:retried` each time Tune retries a failed trial, once the retry is recorded in MLflow.
- CONDFACE_FAULT_FAIL_ONCE_AT_EPOCH=<epoch index>: every grid trial crashes once there, before it reports that
  epoch (so Tune retries it from the epoch before).
- CONDFACE_FAULT_DIVERGE_TRIAL=<trial label>: that grid trial trains at lr = inf, so its loss turns NaN
  (a real divergence, through the real engine).
- CONDFACE_FAULT_KILL_AT_WRITE=[+]<k>[@<point>] | random:<seed>:<n>: the driver SIGKILLs itself and every process
  it started (its local Ray runtime) just before its k-th MLflow write (any client call that creates, logs, sets,
  updates, finalizes, registers or deletes; with `+`: just after it): counted from the start, from the last
  `reached(point)`, or at a k drawn from 1..n with the seed. Where a crash lands inside a sequence of writes
  (python -m orchestration.crash_points).
- CONDFACE_FAULT_WRITE_LOG=<file>: every MLflow write appends `<k>\t<method>\t<last point>` to the file.
- CONDFACE_FAULT_HOLD_AT=[+]<k>[@<point>] | @<point>, with CONDFACE_FAULT_RELEASE=<file>: the driver prints
  `[fault] held ...` at that MLflow write (counted as for the kill) or when it reaches that point, and waits until
  the file exists: the harness makes its fault meanwhile (stops the tracking server, kills a Ray node), then
  creates the file, and the driver goes on into the fault (orchestration.crash: the outage and node-kill variants).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

PAUSE_ENV = "CONDFACE_PAUSE_AT"
FAIL_ONCE_ENV = "CONDFACE_FAULT_FAIL_ONCE_AT_EPOCH"
DIVERGE_ENV = "CONDFACE_FAULT_DIVERGE_TRIAL"
KILL_AT_WRITE_ENV = "CONDFACE_FAULT_KILL_AT_WRITE"
WRITE_LOG_ENV = "CONDFACE_FAULT_WRITE_LOG"
HOLD_ENV = "CONDFACE_FAULT_HOLD_AT"
RELEASE_ENV = "CONDFACE_FAULT_RELEASE"
HOLD_LIMIT_S = 900.0  # a hold nobody releases (the harness died) ends the driver instead of hanging it
WRITE_PREFIXES = ("create_", "log_", "set_", "update_", "finalize_", "delete_", "restore_", "rename_",
                  "transition_", "copy_")


class WriteCounter:
    """The driver's MLflow writes, counted (process-wide: every Tracker's client); the kill of KILL_AT_WRITE_ENV
    and the hold of HOLD_ENV."""

    def __init__(self, spec: str | None = None, log: str | None = None, hold: str | None = None):
        self.total = 0  # writes since the process started
        self.since = 0  # writes since the last `reached(point)`
        self.point = "setup"
        self.log = log
        self.at, self.within, self.after_write = parse_kill_spec(spec) if spec else (None, None, False)
        self.hold_at = parse_kill_spec(hold) if hold and not hold.startswith("@") else None

    def reached(self, point: str) -> None:
        self.point, self.since = point, 0

    def write(self, method: str) -> None:
        """Before the write `method`."""
        self.total += 1
        self.since += 1
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{self.total}\t{method}\t{self.point}\n")
        self._maybe_fault(method, after=False)

    def wrote(self, method: str) -> None:
        """After the write `method` returned."""
        self._maybe_fault(method, after=True)

    def _due(self, at: int | None, within: str | None) -> bool:
        count = self.total if within is None else (self.since if self.point == within else 0)
        return at is not None and count == at

    def _maybe_fault(self, method: str, after: bool) -> None:
        where = f"{'after' if after else 'before'} MLflow write {self.total} ({method}; write {self.since} of " \
                f"{self.point})"
        if self.hold_at is not None and self.hold_at[2] == after and self._due(*self.hold_at[:2]):
            self.hold_at = None  # once
            hold(where)
        if self.after_write == after and self._due(self.at, self.within):
            print(f"[fault] SIGKILL {where} ({KILL_AT_WRITE_ENV})", flush=True)
            kill_process_tree()


def parse_kill_spec(spec: str) -> tuple[int, str | None, bool]:
    """`[+]k[@point]` or `random:seed:n` -> (k, point or None, after the write?)."""
    if spec.startswith("random:"):
        _, seed, n = spec.split(":")
        return random.Random(int(seed)).randint(1, int(n)), None, False
    after = spec.startswith("+")
    k, _, point = spec.lstrip("+").partition("@")
    if not k.isdigit() or int(k) < 1:
        raise ValueError(f"{KILL_AT_WRITE_ENV}={spec!r}: expected [+]<k>[@<point>] or random:<seed>:<n> (k >= 1)")
    return int(k), point or None, after


def hold(where: str) -> None:
    """Say `[fault] held <where>`, then wait until the file RELEASE_ENV names exists (the harness made its fault)."""
    release = os.environ.get(RELEASE_ENV)
    if not release:
        raise RuntimeError(f"{HOLD_ENV} needs {RELEASE_ENV}=<file>: the file whose creation releases the driver")
    print(f"[fault] held {where} ({HOLD_ENV}): waiting for {release}", flush=True)
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{HOLD_ENV}: nothing created {release} within {HOLD_LIMIT_S:.0f} s")
        time.sleep(0.2)
    print(f"[fault] released {where}", flush=True)


def kill_process_tree() -> None:
    """SIGKILL every process this one started (its local Ray runtime), then itself: a machine that dies."""
    import psutil

    me = psutil.Process()
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


_counter: WriteCounter | None = None
_held_at: str | None = None


def write_counter() -> WriteCounter | None:
    """The process's counter when a write fault or log is asked for, else None."""
    global _counter
    if _counter is None and any(os.environ.get(e) for e in (KILL_AT_WRITE_ENV, WRITE_LOG_ENV, HOLD_ENV)):
        _counter = WriteCounter(os.environ.get(KILL_AT_WRITE_ENV), os.environ.get(WRITE_LOG_ENV),
                                os.environ.get(HOLD_ENV))
    return _counter


class CountedWrites:
    """An MLflow client whose write calls go through the counter first (the crash-point harness's choke point)."""

    def __init__(self, client: Any, counter: WriteCounter):
        self._client, self._counter = client, counter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not name.startswith(WRITE_PREFIXES) or not callable(attr):
            return attr

        def call(*args, **kwargs):
            self._counter.write(name)
            result = attr(*args, **kwargs)
            self._counter.wrote(name)
            return result

        return call


def count_writes(client: Any) -> Any:
    """`client` itself, or (with a write fault or log in the environment) the same client with its writes counted."""
    counter = write_counter()
    return client if counter is None else CountedWrites(client, counter)


def reached(point: str) -> None:
    counter = write_counter()
    if counter is not None:
        counter.reached(point)
    global _held_at
    if os.environ.get(HOLD_ENV) == f"@{point}" and _held_at != point:
        _held_at = point  # once (a phase's point may be reached again inside one process)
        hold(f"at {point}")
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
