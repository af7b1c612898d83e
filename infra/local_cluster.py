"""A whole cluster on one machine, on 127.0.0.1: what `--address` / `--tracking-uri` / `--storage-path` mean, for real.

    python infra/local_cluster.py up [--dir DIR] [--no-auth]   start everything, write DIR/state.json
    eval "$(python infra/local_cluster.py env [--dir DIR])"      the environment clients need (tokens, URIs)
    python infra/local_cluster.py status [--dir DIR]           what runs, one line each
    python infra/local_cluster.py down [--dir DIR]             stop exactly the processes `up` started

`up` starts
  * a Ray head and one more Ray node (`ray start --block`, 1 CPU each; node resources {"head": 1} and
    {"worker": 1} tell them apart), the dashboard and Jobs API on 127.0.0.1, token authentication on
    (RAY_AUTH_MODE=token, a token generated into DIR/ray_auth_token);
  * a PostgreSQL server (Debian's, from /usr/lib/postgresql/*/bin) initialised in a throwaway directory, run
    as the `postgres` user when we are root, listening on 127.0.0.1 only, password authentication;
  * an MLflow tracking server on that PostgreSQL with proxied artifacts (`--artifacts-destination`
    DIR/mlartifacts), with MLflow's basic-auth app (users in a second PostgreSQL database; the admin's
    generated password in the state file) unless --no-auth;
  * DIR/storage, the shared `--storage-path` (every node is this machine, so it is shared).

Ports are free ones picked at start (or --base-port N: N, N+1, ...). The state file (mode 600: it holds the
credentials) records every pid, port and URI; `down` signals exactly those pids (and the processes they
started), never `ray stop` (which would stop every Ray runtime of the machine, other users' too).

A Python API for tests: `up(dir) -> state`, `down(dir)`, `load(dir)`, `client_env(state)`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil  # a dependency of peft, so always here

STATE = "state.json"
DEFAULT_DIR = Path(".local-cluster")
BIN = Path(sys.executable).parent  # ray and mlflow of this environment (every node runs the same Python)
OBJECT_STORE_BYTES = 200 * 2**20  # small: two nodes share one machine's memory
APT_HINT = "install it: apt-get install -y postgresql (Debian/Ubuntu)"
# the `ray start` options of the ports each node listens on (besides its workers' range)
RAY_NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                  "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")


class ClusterError(RuntimeError):
    """One line: what failed and how to fix it."""


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
def free_port(port: int = 0) -> int:
    """`port` if it is free on 127.0.0.1, else 0; with 0, a free port the OS picks."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
        return s.getsockname()[1]


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


def _run(cmd: list[str], what: str, env: dict | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ClusterError(f"{what} failed (rc {proc.returncode}): {' | '.join(tail)}")
    return proc.stdout


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def _up(pid: int | None) -> str:
    """How `status` shows whether a process runs."""
    return "up" if _alive(pid) else "DOWN"


def _spawn(cmd: list[str], log: str | Path, env: dict[str, str], cwd: str, mode: str = "w") -> int:
    """Start a server in its own session, its output into `log`; returns its pid."""
    with open(log, mode) as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=cwd).pid


def _wait(check, what: str, timeout: float, log: Path | None = None, pid: int | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        if pid is not None and not _alive(pid):
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
    if not _alive(pid):
        return
    try:
        family = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
        os.kill(pid, sig)
    except (psutil.Error, ProcessLookupError):
        return
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in family):
        time.sleep(0.2)
    for p in family:  # what did not end by itself
        if _alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------
# The state file
# --------------------------------------------------------------------------------------------------
def load(directory: str | Path = DEFAULT_DIR) -> dict[str, Any]:
    path = Path(directory) / STATE
    if not path.is_file():
        raise ClusterError(f"no cluster at {directory} (no {STATE}): start one with `python infra/local_cluster.py up`")
    return json.loads(path.read_text())


def _save(state: dict[str, Any]) -> None:
    path = Path(state["dir"]) / STATE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def client_env(state: dict[str, Any]) -> dict[str, str]:
    """What a client of this cluster needs in its environment: Ray's token, MLflow's credentials."""
    ray, ml = state["ray"], state["mlflow"]
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": ray["token_path"],
           "RAY_API_SERVER_ADDRESS": ray["dashboard"]}
    if ml.get("username"):
        env.update(MLFLOW_TRACKING_USERNAME=ml["username"], MLFLOW_TRACKING_PASSWORD=ml["password"])
    env.update(CONDFACE_RAY_ADDRESS=ray["address"], CONDFACE_TRACKING_URI=ml["uri"],
               CONDFACE_STORAGE_PATH=state["storage_path"])
    return env


# --------------------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------------------
def _start_postgres(state: dict[str, Any], port: int) -> None:
    bin_dir = pg_bin()
    if bin_dir is None:
        raise ClusterError(f"PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): {APT_HINT}")
    # its own directory outside DIR: the postgres user must reach it (pytest's and users' dirs are often 700)
    root = Path(tempfile.mkdtemp(prefix="condface-pg-"))
    state["postgres"] = {"dir": str(root), "port": port, "bin": str(bin_dir), "pid": None}
    _save(state)
    password = secrets.token_urlsafe(18)
    (root / "pwfile").write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pwfile", "postgres", "postgres")
    data, log = root / "data", root / "postgres.log"
    _run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", f"--pwfile={root / 'pwfile'}",
                       "-A", "scram-sha-256", "-E", "UTF8", "--no-locale"]), "initdb")
    _run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                       f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"]), "pg_ctl start")
    pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    state["postgres"].update(pid=pid, password=password, log=str(log))
    _save(state)
    env = {**os.environ, "PGPASSWORD": password}
    for db in ("mlflow", "mlflow_auth"):
        _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", db], f"createdb {db}",
             env=env)
    state["postgres"]["uri"] = f"postgresql://mlflow:{password}@127.0.0.1:{port}/mlflow"
    state["postgres"]["auth_uri"] = f"postgresql://mlflow:{password}@127.0.0.1:{port}/mlflow_auth"
    _save(state)


def _ray_env(state: dict[str, Any]) -> dict[str, str]:
    """The Ray nodes' environment: the token; this environment's `python` first on PATH (what a Ray job's entrypoint
    runs); no MLflow credentials -- trials never write MLflow, only the driver does (and holds them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "RAY_ADDRESS"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=state["ray"]["token_path"], RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return env


def _start_ray_node(state: dict[str, Any], role: str, ports: dict[str, int], log_dir: Path) -> None:
    """Start one node with `ray start --block`; `ports` maps `ray start` port options (without --) to ports."""
    ray = state["ray"]
    log = log_dir / f"ray-{role}.log"
    cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
           "--resources", json.dumps({role: 1}), "--object-store-memory", str(OBJECT_STORE_BYTES),
           *(arg for option, port in ports.items() for arg in (f"--{option}", str(port)))]
    if role == "head":
        cmd += ["--head", "--port", str(ray["port"]), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                str(ray["dashboard_port"]), "--ray-client-server-port", str(ray["client_port"]),
                "--temp-dir", ray["temp_dir"]]
    else:  # its own temp dir: two nodes sharing one would unpack a job's working_dir over each other's copy
        node_temp = tempfile.mkdtemp(prefix="cfray-", dir="/tmp")
        cmd += ["--address", ray["address"], "--temp-dir", node_temp]
        ray.setdefault("node_temp_dirs", []).append(node_temp)
        _save(state)
    pid = _spawn(cmd, log, _ray_env(state), state["dir"])
    ray["nodes"][role] = {"pid": pid, "log": str(log), "node_manager_port": ports["node-manager-port"]}
    _save(state)
    _wait(lambda: "will now block forever" in log.read_text(errors="replace"), f"the Ray {role} node", 120, log, pid)
    ray["nodes"][role]["raylet_pid"] = _raylet_of(pid)
    ray["nodes"][role]["node_id"] = _node_id(state, ports["node-manager-port"])
    _save(state)


def _raylet_of(block_pid: int) -> int | None:
    for child in psutil.Process(block_pid).children(recursive=True):
        try:
            if child.name() == "raylet":
                return child.pid
        except psutil.Error:
            continue
    return None


def _node_id(state: dict[str, Any], node_manager_port: int) -> str | None:
    """The Ray node id of the raylet on this port (from the GCS, as a client of the cluster)."""
    code = (f"import json, ray; ray.init(address={state['ray']['address']!r}, logging_level='ERROR', "
            "log_to_driver=False); "
            "print(json.dumps([[n['NodeID'], n['NodeManagerPort']] for n in ray.nodes() if n['Alive']]))")
    try:
        out = _run([sys.executable, "-c", code], "reading the Ray node ids", env=_ray_env(state), timeout=90)
        for node_id, port in json.loads(out.strip().splitlines()[-1]):
            if int(port) == node_manager_port:
                return node_id
    except (ClusterError, ValueError, IndexError, subprocess.TimeoutExpired):
        pass
    return None


def _start_mlflow(state: dict[str, Any], port: int, auth: bool, log_dir: Path) -> None:
    directory = Path(state["dir"])
    artifacts = directory / "mlartifacts"
    artifacts.mkdir(exist_ok=True)
    log = log_dir / "mlflow.log"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", state["postgres"]["uri"],
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    info: dict[str, Any] = {"uri": f"http://127.0.0.1:{port}", "port": port, "artifacts": str(artifacts),
                            "log": str(log), "cmd": cmd}
    if auth:
        password = secrets.token_urlsafe(18)
        ini = directory / "mlflow_auth.ini"
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = {state['postgres']['auth_uri']}\n"
                       "admin_username = admin\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                       # a password check is a PBKDF2 hash (~3 s on a busy 2-core machine): cache good ones
                       "auth_cache_ttl_seconds = 600\n")
        os.chmod(ini, 0o600)
        # the admin is created with this password on first start; the secret key signs the UI's CSRF tokens
        info["server_env"] = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
                              "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(24)}
        cmd += ["--app-name", "basic-auth"]
        info.update(username="admin", password=password, auth_config=str(ini))
    state["mlflow"] = info
    _launch_mlflow(state, "w")


def _mlflow_status(info: dict[str, Any]) -> int | None:
    """The HTTP status of a one-experiment search on the tracking server (with the admin's credentials if any)."""
    headers = basic_auth_header(info["username"], info["password"]) if info.get("username") else {}
    return http_status(f"{info['uri']}/api/2.0/mlflow/experiments/search?max_results=1", headers)


def _launch_mlflow(state: dict[str, Any], log_mode: str) -> None:
    """Run the tracking server the state describes (command, server environment, log) until it answers."""
    info = state["mlflow"]
    env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", **info.get("server_env", {})}
    info["pid"] = _spawn(info["cmd"], info["log"], env, state["dir"], log_mode)
    _save(state)
    _wait(lambda: _mlflow_status(info) == 200, "the MLflow server", 120, Path(info["log"]), info["pid"])


def restart_mlflow(directory: str | Path = DEFAULT_DIR) -> dict[str, Any]:
    """Start the tracking server again after `stop_mlflow` (same port, store, credentials)."""
    state = load(directory)
    _launch_mlflow(state, "a")
    return state


def stop_mlflow(directory: str | Path = DEFAULT_DIR) -> None:
    """Stop only the tracking server (a fault test: the store and the Ray cluster stay up)."""
    state = load(directory)
    stop_pid(state["mlflow"].get("pid"))


# --------------------------------------------------------------------------------------------------
# The verbs
# --------------------------------------------------------------------------------------------------
def up(directory: str | Path = DEFAULT_DIR, auth: bool = True, base_port: int | None = None) -> dict[str, Any]:
    """Start the cluster (see the module docstring); returns its state. On failure, stops what it started."""
    directory = Path(directory).resolve()
    if (directory / STATE).is_file() and any(_alive(p) for p in _pids(load(directory))):
        raise ClusterError(f"a cluster is already up at {directory}: `python infra/local_cluster.py down "
                           f"--dir {directory}` first")
    directory.mkdir(parents=True, exist_ok=True)
    log_dir = directory / "logs"
    log_dir.mkdir(exist_ok=True)
    storage = directory / "storage"
    storage.mkdir(exist_ok=True)
    counter = iter(range(base_port, base_port + 1000)) if base_port else None

    used: set[int] = set()  # a free port picked twice (the OS may hand it out again) would collide

    def port() -> int:
        while True:
            p = next(counter) if counter else free_port()
            if p not in used:
                used.add(p)
                return p

    token_path = directory / "ray_auth_token"
    token_path.write_text(secrets.token_hex(32))
    os.chmod(token_path, 0o600)
    ray_port, dash_port = port(), port()
    state: dict[str, Any] = {
        "dir": str(directory), "started": time.time(), "storage_path": str(storage), "logs": str(log_dir),
        "ray": {"port": ray_port, "address": f"127.0.0.1:{ray_port}", "dashboard_port": dash_port,
                "dashboard": f"http://127.0.0.1:{dash_port}", "client_port": port(),
                # short: Ray's Unix socket paths live under it (108-byte limit)
                "temp_dir": tempfile.mkdtemp(prefix="cfray-", dir="/tmp"), "token_path": str(token_path),
                "nodes": {}},
        "mlflow": {},
    }
    _save(state)
    try:
        _start_postgres(state, port())
        for role in ("head", "worker"):
            ports = {option: port() for option in RAY_NODE_PORTS}
            ports["min-worker-port"] = _worker_port_range(counter, used)
            ports["max-worker-port"] = ports["min-worker-port"] + 99
            _start_ray_node(state, role, ports, log_dir)
        _start_mlflow(state, port(), auth, log_dir)
    except BaseException:
        down(directory)
        raise
    return state


def _worker_port_range(counter, used: set[int]) -> int:
    """The first of 100 free-looking ports for one node's Ray workers."""
    if counter is not None:
        first = next(counter)
        for _ in range(99):
            next(counter)
        return first
    for _ in range(50):
        first = free_port()
        span = range(first, first + 100)
        if first + 99 < 65535 and not used.intersection(span) and all(free_port(p) for p in span[::7]):
            used.update(span)
            return first
    raise ClusterError("found no 100 free ports in a row for a Ray node's workers: pass --base-port N")


def _pids(state: dict[str, Any]) -> list[int]:
    pids = [n.get("pid") for n in state.get("ray", {}).get("nodes", {}).values()]
    pids += [state.get("mlflow", {}).get("pid"), state.get("postgres", {}).get("pid")]
    return [p for p in pids if p]


def down(directory: str | Path = DEFAULT_DIR) -> None:
    """Stop exactly the processes `up` started (MLflow, the Ray nodes, PostgreSQL) and remove the throwaway dirs."""
    directory = Path(directory).resolve()
    if not (directory / STATE).is_file():
        return
    state = json.loads((directory / STATE).read_text())
    stop_pid(state.get("mlflow", {}).get("pid"))
    nodes = state.get("ray", {}).get("nodes", {})
    for role in ("worker", "head"):
        if role in nodes:  # SIGTERM to `ray start --block` stops that node's processes, then it exits
            stop_pid(nodes[role].get("pid"), timeout=30)
            stop_pid(nodes[role].get("raylet_pid"))
    pg = state.get("postgres", {})
    stop_pid(pg.get("pid"), sig=signal.SIGINT, timeout=30)  # SIGINT: PostgreSQL's "fast" shutdown
    for path in (pg.get("dir"), state.get("ray", {}).get("temp_dir"), *state.get("ray", {}).get("node_temp_dirs", [])):
        if path and Path(path).is_dir() and Path(path).name.startswith(("condface-pg-", "cfray-")):
            shutil.rmtree(path, ignore_errors=True)
    (directory / STATE).rename(directory / "state.down.json")


def status(directory: str | Path = DEFAULT_DIR) -> list[str]:
    state = load(directory)
    env = client_env(state)
    lines = []
    for role, node in state["ray"]["nodes"].items():
        lines.append(f"ray {role}: pid {node['pid']} {_up(node['pid'])}, raylet {node.get('raylet_pid')} "
                     f"{_up(node.get('raylet_pid'))}, node id {node.get('node_id')}")
    token = Path(state["ray"]["token_path"]).read_text().strip()
    code = http_status(f"{state['ray']['dashboard']}/api/version", {"Authorization": f"Bearer {token}"})
    lines.append(f"ray: --address {state['ray']['address']}, dashboard/Jobs API {state['ray']['dashboard']} "
                 f"(HTTP {code})")
    pg = state.get("postgres", {})
    lines.append(f"postgresql: pid {pg.get('pid')} {_up(pg.get('pid'))}, 127.0.0.1:{pg.get('port')}")
    ml = state["mlflow"]
    auth = f"basic, user {ml['username']}" if ml.get("username") else "off"
    lines.append(f"mlflow: pid {ml.get('pid')} {_up(ml.get('pid'))}, --tracking-uri {ml['uri']} "
                 f"(HTTP {_mlflow_status(ml)}; auth {auth})")
    lines.append(f"storage: --storage-path {state['storage_path']}")
    lines.append("client environment: eval \"$(python infra/local_cluster.py env)\" -> " + ", ".join(sorted(env)))
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python infra/local_cluster.py", description=__doc__.split("\n\n")[0])
    p.add_argument("verb", choices=("up", "down", "status", "env"))
    p.add_argument("--dir", default=os.environ.get("CONDFACE_CLUSTER_DIR", str(DEFAULT_DIR)),
                   help="where the state file, logs, artifacts and shared storage live (default ./.local-cluster, "
                        "or $CONDFACE_CLUSTER_DIR)")
    p.add_argument("--no-auth", action="store_true", help="MLflow without its basic-auth app (Ray keeps its token)")
    p.add_argument("--base-port", type=int, help="use ports from here upwards instead of free ones picked at random")
    args = p.parse_args(argv)
    try:
        if args.verb == "up":
            state = up(args.dir, auth=not args.no_auth, base_port=args.base_port)
            print("\n".join(status(state["dir"])))
            print(f"\nnext: eval \"$(python infra/local_cluster.py env --dir {args.dir})\", then\n"
                  "  python -m orchestration.sweep --preset smoke --address $CONDFACE_RAY_ADDRESS "
                  "--tracking-uri $CONDFACE_TRACKING_URI --storage-path $CONDFACE_STORAGE_PATH --data DIR")
        elif args.verb == "down":
            down(args.dir)
            print(f"stopped the cluster at {args.dir}")
        elif args.verb == "status":
            print("\n".join(status(args.dir)))
        else:
            for k, v in client_env(load(args.dir)).items():
                print(f"export {k}={v}")
    except ClusterError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
