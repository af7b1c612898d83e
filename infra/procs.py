"""What the local cluster's pieces share: one-line errors, ports, processes we start and stop, private files."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil  # a dependency of peft, so always here


class ClusterError(RuntimeError):
    """One line: what failed and how to fix it."""


def free_port(port: int = 0) -> int:
    """`port` if it is free on 127.0.0.1, else 0; with 0, a free port the OS picks."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
        return s.getsockname()[1]


def write_private(path: str | Path, text: str) -> Path:
    """Write `text` to `path` readable by its owner only (mode 600 from the first byte: a fresh file created with
    that mode, then renamed over `path`), so a secret is never world-readable, not even for a moment."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
    return path


def run(cmd: list[str], what: str, env: dict | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ClusterError(f"{what} failed (rc {proc.returncode}): {' | '.join(tail)}")
    return proc.stdout


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def spawn(cmd: list[str], log: str | Path, env: dict[str, str], cwd: str, mode: str = "w") -> int:
    """Start a server in its own session, its output into `log`; returns its pid."""
    with open(log, mode) as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=cwd).pid


def wait(check, what: str, timeout: float, log: Path | None = None, pid: int | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        if pid is not None and not alive(pid):
            break
        time.sleep(0.5)
    tail = ""
    if log is not None and log.is_file():
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    raise ClusterError(f"{what} did not come up within {timeout:.0f} s" + (f": {tail}" if tail else "")
                       + (f" (log {log})" if log else ""))


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 15.0) -> int | None:
    """The HTTP status of GET url, or None when nothing answers."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def basic_auth_header(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def stop_pid(pid: int | None, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Signal one process we started (and then the processes it started) and wait for them to end."""
    if not alive(pid):
        return
    try:
        family = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
        os.kill(pid, sig)
    except (psutil.Error, ProcessLookupError):
        return
    deadline = time.time() + timeout
    while time.time() < deadline and any(alive(p) for p in family):
        time.sleep(0.2)
    for p in family:  # what did not end by itself
        if alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
