"""The driver's MLflow client waits out an unreachable server (bounded), and passes every other error through."""

from __future__ import annotations

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
    client = RetryingClient(Flaky(3, REFUSED), "http://127.0.0.1:1", limit_s=60, sleep=naps.append)
    assert client.get_run("r1") == "run r1"
    assert naps == [1.0, 2.0, 4.0]  # bounded exponential backoff


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
    import os

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
