"""The harness's two other faults: the tracking server down at an MLflow write (the retry path), and a Ray worker
node killed at a phase (or write) on the local cluster (infra/local_cluster.py)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from orchestration.crash.harness import (
    ROOT,
    CrashResult,
    Fault,
    Target,
    earlier_champions,
    fault_sweep,
    fresh,
    local_target,
)


def outage(stop: Callable[[], None], start: Callable[[], Any], outage_s: float) -> Fault:
    """The fault: the tracking server stopped; once the driver is released into it, `outage_s` later started
    again on the same store and port."""

    def fault(line: str) -> Callable[[], None]:
        stop()

        def recover() -> None:
            time.sleep(outage_s)
            start()

        return recover

    return fault


def outage_sweep(data: str, work: Path, hold: str, outage_s: float = 10.0, timeout_s: float = 900.0,
                 epochs: int = 1) -> CrashResult:
    """The two-family smoke sweep recording through a tracking server of its own (SQLite store), which is down
    from the write `hold` for `outage_s`: the sweep must finish in its first command (the retry path, no resume)
    with every invariant kept."""
    from infra.mlflow_server import TrackingServer

    store = f"sqlite:///{fresh(work) / 'mlruns.db'}"
    earlier_champions(store)  # before the server opens the store (a server refuses a file:// version source)
    server = TrackingServer(store, work / "artifacts", work / "server.log").start()
    try:
        target = local_target(data, work, epochs=epochs, uri=server.uri)
        result = fault_sweep(target, work, [], timeout_s, 0, hold, outage(server.stop, server.start, outage_s))
    finally:
        server.stop()
    first = result.logs[0].read_text(errors="replace")
    if result.codes[:1] != [0]:
        result.violations.append(f"the sweep did not finish in its first command (exit {result.codes[:1]}): the "
                                 "retry path did not carry it through the outage")
    if not (re.search(r"^MLflow server \S+ unreachable", first, re.M) and "reachable again" in first):
        result.violations.append("the driver never met the outage (no `unreachable` / `reachable again` lines)")
    return result


# --- a worker node killed, on the local cluster --------------------------------------------------------------
def cluster_target(cluster: dict[str, Any], data: str, experiment: str, epochs: int, *extra: str,
                   uri: str | None = None, env: dict[str, str] | None = None) -> Target:
    """The one-family smoke sweep (ddpm) on the cluster: its Ray, its tracking server (or `uri`: the same with
    credentials in it), a storage path of its own under the shared one."""
    from infra import local_cluster as lc

    storage = Path(cluster["storage_path"]) / experiment
    args = [sys.executable, "-m", "orchestration.sweep", "--preset", "smoke", "--address", cluster["ray"]["address"],
            "--tracking-uri", uri or cluster["mlflow"]["uri"], "--storage-path", str(storage), "--data", data,
            "--experiment", experiment, "--epochs", str(epochs), *extra]
    full = {**(env or {**os.environ, **lc.client_env(cluster)}), "PYTHONPATH": str(ROOT)}
    full.pop("RAY_ADDRESS", None)
    return Target(args, full, cluster["mlflow"]["uri"], storage, experiment)


@contextlib.contextmanager
def mlflow_login(cluster: dict[str, Any]) -> Iterator[None]:
    """This process reads the cluster's record with the admin's login (in its environment only, as MLflow does)."""
    from infra import local_cluster as lc

    login = lc.mlflow_login(cluster)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    if login:
        os.environ.update(MLFLOW_TRACKING_USERNAME=login[0], MLFLOW_TRACKING_PASSWORD=login[1])
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def kill_worker(cluster: dict[str, Any], killed: list[int]) -> Fault:
    """The fault: the worker node's raylet SIGKILLed (and with it the node's workers), as a machine that dies."""
    from infra.procs import alive

    def fault(line: str) -> None:
        pid = cluster["ray"]["nodes"]["worker"]["raylet_pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        killed.append(pid)

    return fault


def node_kill_sweep(cluster: dict[str, Any], data: str, work: Path, point: str, experiment: str, epochs: int = 2,
                    timeout_s: float = 900.0, max_resumes: int = 2, target: Target | None = None,
                    kills: list[str] | None = None, also: Fault | None = None) -> CrashResult:
    """The sweep on the cluster, its worker node killed when the driver reaches `point` (a phase, or k@phase: its
    k-th MLflow write): Tune retries the trials that ran there; where Ray cannot recover (the driver's own Ray
    calls fail), the driver exits and is resumed. `also`: a second fault made at the same instant (e.g. `outage`);
    `kills`: the driver SIGKILLed at these writes as well (fault_sweep). Finished = exit 0 within `max_resumes`
    resumes, every invariant kept."""
    from infra.procs import alive

    fresh(work)
    target = target or cluster_target(cluster, data, experiment, epochs)
    killed: list[int] = []
    hold = point if "@" in point else f"@{point}"
    node_lost = kill_worker(cluster, killed)

    def fault(line: str) -> Callable[[], None] | None:
        node_lost(line)
        return also(line) if also is not None else None

    with mlflow_login(cluster):
        result = fault_sweep(target, work, list(kills or []), timeout_s, max_resumes, hold, fault)
    if not killed or any(alive(p) for p in killed):
        result.violations.append(f"the worker node was not killed at {point}")
    return result


__all__ = ["cluster_target", "node_kill_sweep", "outage", "outage_sweep"]
