"""Where the MLflow store is, whether it can be written or reached, and how to look at it in the UI."""

from __future__ import annotations

import os
import socket
import urllib.parse
from pathlib import Path

from data.catalogue import redact_uri
from orchestration.errors import SweepError

UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside an SQLite file; a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Raise SweepError when the store cannot be written (SQLite/file) or reached (http)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):])
        check_writable_dir(path.parent, what=f"MLflow store {redact_uri(uri)}", fix="pass a writable --tracking-uri")
    elif parsed.scheme in ("http", "https"):
        check_server(uri, "start it (`mlflow server ...`) or drop --tracking-uri to use the embedded store", timeout_s)
    elif parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else uri)
        check_writable_dir(path, what=f"MLflow store {redact_uri(uri)}", fix="pass a writable --tracking-uri")
    # other schemes (databricks, ...) are checked by MLflow itself on first use


def check_server(uri: str, fix: str, timeout_s: float = 5.0) -> None:
    """An http(s) MLflow server must accept a TCP connection, or SweepError("cannot reach ...: <fix>"). Light: the
    report's read-only checks can use it too (this package's __init__ imports nothing)."""
    parsed = urllib.parse.urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as err:
        raise SweepError(f"cannot reach the MLflow server at {redact_uri(uri)} ({err.strerror or err}): {fix}") from None


def check_writable_dir(path: Path, what: str, fix: str) -> None:
    """Create `path` if needed and prove it writable, or raise SweepError("<what> is not writable (...): <fix>")."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SweepError(f"{what} is not writable ({err.strerror or err}): {fix}") from None


def mlflow_ui_command(uri: str) -> str:
    cmd = f"mlflow ui --backend-store-uri {redact_uri(uri)}"
    if uri.startswith("sqlite:///"):
        cmd += f" --default-artifact-root {artifact_root(uri)}"
    return cmd



def mlflow_ui_link(experiment_id: str, address: str = UI_ADDRESS) -> str:
    """The experiment's training runs in the UI: a direct link, since MLflow 3 opens an experiment on its GenAI
    overview (traces and tokens) whatever its kind tag says."""
    return f"{address}/#/experiments/{experiment_id}/runs"
