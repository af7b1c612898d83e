"""A tracking server of its own: `mlflow server` on 127.0.0.1 (a free port), a SQLite store and proxied artifacts,
stopped and started again on the same store and port (a tracking-server outage, for real).

    server = TrackingServer(f"sqlite:///{d}/mlflow.db", d / "artifacts", d / "server.log").start()
    ... server.uri ...; server.stop(); server.start(); server.stop()
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from infra.procs import free_port, http_status, spawn, stop_pid, wait


@dataclass
class TrackingServer:
    store: str  # the backend store URI
    artifacts: Path  # --artifacts-destination
    log: Path
    port: int = field(default_factory=free_port)
    pid: int | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180) -> TrackingServer:
        """Start it (its own session: the server and its workers stop together) and wait until it answers."""
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", self.store, "--artifacts-destination", str(self.artifacts), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_ENABLE_TELEMETRY": "false"}
        self.pid = spawn(cmd, self.log, env, str(self.log.parent), "a")
        wait(lambda: http_status(f"{self.uri}/health", timeout=2) == 200, "the MLflow server", timeout_s, self.log,
             self.pid)
        return self

    def stop(self) -> None:
        stop_pid(self.pid)
        self.pid = None


__all__ = ["TrackingServer"]
