"""The driver's MLflow client waits out an unreachable server (bounded), and passes every other error through."""

from __future__ import annotations

import os
import socket

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestration.errors import SweepError
from orchestration.tracking.retry import RetryingClient, unreachable


class Flaky:
    """A client whose calls fail `down` times as an unreachable server would, then answer."""

    def __init__(self, down: int, error: Exception):
        self.down, self.error, self.calls = down, error, 0

    def get_run(self, run_id):
        self.calls += 1
        if self.calls <= self.down:
            raise self.error
        return f"run {run_id}"


REFUSED = MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/get failed with exception "
                          "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded (Connection refused)")


def test_an_unreachable_server_is_waited_out_and_said():
    naps = []
    client = RetryingClient(Flaky(5, REFUSED), "http://127.0.0.1:1", limit_s=60, sleep=naps.append)
    assert client.get_run("r1") == "run r1"
    assert naps == [1.0, 2.0, 4.0, 5.0, 5.0]  # bounded exponential backoff: a server back is found within 5 s


def test_other_errors_are_not_retried():
    flaky = Flaky(1, MlflowException("RESOURCE_DOES_NOT_EXIST: run r1 not found"))
    with pytest.raises(MlflowException, match="not found"):
        RetryingClient(flaky, limit_s=60, sleep=lambda s: None).get_run("r1")
    assert flaky.calls == 1


def test_past_the_bound_the_sweep_stops_loudly():
    client = RetryingClient(Flaky(10**6, REFUSED), "http://127.0.0.1:1", limit_s=0.0, sleep=lambda s: None)
    with pytest.raises(SweepError, match="unreachable .* --resume"):
        client.get_run("r1")


def test_a_real_refused_connection_counts_as_unreachable():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = MlflowClient(f"http://127.0.0.1:{port}")
    old = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        with pytest.raises(Exception) as caught:
            client.get_run("0" * 32)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = old
    assert unreachable(caught.value), caught.value


# --- idempotent creates: a real tracking server behind a proxy that loses one answer per create ------------------
CREATES = {"/api/2.0/mlflow/experiments/create": "experiment", "/api/2.0/mlflow/runs/create": "run",
           "/api/2.0/mlflow/logged-models": "logged model", "/api/2.0/mlflow/registered-models/create":
           "registered model", "/api/2.0/mlflow/model-versions/create": "model version"}


class LosingProxy:
    """Forwards every request to `upstream`; the first POST to each create path is forwarded (the server commits
    it) and then answered 503, as a proxy whose upstream answered too late would."""

    def __init__(self, upstream: str):
        import http.client
        import threading
        import urllib.parse
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        target = urllib.parse.urlparse(upstream)
        proxy = self
        self.lost: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                upstream_conn.request(self.command, self.path, body=body, headers=headers)
                answer = upstream_conn.getresponse()
                status, data, kind = answer.status, answer.read(), answer.getheader("Content-Type", "application/json")
                upstream_conn.close()
                path = self.path.split("?")[0]
                if self.command == "POST" and path in CREATES and path not in proxy.lost and status == 200:
                    proxy.lost.append(path)
                    status, data, kind = 503, b"upstream timed out", "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 (a free port, SQLite store), stopped at the end."""
    from infra.mlflow_server import TrackingServer

    tmp = tmp_path_factory.mktemp("mlflow-server")
    server = TrackingServer(f"sqlite:///{tmp / 'mlflow.db'}", tmp / "artifacts", tmp / "server.log")
    try:
        yield server.start().uri
    finally:
        server.stop()


@pytest.mark.slow  # a tracking server of its own: about a minute to start on a loaded 2-core machine
@pytest.mark.parametrize("mlflow_retries", ["0", "2"])
def test_a_create_the_server_committed_is_not_applied_twice(tracking_server, mlflow_retries, monkeypatch):
    """Each create is committed by the server and its answer lost (503). With MLflow's own retries off (the sweep's
    setting) ours look for what the key made before creating again: nothing is ever created twice. With them on,
    MLflow re-sends the POST itself: the second one is deleted, the first kept."""
    from mlflow.entities import ViewType

    from orchestration.tracking.client import Tracker
    from orchestration.tracking.retry import CREATE_KEY_TAG

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", mlflow_retries)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    proxy = LosingProxy(tracking_server)
    try:
        client = RetryingClient(MlflowClient(proxy.uri, registry_uri=proxy.uri), proxy.uri, limit_s=60,
                                sleep=lambda s: None)
        experiment = client.create_experiment(f"idempotent-{mlflow_retries}")
        run = client.create_run(experiment, tags={"purpose": "test"})
        model = client.create_logged_model(experiment, name="model", source_run_id=run.info.run_id)
        name = f"condface-idempotent-{mlflow_retries}"
        client.create_registered_model(name)
        version = client.create_model_version(name, model.artifact_location, run_id=run.info.run_id,
                                              model_id=model.model_id)
    finally:
        proxy.close()
    assert sorted(CREATES[p] for p in proxy.lost) == sorted(CREATES.values()), "every create lost its answer once"

    server = MlflowClient(tracking_server, registry_uri=tracking_server)
    runs = server.search_runs([experiment])
    assert [r.info.run_id for r in runs] == [run.info.run_id] and runs[0].data.tags["purpose"] == "test"
    assert CREATE_KEY_TAG in runs[0].data.tags
    assert [m.model_id for m in server.search_logged_models([experiment])] == [model.model_id]
    assert [v.version for v in server.search_model_versions(f"name = '{name}'")] == [version.version] == ["1"]
    if mlflow_retries == "0":  # never created twice, not even as a deleted duplicate
        assert len(server.search_runs([experiment], run_view_type=ViewType.ALL)) == 1

    # a run key with duplicates from before creates were idempotent: find_run always names the oldest
    tracker = Tracker(tracking_server, f"idempotent-{mlflow_retries}")
    key = {"condface.key": "twice"}
    older = server.create_run(experiment, tags=key).info.run_id
    server.create_run(experiment, tags=key)
    assert {tracker.find_run("twice") for _ in range(3)} == {older}
