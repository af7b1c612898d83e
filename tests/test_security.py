"""Secrets kept secret, the cheap checks: nothing listens beyond 127.0.0.1 by default (code, docs, infra configs), the
cluster YAML hands every node the Ray token through a file, credentials in a tracking URI never reach a record,
`sweep.json` or the output, secret files are private from their first byte, CI stops when a tool cannot be
installed. (With a running cluster, tests/test_cluster.py reads `ps`, the state file and the MLflow record.)"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from data.catalogue import redact_uri, split_credentials
from infra import procs
from orchestration.config import resolve
from orchestration.errors import SweepError
from orchestration.state import STATE_FILE, SweepState
from orchestration.tracking.credentials import take_credentials
from tests.tools import run_module

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Pa55"
DOCS = [ROOT / "README.md", ROOT / "infra" / "README.md", ROOT / "infra" / "ray-cluster.yaml"]
CODE = [p for d in ("data", "models", "evaluation", "orchestration", "infra") for p in (ROOT / d).rglob("*.py")]
ANY_INTERFACE = re.compile(r"0\.0\.0\.0|[\"']::[\"']|host[= ]+(?:\*|\[?::\]?)(?:\s|$)")  # IPv4 / IPv6 "any"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def clean_env(monkeypatch):
    """No MLflow credentials in the environment, and none left behind: the code under test sets them in os.environ,
    and a later test's subprocess (a cluster sweep) would log in with them. setenv first makes monkeypatch record
    each variable, so its teardown restores the variable's absence too."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "CONDFACE_MLFLOW_CREDENTIALS"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


# --------------------------------------------------------------------------------------------------
# Listening addresses, the Ray token, the docs
# --------------------------------------------------------------------------------------------------
def test_nothing_listens_on_every_interface_by_default():
    """No command, config or code binds 0.0.0.0 / :: (the dashboard's Jobs API runs code; MLflow's data)."""
    hits = [f"{path.relative_to(ROOT)}: {line.strip()}" for path in DOCS + CODE
            for line in path.read_text().splitlines() if ANY_INTERFACE.search(line)]
    assert not hits, hits


def test_the_cluster_yaml_gives_every_node_the_token_through_a_private_file():
    """Every `ray start` runs with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH naming a file that file_mounts copies
    from where `ray get-auth-token --generate` writes it, that setup refuses unless it is mode 600, and no token
    travels in a command line; the dashboard stays on 127.0.0.1."""
    config = yaml.safe_load((ROOT / "infra" / "ray-cluster.yaml").read_text())
    mounts = {os.path.expanduser(k): v for k, v in config["file_mounts"].items()}
    setup = " ; ".join(config["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if re.search(r"\bray start\b", c)]
        assert starts, key
        for command in starts:
            words = shlex.split(command)
            env = dict(w.split("=", 1) for w in words[:next(i for i, w in enumerate(words) if "=" not in w)])
            assert env.get("RAY_AUTH_MODE") == "token", command
            assert "RAY_AUTH_TOKEN" not in env and "--auth-token" not in command, command  # never the token itself
            token_path = os.path.expanduser(env["RAY_AUTH_TOKEN_PATH"].replace("$HOME", "~"))
            assert mounts.get(token_path) == "~/.ray/auth_token", (token_path, mounts)  # where Ray generates it
            remote = env["RAY_AUTH_TOKEN_PATH"].replace("$HOME", "~")
            assert re.search(rf'stat -c %a {re.escape(remote)}\)" = 600 \|\|', setup), setup
            host = re.search(r"--dashboard-host[= ](\S+)", command)
            assert host is None or host.group(1) in ("127.0.0.1", "localhost"), command


def test_the_docs_show_a_shared_mlflow_server_with_authentication_behind_tls():
    """Every `mlflow server` the docs show has the basic-auth app and listens on 127.0.0.1, its store URI (with a
    password) comes from the environment, TLS in front is explained; no doc puts MLflow's password into a Ray
    job's runtime_env or any command line."""
    text = (ROOT / "infra" / "README.md").read_text()
    servers = [m.group(0) for m in re.finditer(r"^ {4}mlflow server(?:[^\n]*\\\n)*[^\n]*", text, re.M)]
    assert servers
    for command in servers:
        assert "--app-name basic-auth" in command and "--host 127.0.0.1" in command, command
        assert "--backend-store-uri" not in command, command
    assert "MLFLOW_BACKEND_STORE_URI" in text and re.search(r"reverse.proxy", text) and "proxy_pass" in text
    for path in DOCS:
        for line in path.read_text().splitlines():
            assert not re.search(r"runtime-env-json.*MLFLOW_TRACKING_PASSWORD|env MLFLOW_TRACKING_PASSWORD=", line), line


# --------------------------------------------------------------------------------------------------
# Credentials in a tracking URI: moved to the environment, redacted wherever shown
# --------------------------------------------------------------------------------------------------
def test_redact_uri_hides_passwords_and_keeps_the_rest():
    assert redact_uri(f"http://admin:{SECRET}@mlflow.example.org:5000/x?a=1") == \
        "http://admin:***@mlflow.example.org:5000/x?a=1"
    assert redact_uri(f"postgresql://mlflow:{SECRET}@127.0.0.1:5432/mlflow?sslmode=require&password={SECRET}") == \
        "postgresql://mlflow:***@127.0.0.1:5432/mlflow?sslmode=require&password=***"
    assert redact_uri(f"API request to https://u:{SECRET}@h/api/2.0 failed") == "API request to https://u:***@h/api/2.0 failed"
    for kept in ("sqlite:////tmp/x/mlruns.db", "http://127.0.0.1:5000", "file:///x", "ray_results", None):
        assert redact_uri(kept) == kept
    assert split_credentials("https://a%40b:p%3Aw@h:1/p") == ("https://h:1/p", "a@b", "p:w")


def test_credentials_in_the_tracking_uri_reach_no_param_state_file_or_output(clean_env, tmp_path, capsys):
    """`--tracking-uri http://admin:PW@host` as the sweep takes it: the credentials move into MLflow's variables, the
    parent run's params and `sweep.json` hold the URI without them, what is printed shows ***."""
    uri = f"http://admin:{SECRET}@127.0.0.1:5000"
    cfg = resolve("smoke", tracking_uri=uri, storage_path=str(tmp_path))
    assert SECRET not in str(cfg.params())  # even before the credentials are taken out
    cfg = dataclasses.replace(cfg, tracking_uri=take_credentials(cfg.tracking_uri))
    assert cfg.tracking_uri == "http://127.0.0.1:5000"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("admin", SECRET)
    printed = capsys.readouterr().out
    assert "http://admin:***@127.0.0.1:5000" in printed and SECRET not in printed
    state = SweepState.create(resolve("smoke", tracking_uri=uri, storage_path=str(tmp_path)), uri)  # the API's way
    assert SECRET not in (state.root / STATE_FILE).read_text()
    assert SweepState.load(state.root).tracking_uri == "http://127.0.0.1:5000"


def test_an_unreachable_credentialed_server_is_named_without_its_password(clean_env, tmp_path):
    closed = procs.free_port()
    out = run_module("orchestration.sweep", "--preset", "smoke", "--storage-path", str(tmp_path),
                     "--tracking-uri", f"http://admin:{SECRET}@127.0.0.1:{closed}", cwd=tmp_path)
    assert out.returncode == 1
    assert f"cannot reach the MLflow server at http://127.0.0.1:{closed}" in out.stderr, out.stderr
    assert SECRET not in out.stdout + out.stderr


def test_a_credentials_file_must_be_private(clean_env, tmp_path, monkeypatch):
    """CONDFACE_MLFLOW_CREDENTIALS (what a Ray job's driver gets: a path) is read only when mode 600."""
    path = tmp_path / "credentials"
    path.write_text(f"[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = {SECRET}\n")
    monkeypatch.setenv("CONDFACE_MLFLOW_CREDENTIALS", str(path))
    path.chmod(0o644)
    with pytest.raises(SweepError, match=r"readable by others \(mode 644\): chmod 600"):
        take_credentials("http://127.0.0.1:5000")
    path.chmod(0o600)
    assert take_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET


def test_secret_files_are_private_from_the_first_byte(tmp_path, monkeypatch):
    """Created with mode 600 (os.open), not written and then chmod-ed: even under umask 000, and over a file that
    was world-readable."""
    monkeypatch.setattr(os, "chmod", lambda *a, **k: pytest.fail("chmod after writing leaves a window"))
    old = os.umask(0)
    try:
        path = tmp_path / "token"
        path.write_text("old")  # 666 under umask 000
        procs.write_private(path, SECRET)
    finally:
        os.umask(old)
    assert mode(path) == 0o600 and path.read_text() == SECRET
    assert [p.name for p in tmp_path.iterdir()] == ["token"]


# --------------------------------------------------------------------------------------------------
# CI: a tool that cannot be installed stops it
# --------------------------------------------------------------------------------------------------
def test_ci_stops_when_a_tool_cannot_be_installed(tmp_path):
    """.ci/run's install step, with an apt-get that fails: CI exits 1 with the reason (it never goes on to skip)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("apt-get", "sudo"):
        (fake / tool).write_text("#!/bin/sh\n" + ('exec "$@"\n' if tool == "sudo" else "exit 100\n"))
        (fake / tool).chmod(0o755)
    script = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"^install\(\) \{.*?^\}", script, re.S | re.M).group(0)
    for package, what in (("postgresql", "the cluster tests"), ("chromium", "the MLflow UI test")):
        assert re.search(rf"\|\| install {package} \"{what}", script), package
        run = subprocess.run(["bash", "-c", f"set -euo pipefail; SUDO=sudo; {install}\ninstall {package} '{what}'; "
                                            "echo went-on"], capture_output=True, text=True,
                             env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}, timeout=30)
        assert run.returncode == 1 and "went-on" not in run.stdout, run
        assert f"ci: {package} could not be installed" in run.stderr
    assert re.search(r"^export CI=true$", script, re.M)  # so tests.tools.require fails instead of skipping


def test_the_local_runtime_token_is_private(tmp_path, monkeypatch, capsys):
    """The sweep's local Ray runtime: its token file is made mode 600 before Ray would write it with the umask; an
    existing one others can read is named with the fix; a token the user configured is left alone."""
    from orchestration.ray_token import private_local_token

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    old = os.umask(0o022)
    try:
        path = private_local_token(tmp_path)
    finally:
        os.umask(old)
    assert path == tmp_path / ".ray" / "auth_token" and mode(path) == 0o600 and mode(path.parent) == 0o700
    assert re.fullmatch(r"[0-9a-f]{64}", path.read_text())
    token = path.read_text()
    path.chmod(0o644)
    assert private_local_token(tmp_path) == path and path.read_text() == token  # never replaced
    assert f"readable by other users (mode 644): chmod 600 {path}" in capsys.readouterr().out
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "mine"))
    assert private_local_token(tmp_path / "elsewhere") is None and not (tmp_path / "elsewhere").exists()
