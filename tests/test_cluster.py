"""The sweep on a real cluster on this machine (infra/local_cluster.py): a Ray head + one more Ray node started
with `ray start`, PostgreSQL, an MLflow server on it with basic-auth, a shared storage path.

The record is read back the way any client would: through the tracking server's REST API. The cluster's secrets
(Ray token, PostgreSQL and MLflow passwords) are looked for where they must never be: every command line (`ps`),
the state file, the logs, a Ray job's stored runtime_env, the MLflow record, the sweep's directory, the output. Skipped only where
PostgreSQL is not installed, and failed instead in CI (.ci/run installs it: apt-get install -y postgresql).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from infra import local_cluster as lc
from tests.tools import require

ROOT = Path(__file__).resolve().parent.parent
# What a checkout holds besides code (the demo's outputs, the venv, caches, this cluster's credentials): a job's
# working directory carries code only (infra/README.md), also where Ray is told to skip .gitignore.
JOB_EXCLUDES = ["/.venv", "/.cache", "/mlruns.db", "/mlartifacts", "/ray_results", "/reports", "/.local-cluster",
                "/tests/artifacts"]

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(home, tmp_path_factory):
    require(lc.pg_bin() is not None, "PostgreSQL is not installed here (no /usr/lib/postgresql/*/bin/initdb): "
                                     "apt-get install -y postgresql")
    directory = tmp_path_factory.mktemp("cluster")
    state = lc.up(directory)
    try:
        yield state
    finally:
        lc.down(directory)


# --------------------------------------------------------------------------------------------------
# Helpers: the sweep as a command, the record through the REST API
# --------------------------------------------------------------------------------------------------
def sweep_args(cluster: dict, data: str, experiment: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "orchestration.sweep", "--preset", "smoke", "--address", cluster["ray"]["address"],
            "--tracking-uri", cluster["mlflow"]["uri"], "--storage-path", cluster["storage_path"], "--data", data,
            "--experiment", experiment, *extra]


def client_env(cluster: dict, **extra: str) -> dict[str, str]:
    return {**os.environ, **lc.client_env(cluster), "PYTHONPATH": str(ROOT), **extra}


def run(args: list[str], env: dict, log: Path, watch: Callable[[str], bool] | None = None,
        timeout: float = 420) -> tuple[int, str]:
    """Run a command into `log`; `watch(text)` is called while it runs (returning True kills it: a dying driver)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + timeout
        try:
            while proc.poll() is None:
                if time.time() > deadline:
                    raise AssertionError(f"timed out after {timeout:.0f} s:\n{log.read_text()[-4000:]}")
                if watch is not None and watch(log.read_text(errors="replace")):
                    proc.kill()  # SIGKILL: the driver dies without closing anything
                    proc.wait(30)
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    return proc.returncode, log.read_text(errors="replace")


def rest(cluster: dict, endpoint: str, params: dict | None = None, body: dict | None = None,
         auth: bool = True) -> tuple[int, dict]:
    """GET (params) or POST (body) the tracking server's REST API: (status, JSON)."""
    url = f"{cluster['mlflow']['uri']}/api/2.0/mlflow/{endpoint}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    headers = {"Content-Type": "application/json"}
    if auth:
        headers.update(lc.basic_auth_header(*lc.mlflow_login(cluster)))
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers=headers,
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}


def record(cluster: dict, experiment: str) -> list[dict]:
    """Every run of the experiment (runs/search is POST-only in MLflow 3: GET answers 405)."""
    status, exp = rest(cluster, "experiments/get-by-name", {"experiment_name": experiment})
    assert status == 200, status
    status, found = rest(cluster, "runs/search", body={"experiment_ids": [exp["experiment"]["experiment_id"]],
                                                       "max_results": 1000})
    assert status == 200, status
    return found.get("runs", [])


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def history(cluster: dict, run: dict, key: str) -> list[int]:
    status, got = rest(cluster, "metrics/get-history", {"run_id": run["info"]["run_id"], "metric_key": key,
                                                        "max_results": 25000})
    assert status == 200, status
    return sorted(m["step"] for m in got.get("metrics", []))


def secrets_of(cluster: dict) -> dict[str, str]:
    """Every secret the cluster generated: the Ray token, PostgreSQL's and MLflow's passwords, the UI's key."""
    found = json.loads((Path(cluster["dir"]) / lc.SECRETS).read_text())
    found["ray_token"] = Path(cluster["ray"]["token_path"]).read_text().strip()
    return found


def command_lines() -> str:
    """Every process's command line on this machine, as every local user sees them."""
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout


def leaked(text: str, cluster: dict) -> list[str]:
    return [name for name, value in secrets_of(cluster).items() if value in text]


def trained_runs(runs: list[dict]) -> list[dict]:
    return [r for r in runs if tags(r).get("condface.phase") in ("grid", "final")]


def assert_complete(cluster: dict, experiment: str, epochs: int, final_epochs: int) -> list[dict]:
    """Every trial and the final run FINISHED with every epoch logged exactly once; the model registered."""
    runs = record(cluster, experiment)
    parents = [r for r in runs if tags(r).get("condface.phase") == "sweep"]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED", [r["info"] for r in parents]
    trained = trained_runs(runs)
    assert sorted(tags(r)["condface.phase"] for r in trained) == ["final", "grid", "grid"]
    for r in trained:
        assert r["info"]["status"] == "FINISHED", (r["info"]["run_name"], tags(r).get("condface.end_reason"))
        n = epochs if tags(r)["condface.phase"] == "grid" else final_epochs
        for key in ("train_loss", "val_loss", "epoch"):  # every epoch, exactly once
            assert history(cluster, r, key) == list(range(1, n + 1)), (r["info"]["run_name"], key)
    (final,) = [r for r in trained if tags(r)["condface.phase"] == "final"]
    status, model = rest(cluster, "registered-models/get", {"name": "condface-ddpm"})
    assert status == 200 and model["registered_model"]["name"] == "condface-ddpm"
    status, versions = rest(cluster, "model-versions/search",
                            {"filter": f"name = 'condface-ddpm' and run_id = '{final['info']['run_id']}'"})
    assert status == 200 and len(versions.get("model_versions", [])) == 1, versions
    return runs


# --------------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------------
def test_the_servers_refuse_requests_without_credentials(cluster):
    """MLflow's basic-auth app and Ray's token: 401 without them, 200 with them (also through MlflowClient)."""
    assert rest(cluster, "experiments/search", {"max_results": 1}, auth=False)[0] == 401
    assert rest(cluster, "experiments/search", {"max_results": 1})[0] == 200
    dashboard = cluster["ray"]["dashboard"]
    token = Path(cluster["ray"]["token_path"]).read_text().strip()
    for path in ("/api/version", "/api/jobs/"):
        assert lc.http_status(dashboard + path) == 401, path
        assert lc.http_status(dashboard + path, {"Authorization": f"Bearer {token}"}) == 200, path
    code = ("import mlflow, sys; c = mlflow.MlflowClient(sys.argv[1]); "
            "print('experiments', len(c.search_experiments()))")
    user, password = lc.mlflow_login(cluster)
    with_creds = subprocess.run([sys.executable, "-c", code, cluster["mlflow"]["uri"]], capture_output=True, text=True,
                                env=client_env(cluster, MLFLOW_TRACKING_USERNAME=user,
                                               MLFLOW_TRACKING_PASSWORD=password), timeout=120)
    assert with_creds.returncode == 0 and "experiments" in with_creds.stdout, with_creds.stderr[-2000:]
    anonymous = {k: v for k, v in client_env(cluster).items() if not k.startswith("MLFLOW_TRACKING_")}
    anonymous.pop("CONDFACE_MLFLOW_CREDENTIALS")
    without = subprocess.run([sys.executable, "-c", code, cluster["mlflow"]["uri"]], capture_output=True, text=True,
                             env={**anonymous, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}, timeout=120)
    assert without.returncode != 0 and "401" in without.stderr, without.stderr[-2000:]


def test_no_secret_in_a_command_line_the_state_file_or_a_log(cluster):
    """While every server runs: no secret in any process's command line (`ps`: PostgreSQL's password reaches MLflow
    through its environment), none in the state file or the servers' logs; every file holding one is mode 600."""
    assert not leaked(command_lines(), cluster)
    mlflow_args = " ".join(lc.psutil.Process(cluster["mlflow"]["pid"]).cmdline())
    assert "mlflow server" in mlflow_args and "--backend-store-uri" not in mlflow_args, mlflow_args
    directory = Path(cluster["dir"])
    assert not leaked((directory / lc.STATE).read_text(), cluster)
    for log in [*Path(cluster["logs"]).glob("*.log"), Path(cluster["postgres"]["log"])]:
        assert not leaked(log.read_text(errors="replace"), cluster), log
    files = lc.secret_files(cluster)
    assert {f.name for f in files} >= {lc.STATE, lc.SECRETS, lc.CREDENTIALS, "mlflow_auth.ini", "ray_auth_token"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "password" not in "".join(lc.client_env(cluster).values()).lower()  # `env` prints paths only


def test_a_sweep_on_two_nodes_as_a_ray_job_recorded_through_the_tracking_server(cluster, data, tmp_path):
    """`ray job submit --working-dir . -- python -m orchestration.sweep --address auto ...` reaches SUCCEEDED, its
    logs come back with `ray job logs`, its trials ran on both nodes, and the record read back over REST is
    complete. (The sweep run directly with --address is the fault tests' below.)"""
    ray = str(Path(sys.executable).parent / "ray")
    env = client_env(cluster)
    job = f"condface-job-{int(time.time())}"
    # MLflow's credentials: only the path of their mode-600 file travels with the job (infra/README.md)
    runtime_env = {"env_vars": {k: env[k] for k in ("CONDFACE_MLFLOW_CREDENTIALS", "CONDFACE_HOME")},
                   "excludes": JOB_EXCLUDES}
    entry = sweep_args(cluster, data, "cluster-job", "--epochs", "2")[1:]  # `python -m orchestration.sweep ...`
    entry[entry.index("--address") + 1] = "auto"  # the job's driver runs on the head node
    seen_in_ps: list[str] = []

    def watch(text: str) -> bool:  # the submitter, the job's driver and every server, while the job runs
        seen_in_ps.extend(leaked(command_lines(), cluster))
        return False

    rc, text = run([ray, "job", "submit", "--address", cluster["ray"]["dashboard"], "--submission-id", job,
                    "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env), "--", "python", *entry],
                   env, tmp_path / "submit.log", watch)
    assert rc == 0, text[-4000:]
    assert not seen_in_ps and not leaked(text, cluster), seen_in_ps
    status = subprocess.run([ray, "job", "status", "--address", cluster["ray"]["dashboard"], job], env=env,
                            capture_output=True, text=True, timeout=120)
    assert re.search(r"Job '\S+' succeeded", status.stdout + status.stderr), status.stdout + status.stderr
    token = Path(cluster["ray"]["token_path"]).read_text().strip()
    req = urllib.request.Request(f"{cluster['ray']['dashboard']}/api/jobs/{job}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # the Jobs REST API, with the dashboard's token
        info = resp.read().decode()
        assert json.loads(info)["status"] == "SUCCEEDED"
        assert not leaked(info, cluster)  # the job's stored runtime_env holds no password
    logs = subprocess.run([ray, "job", "logs", "--address", cluster["ray"]["dashboard"], job], env=env,
                          capture_output=True, text=True, timeout=120)
    assert logs.returncode == 0 and re.search(r"total wall time: \d+ s", logs.stdout), logs.stdout[-3000:]
    assert not leaked(logs.stdout, cluster)
    assert "Ray: 2 node(s)" in logs.stdout

    runs = assert_complete(cluster, "cluster-job", epochs=2, final_epochs=1)
    grid = [r for r in trained_runs(runs) if tags(r)["condface.phase"] == "grid"]
    nodes = {n["node_id"] for n in cluster["ray"]["nodes"].values()}
    assert {tags(r)["condface.node_id"] for r in grid} == nodes  # one trial on each node (1 CPU each)
    assert all(json.loads(tags(r)["condface.resources"]) == {"CPU": 1.0} for r in grid)
    # only the driver writes MLflow: the nodes hold no MLflow credentials (the job's env_vars reach its own
    # workers only), and the server refuses anonymous writes (the test above), so the record came from the driver
    for node in cluster["ray"]["nodes"].values():
        environ = Path(f"/proc/{node['raylet_pid']}/environ").read_bytes().split(b"\0")
        assert not any(e.startswith(b"MLFLOW_TRACKING_PASSWORD=") for e in environ)


def test_a_node_killed_and_the_tracking_server_down_mid_sweep_then_the_driver_killed_and_resumed(cluster, data,
                                                                                                 tmp_path):
    """Through the crash harness (orchestration.crash), three faults in one sweep on the cluster:
    (a) the driver is held at the grid's first trial report (its 10th MLflow write: both trials, one per node,
    are mid-run) while the worker node's raylet is SIGKILLed and (b) the tracking server stopped; released into
    both, Tune retries the trial that ran on the lost node on the head from its last checkpoint, and the driver
    waits and retries MLflow (bounded) until the server is back 10 s later. (c) Then the driver dies (SIGKILL) at
    the third MLflow write after Tune's retry is recorded (the point `ddpm/grid:retried`; a write count from the
    grid's start raced the retry); `--resume` against the same cluster and server continues and finishes.
    The record keeps every invariant of orchestration.crash_record.
    (d) Both commands pass MLflow's credentials in --tracking-uri (http://admin:PW@...), the only place they are:
    the password is in no MLflow param or tag, no file of the sweep's directory (sweep.json, the report) and
    not in the output, which shows it as ***. Last in this module: the cluster has one node afterwards."""
    from orchestration.crash.variants import cluster_target, node_kill_sweep, outage

    user, password = lc.mlflow_login(cluster)
    uri = cluster["mlflow"]["uri"]
    env = client_env(cluster)
    env.pop("CONDFACE_MLFLOW_CREDENTIALS")
    target = cluster_target(cluster, data, "cluster-faults", 2, env=env,
                            uri=uri.replace("http://", f"http://{user}:{password}@"))
    server_down = outage(lambda: lc.stop_mlflow(cluster["dir"]), lambda: lc.restart_mlflow(cluster["dir"]), 10)
    result = node_kill_sweep(cluster, data, tmp_path, "10@ddpm/grid", "cluster-faults", timeout_s=420,
                             max_resumes=1, target=target, kills=["3@ddpm/grid:retried"], also=server_down)
    first, second = (log.read_text() for log in result.logs)
    assert result.violations == [], "\n".join(result.violations + result.killed) + second[-3000:]
    assert any(ln.startswith("[fault] held before MLflow write") for ln in result.killed), result.killed
    assert not lc.alive(cluster["ray"]["nodes"]["worker"]["raylet_pid"])
    assert re.search(r"MLflow server \S+ unreachable", first) and "reachable again" in first, first[-3000:]
    assert first.index("reachable again") < first.index("[fault] SIGKILL")  # killed after the outage
    assert result.codes == [-9, 0]
    assert re.search(r"^\[ddpm/grid\] cut short in an earlier run: continuing", second, re.M), second[-3000:]
    runs = assert_complete(cluster, "cluster-faults", epochs=2, final_epochs=1)
    head = cluster["ray"]["nodes"]["head"]["node_id"]
    grid = [r for r in trained_runs(runs) if tags(r)["condface.phase"] == "grid"]
    assert any(int(tags(r).get("condface.retries", 0)) >= 1 for r in grid), [tags(r) for r in grid]
    assert {tags(r)["condface.node_id"] for r in grid} == {head}  # their last epochs ran on the surviving node
    assert f"{uri.replace('http://', f'http://{user}:***@')}: the credentials were moved" in first
    assert password not in first + second
    assert password not in json.dumps([r["data"] for r in runs])  # every run's params and tags
    (parent,) = [r for r in runs if tags(r).get("condface.phase") == "sweep"]
    assert {p["key"]: p["value"] for p in parent["data"]["params"]}["tracking_uri"] == uri
    sweep_dir = Path(tags(parent)["condface.storage"])
    assert (sweep_dir / "sweep.json").is_file()
    for path in sweep_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert password.encode() not in path.read_bytes(), path
