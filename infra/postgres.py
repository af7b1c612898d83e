"""A throwaway PostgreSQL server for the local cluster: Debian's programs, initialised in a directory of its own,
listening on 127.0.0.1 only, password (scram-sha-256) authentication, one role `mlflow` owning the databases.

The password travels only through a mode-600 file (initdb's --pwfile, removed afterwards) and the environment
(PGPASSWORD); the server's record (`start`'s return value, kept in the cluster's state file) holds none.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from infra.procs import ClusterError, run, stop_pid, write_private

APT_HINT = "install it: apt-get install -y postgresql (Debian/Ubuntu)"
ROLE = "mlflow"


def pg_bin() -> Path | None:
    """Debian's PostgreSQL programs (newest major version), else initdb on PATH, else None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its server programs as the `postgres` user."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{c}'" for c in cmd)]


def uri(info: dict[str, Any], database: str, password: str) -> str:
    """The SQLAlchemy URI of one database, with the password: for the environment or a mode-600 file only."""
    return f"postgresql://{ROLE}:{password}@127.0.0.1:{info['port']}/{database}"


def start(port: int, password: str, databases: tuple[str, ...], record) -> dict[str, Any]:
    """Initialise and start a server on 127.0.0.1:`port`, create `databases`; returns its record (no password).
    `record(info)` is called as soon as there is something to clean up, so a failure half-way can be undone."""
    bin_dir = pg_bin()
    if bin_dir is None:
        raise ClusterError(f"PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): {APT_HINT}")
    # its own directory (mode 700) outside the cluster's: the postgres user must reach it (pytest's and users'
    # directories are often 700)
    root = Path(tempfile.mkdtemp(prefix="condface-pg-"))
    info: dict[str, Any] = {"dir": str(root), "port": port, "bin": str(bin_dir), "pid": None, "role": ROLE,
                            "databases": list(databases)}
    record(info)
    pwfile = write_private(root / "pwfile", password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    data, log = root / "data", root / "postgres.log"
    try:
        run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", ROLE, f"--pwfile={pwfile}",
                          "-A", "scram-sha-256", "-E", "UTF8", "--no-locale"]), "initdb")
    finally:
        pwfile.unlink(missing_ok=True)
    run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                      f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"]), "pg_ctl start")
    info.update(pid=int((data / "postmaster.pid").read_text().splitlines()[0]), log=str(log))
    record(info)
    env = {**os.environ, "PGPASSWORD": password}
    for db in databases:
        run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", ROLE, db], f"createdb {db}", env=env)
    return info


def stop(info: dict[str, Any]) -> None:
    """Stop the server ("fast" shutdown: SIGINT) and remove its throwaway directory."""
    stop_pid(info.get("pid"), sig=signal.SIGINT, timeout=30)
    path = info.get("dir")
    if path and Path(path).is_dir() and Path(path).name.startswith("condface-pg-"):
        shutil.rmtree(path, ignore_errors=True)
