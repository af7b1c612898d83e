"""The crash-point harness: a sweep run as commands in their own process groups, faults made while it runs, resumed
until it finishes, its record checked (orchestration.crash_record)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orchestration.crash_record import check_record
from orchestration.faults import HOLD_ENV, KILL_AT_WRITE_ENV, RELEASE_ENV, WRITE_LOG_ENV

ROOT = Path(__file__).resolve().parent.parent.parent
KILLED = -signal.SIGKILL
# A fault the harness makes while the driver holds: it gets the `[fault] held` line, does the fault (stops the
# tracking server, kills a node) and returns what to do once the driver is released (or None).
Fault = Callable[[str], Callable[[], None] | None]


@dataclass(frozen=True)
class Target:
    """Where a sweep runs and is recorded: its command (without --resume), environment, store and storage path."""

    args: list[str]
    env: dict[str, str]
    uri: str
    storage: Path
    experiment: str | None = None  # where the store holds other sweeps too: the one to check


@dataclass
class CrashResult:
    """One sweep killed at `kills` (one per command, the last command runs to its end)."""

    kills: list[str]
    killed: list[str]  # the harness's `[fault]` lines: where each kill (or hold) landed
    violations: list[str]
    seconds: float
    logs: list[Path]
    codes: list[int] = field(default_factory=list)  # each command's exit status


def toy_data() -> str:
    """The tests' 16 px toy cache (tests/conftest.py's `data`), in CONDFACE_HOME."""
    from data.synthetic import toy_cache

    return str(toy_cache(size=16, n_train=256, n_val=64, n_test=8, progress=False))


def sweep_command(data: str, uri: str, storage: Path, epochs: int = 1, extra: tuple[str, ...] = ()) -> list[str]:
    """The two-family smoke sweep with the sampler phase (and `extra` settings)."""
    return [sys.executable, "-m", "orchestration.sweep", "--preset", "smoke", "--model", "ddpm,sd-lora", "--data",
            data, "--no-dashboard", "--tracking-uri", uri, "--storage-path", str(storage), "--sampler-phase",
            "--epochs", str(epochs), *extra]


def local_target(data: str, work: Path, env: dict[str, str] | None = None, epochs: int = 1,
                 uri: str | None = None, extra: tuple[str, ...] = ()) -> Target:
    """The two-family smoke sweep on a local Ray runtime, recorded in `uri` (default: a SQLite store in `work`)."""
    uri = uri or f"sqlite:///{work / 'mlruns.db'}"
    base = {**(env or os.environ), "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "local"}
    return Target(sweep_command(data, uri, work / "results", epochs, extra), base, uri, work / "results")


def run_command(args: list[str], log: Path, env: dict[str, str], timeout_s: float,
                watch: Callable[[str], None] | None = None) -> int:
    """Run `args` in its own process group, output to `log`, calling `watch(output so far)` while it runs;
    afterwards (or at the timeout) SIGKILL whatever of the group is left (a killed driver's Ray processes).
    Returns the exit status (-9: killed; 124: timed out)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            if watch is not None:
                watch(log.read_text(errors="replace"))
            time.sleep(0.5)
        rc = proc.poll()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if rc is None:
            proc.wait()
            out.write(f"\n[crash_points] timed out after {timeout_s:.0f} s\n")
            return 124
    return rc


def holder(release: Path, fault: Fault, done: list[str]) -> Callable[[str], None]:
    """A `watch` that, once the driver says `[fault] held`, makes `fault`, releases the driver, then recovers."""

    def watch(text: str) -> None:
        line = next((ln for ln in text.splitlines() if ln.startswith("[fault] held ")), None)
        if line is None or done:
            return
        done.append(line)
        recover = fault(line)
        release.write_text("released\n")
        if recover is not None:
            recover()

    return watch


def earlier_champions(uri: str) -> None:
    """A store with history: each family's registered model already has a version of an earlier sweep, with the
    alias `champion` (which this sweep must move onto its own)."""
    from mlflow.tracking import MlflowClient

    from data.catalogue import CHAMPION_ALIAS

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for family in ("ddpm", "sd-lora"):
        name = f"condface-{family}"
        client.create_registered_model(name)
        version = client.create_model_version(name, f"file:///earlier-sweep/{family}/model")
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)


def fault_sweep(target: Target, work: Path, kills: list[str], timeout_s: float = 900.0, max_resumes: int = 3,
                hold: str | None = None, fault: Fault | None = None) -> CrashResult:
    """One sweep: command i is killed at `kills[i]` (a CONDFACE_FAULT_KILL_AT_WRITE value); the first one is also
    held at `hold` (CONDFACE_FAULT_HOLD_AT) while the harness makes `fault`; then it is resumed without a fault
    until it finishes (at most `max_resumes` times); then its record is checked."""
    started = time.time()
    base = {k: v for k, v in target.env.items() if k not in (KILL_AT_WRITE_ENV, HOLD_ENV, RELEASE_ENV)}
    logs, killed, violations, codes, held = [], [], [], [], []
    plan = [*kills, *[None] * max_resumes] or [None]
    for i, kill in enumerate(plan):
        log = work / f"{i + 1}.log"
        logs.append(log)
        env = {**base, **({KILL_AT_WRITE_ENV: kill} if kill else {})}
        watch = None
        if i == 0 and hold and fault:
            env.update({HOLD_ENV: hold, RELEASE_ENV: str(work / "released")})
            watch = holder(work / "released", fault, held)
        rc = run_command([*target.args, "--resume"] if i else target.args, log, env, timeout_s, watch)
        codes.append(rc)
        text = log.read_text(errors="replace")
        fault_lines = [ln for ln in text.splitlines() if ln.startswith("[fault] ")]
        killed += fault_lines
        if rc == 0:
            if kill:
                violations.append(f"the sweep finished before the kill at {kill} (command {i + 1})")
            break
        if rc == KILLED and kill and any("SIGKILL" in ln for ln in fault_lines):
            continue
        tail = " | ".join(text.strip().splitlines()[-3:])[-600:]
        if i == 0 and hold:  # the fault ended the driver (a node-kill: Ray could not recover): resumed
            killed.append(f"[harness] command 1 ended {rc} after the fault: {tail}")
            continue
        violations.append(f"command {i + 1} ({'killed at ' + kill if kill else 'resume'}) ended {rc}: {tail}")
        if kill is None:
            break
    else:
        violations.append(f"not finished after {max_resumes} resumes")
    if hold and not held:
        violations.append(f"the driver was never held at {hold}")
    try:
        violations += check_record(target.uri, target.storage, logs[-1].read_text(errors="replace"),
                                   target.experiment)
    except Exception as err:  # a record too broken to read is a violation, not a harness crash
        violations.append(f"the record could not be read: {type(err).__name__}: {err}")
    return CrashResult(list(kills), killed, violations, time.time() - started, logs, codes)


def fresh(work: Path) -> Path:
    """An empty `work` (a point tried before is tried again from nothing)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def crash_sweep(data: str, work: Path, kills: list[str], timeout_s: float = 900.0, max_resumes: int = 3,
                env: dict[str, str] | None = None, epochs: int = 1, extra: tuple[str, ...] = ()) -> CrashResult:
    """The two-family smoke sweep (with `extra` settings) in `work`, locally: command i killed at `kills[i]`,
    resumed until it finishes."""
    target = local_target(data, fresh(work), env, epochs, extra=extra)
    earlier_champions(target.uri)
    return fault_sweep(target, work, kills, timeout_s, max_resumes)


def count_writes(data: str, work: Path, timeout_s: float) -> list[tuple[int, str, str]]:
    """A clean run (checked like the others): its MLflow writes as (k, method, phase)."""
    writes = work / "writes.tsv"
    result = crash_sweep(data, work, [], timeout_s, 1, env={**os.environ, WRITE_LOG_ENV: str(writes)})
    if result.violations:
        raise SystemExit("error: the clean sweep already breaks the invariants:\n  " + "\n  ".join(result.violations)
                         + f"\n(logs in {work})")
    return read_writes(writes)


def read_writes(path: Path) -> list[tuple[int, str, str]]:
    return [(int(k), m, p) for k, m, p in (ln.split("\t") for ln in path.read_text().splitlines())]


__all__ = ["CrashResult", "Target", "count_writes", "crash_sweep", "fault_sweep", "local_target", "toy_data"]
