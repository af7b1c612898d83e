"""A whole cluster on one machine, on 127.0.0.1: what `--address` / `--tracking-uri` / `--storage-path` mean, for real.

    python infra/local_cluster.py up [--dir DIR] [--no-auth]   start everything, write DIR/state.json
    eval "$(python infra/local_cluster.py env [--dir DIR])"      the environment clients need (paths and URIs only)
    python infra/local_cluster.py status [--dir DIR]           what runs, one line each
    python infra/local_cluster.py down [--dir DIR]             stop exactly the processes `up` started

`up` starts
  * a Ray head and one more Ray node (`ray start --block`, 1 CPU each; node resources {"head": 1} and
    {"worker": 1} tell them apart), the dashboard and Jobs API on 127.0.0.1, token authentication on
    (RAY_AUTH_MODE=token, a token generated into DIR/ray_auth_token);
  * a PostgreSQL server (infra/postgres.py) on 127.0.0.1, password authentication;
  * an MLflow tracking server on that PostgreSQL with proxied artifacts (`--artifacts-destination`
    DIR/mlartifacts), with MLflow's basic-auth app (users in a second PostgreSQL database; the admin's
    generated password in DIR/mlflow_credentials) unless --no-auth;
  * DIR/storage, the shared `--storage-path` (every node is this machine, so it is shared).

Secrets (the Ray token, the PostgreSQL and MLflow passwords, the UI's secret key) are generated here and live only
in mode-600 files created with that mode (DIR/ray_auth_token, DIR/secrets.json, DIR/mlflow_credentials in the
format of MLflow's ~/.mlflow/credentials, DIR/mlflow_auth.ini) and in the environment of the processes that need
them: never in a command line or the state file. Ports are free ones picked at start (or --base-port N: N, N+1,
...). The state file (mode 600) records every pid, port, URI and secret file; `down` signals exactly those pids
(and the processes they started), never `ray stop` (which would stop every Ray runtime of the machine, other
users' too).

A Python API for tests: `up(dir) -> state`, `down(dir)`, `load(dir)`, `client_env(state)`, `mlflow_login(state)`.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil  # a dependency of peft, so always here

if __name__ == "__main__" and not __package__:  # `python infra/local_cluster.py`: import from the checkout's root
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from infra import postgres  # noqa: E402
from infra.postgres import pg_bin  # noqa: E402
from infra.procs import (  # noqa: E402
    ClusterError,
    alive,
    basic_auth_header,
    free_port,
    http_status,
    run,
    spawn,
    stop_pid,
    wait,
    write_private,
)

STATE = "state.json"
SECRETS = "secrets.json"  # the servers' secrets: PostgreSQL's and the MLflow admin's passwords, the UI's secret key
CREDENTIALS = "mlflow_credentials"  # the MLflow admin's login, for clients (CONDFACE_MLFLOW_CREDENTIALS)
DEFAULT_DIR = Path(".local-cluster")
BIN = Path(sys.executable).parent  # ray and mlflow of this environment (every node runs the same Python)
SERVER_START_S = 300  # the tracking server (auth app, migrations) takes minutes to answer on a loaded machine
OBJECT_STORE_BYTES = 200 * 2**20  # small: two nodes share one machine's memory
# the `ray start` options of the ports each node listens on (besides its workers' range)
RAY_NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                  "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")
__all__ = ["ClusterError", "basic_auth_header", "free_port", "http_status", "pg_bin", "stop_pid", "up", "down",
           "load", "status", "client_env", "mlflow_login", "secret_files", "stop_mlflow", "restart_mlflow"]


# --------------------------------------------------------------------------------------------------
# The state file and the secret files
# --------------------------------------------------------------------------------------------------
def load(directory: str | Path = DEFAULT_DIR) -> dict[str, Any]:
    path = Path(directory) / STATE
    if not path.is_file():
        raise ClusterError(f"no cluster at {directory} (no {STATE}): start one with `python infra/local_cluster.py up`")
    return json.loads(path.read_text())


def _save(state: dict[str, Any]) -> None:
    write_private(Path(state["dir"]) / STATE, json.dumps(state, indent=2))


def _secrets(state: dict[str, Any]) -> dict[str, str]:
    return json.loads((Path(state["dir"]) / SECRETS).read_text())


def secret_files(state: dict[str, Any]) -> list[Path]:
    """Every file of the cluster that holds a secret (each mode 600)."""
    directory = Path(state["dir"])
    names = (STATE, SECRETS, CREDENTIALS, "mlflow_auth.ini", Path(state["ray"]["token_path"]).name)
    return [directory / n for n in names if (directory / n).is_file()]


def mlflow_login(state: dict[str, Any]) -> tuple[str, str] | None:
    """The MLflow admin's (username, password), or None when the server runs without authentication."""
    path = state["mlflow"].get("credentials")
    if not path:
        return None
    section = configparser.ConfigParser(interpolation=None)
    section.read(path)
    return section["mlflow"]["mlflow_tracking_username"], section["mlflow"]["mlflow_tracking_password"]


def client_env(state: dict[str, Any]) -> dict[str, str]:
    """What a client of this cluster needs in its environment: where Ray's token and MLflow's credentials are (files,
    mode 600: no secret itself, so `env` can print it), and the addresses."""
    ray, ml = state["ray"], state["mlflow"]
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": ray["token_path"],
           "RAY_API_SERVER_ADDRESS": ray["dashboard"]}
    if ml.get("credentials"):  # the sweep reads it (orchestration.tracking.credentials)
        env["CONDFACE_MLFLOW_CREDENTIALS"] = ml["credentials"]
    env.update(CONDFACE_RAY_ADDRESS=ray["address"], CONDFACE_TRACKING_URI=ml["uri"],
               CONDFACE_STORAGE_PATH=state["storage_path"])
    return env


# --------------------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------------------
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
    pid = spawn(cmd, log, _ray_env(state), state["dir"])
    ray["nodes"][role] = {"pid": pid, "log": str(log), "node_manager_port": ports["node-manager-port"]}
    _save(state)
    wait(lambda: "will now block forever" in log.read_text(errors="replace"), f"the Ray {role} node", 120, log, pid)
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
        out = run([sys.executable, "-c", code], "reading the Ray node ids", env=_ray_env(state), timeout=90)
        for node_id, port in json.loads(out.strip().splitlines()[-1]):
            if int(port) == node_manager_port:
                return node_id
    except (ClusterError, ValueError, IndexError, subprocess.TimeoutExpired):
        pass
    return None


def _start_postgres(state: dict[str, Any], port: int) -> None:
    def record(info: dict[str, Any]) -> None:
        state["postgres"] = info
        _save(state)

    info = postgres.start(port, _secrets(state)["postgres_password"], ("mlflow", "mlflow_auth"), record)
    info["uri"] = f"postgresql://{postgres.ROLE}@127.0.0.1:{port}/mlflow"  # what it is, without the password
    record(info)


def _start_mlflow(state: dict[str, Any], port: int, auth: bool, log_dir: Path) -> None:
    """The tracking server on PostgreSQL: its store's URI (with the password) goes through its environment
    (MLFLOW_BACKEND_STORE_URI, which `mlflow server` reads), the auth database's through a mode-600 config."""
    directory = Path(state["dir"])
    artifacts = directory / "mlartifacts"
    artifacts.mkdir(exist_ok=True)
    log = log_dir / "mlflow.log"
    cmd = [str(BIN / "mlflow"), "server", "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    info: dict[str, Any] = {"uri": f"http://127.0.0.1:{port}", "port": port, "artifacts": str(artifacts),
                            "log": str(log), "cmd": cmd, "backend_store": state["postgres"]["uri"]}
    if auth:
        known = _secrets(state)
        ini = write_private(directory / "mlflow_auth.ini", (
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {postgres.uri(state['postgres'], 'mlflow_auth', known['postgres_password'])}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # a password check is a PBKDF2 hash (~3 s on a busy 2-core machine): cache good ones
            "auth_cache_ttl_seconds = 600\n"))
        credentials = write_private(directory / CREDENTIALS, (  # MLflow's ~/.mlflow/credentials format
            f"[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = {known['mlflow_password']}\n"))
        cmd += ["--app-name", "basic-auth"]
        info.update(username="admin", credentials=str(credentials), auth_config=str(ini))
    state["mlflow"] = info
    _launch_mlflow(state, "w")


def _server_env(state: dict[str, Any]) -> dict[str, str]:
    """The tracking server's environment: its store (with PostgreSQL's password); with auth, its config, the admin's
    first password (the admin is created with it on first start) and the key that signs the UI's CSRF tokens."""
    known, info = _secrets(state), state["mlflow"]
    env = {"MLFLOW_ENABLE_TELEMETRY": "false",
           "MLFLOW_BACKEND_STORE_URI": postgres.uri(state["postgres"], "mlflow", known["postgres_password"])}
    if info.get("auth_config"):
        env.update(MLFLOW_AUTH_CONFIG_PATH=info["auth_config"], MLFLOW_AUTH_ADMIN_PASSWORD=known["mlflow_password"],
                   MLFLOW_FLASK_SERVER_SECRET_KEY=known["flask_secret_key"])
    return env


def _mlflow_status(state: dict[str, Any]) -> int | None:
    """The HTTP status of a one-experiment search on the tracking server (with the admin's credentials if any)."""
    login = mlflow_login(state)
    headers = basic_auth_header(*login) if login else {}
    return http_status(f"{state['mlflow']['uri']}/api/2.0/mlflow/experiments/search?max_results=1", headers)


def _launch_mlflow(state: dict[str, Any], log_mode: str) -> None:
    """Run the tracking server the state describes (command, server environment, log) until it answers."""
    info = state["mlflow"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    info["pid"] = spawn(info["cmd"], info["log"], {**env, **_server_env(state)}, state["dir"], log_mode)
    _save(state)
    wait(lambda: _mlflow_status(state) == 200, "the MLflow server", SERVER_START_S, Path(info["log"]), info["pid"])


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
    if (directory / STATE).is_file() and any(alive(p) for p in _pids(load(directory))):
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

    token_path = write_private(directory / "ray_auth_token", secrets.token_hex(32))
    write_private(directory / SECRETS, json.dumps({"postgres_password": secrets.token_urlsafe(18),
                                                   "mlflow_password": secrets.token_urlsafe(18),
                                                   "flask_secret_key": secrets.token_hex(24)}))
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
    postgres.stop(state.get("postgres", {}))
    for path in (state.get("ray", {}).get("temp_dir"), *state.get("ray", {}).get("node_temp_dirs", [])):
        if path and Path(path).is_dir() and Path(path).name.startswith("cfray-"):
            shutil.rmtree(path, ignore_errors=True)
    for path in secret_files(state) if state.get("ray") else ():  # the servers they opened are gone
        if path.name != STATE:
            path.unlink()
    (directory / STATE).rename(directory / "state.down.json")


def _shown(pid: int | None) -> str:
    """How `status` shows whether a process runs."""
    return "up" if alive(pid) else "DOWN"


def status(directory: str | Path = DEFAULT_DIR) -> list[str]:
    state = load(directory)
    env = client_env(state)
    lines = []
    for role, node in state["ray"]["nodes"].items():
        lines.append(f"ray {role}: pid {node['pid']} {_shown(node['pid'])}, raylet {node.get('raylet_pid')} "
                     f"{_shown(node.get('raylet_pid'))}, node id {node.get('node_id')}")
    token = Path(state["ray"]["token_path"]).read_text().strip()
    code = http_status(f"{state['ray']['dashboard']}/api/version", {"Authorization": f"Bearer {token}"})
    lines.append(f"ray: --address {state['ray']['address']}, dashboard/Jobs API {state['ray']['dashboard']} "
                 f"(HTTP {code})")
    pg = state.get("postgres", {})
    lines.append(f"postgresql: pid {pg.get('pid')} {_shown(pg.get('pid'))}, 127.0.0.1:{pg.get('port')}")
    ml = state["mlflow"]
    auth = f"basic, user {ml['username']}, credentials {ml['credentials']}" if ml.get("username") else "off"
    lines.append(f"mlflow: pid {ml.get('pid')} {_shown(ml.get('pid'))}, --tracking-uri {ml['uri']} "
                 f"(HTTP {_mlflow_status(state)}; auth {auth}; store {ml.get('backend_store')})")
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
