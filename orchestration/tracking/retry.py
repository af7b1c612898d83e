"""The driver's MLflow calls outlive a tracking server that is down for a while.

Every call of the Tracker's client (so every MLflow write of the sweep: the Tune callback's, the phases') goes
through `RetryingClient`: when the server cannot be reached (connection refused or reset, a timeout, 502/503/504
from a proxy or a server whose database restarts, 429), the call is retried with bounded exponential backoff
(1, 2, 4, ... 30 s) until it succeeds or the outage has lasted `CONDFACE_MLFLOW_OUTAGE_S` (default 900 s).

Nothing is lost meanwhile: the driver is the only MLflow writer and it waits inside the call, so Ray Tune keeps
the trials' reports (a trial's `tune.report` waits for the driver to take it, the trial stays where it is) and
they are written, in order, once the server answers again. Past the bound the sweep stops loudly (SweepError:
restart the server, then `--resume`): the trials' results stay in the Ray storage path and the resumed sweep
writes each epoch once (the Tracker skips steps a run already has).

MLflow's own HTTP retries (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, default 7: ~4 minutes of silent backoff per call)
are lowered by `python -m orchestration.sweep` to 2, so an outage is reported after seconds, here.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from data.catalogue import redact_uri
from data.cli import first_line
from orchestration.errors import SweepError

OUTAGE_ENV = "CONDFACE_MLFLOW_OUTAGE_S"
DEFAULT_OUTAGE_S = 900.0
_RETRY_STATUS = (429, 502, 503, 504)


def outage_limit() -> float:
    try:
        return float(os.environ.get(OUTAGE_ENV, DEFAULT_OUTAGE_S))
    except ValueError:
        return DEFAULT_OUTAGE_S


def unreachable(err: BaseException) -> bool:
    """True when `err` (or what caused it) says the server could not be reached, not that the request was wrong."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        module = type(e).__module__
        if module.startswith(("requests", "urllib3")) and type(e).__name__ in (
                "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "MaxRetryError", "NewConnectionError",
                "ProtocolError", "RetryError"):
            return True
        text = str(e)
        if type(e).__name__ == "MlflowException":
            if text.startswith("API request to") and ("failed with exception" in text or "timeout" in text):
                return True
            if getattr(e, "get_http_status_code", None) and e.get_http_status_code() in _RETRY_STATUS:
                return True
        e = e.__cause__ or e.__context__
    return False


class RetryingClient:
    """Wraps an MlflowClient: the same methods, each retried while the server is unreachable (see the module)."""

    def __init__(self, client: Any, uri: str = "", limit_s: float | None = None, sleep=time.sleep):
        self._client, self._uri = client, redact_uri(uri)  # for messages only
        self._limit = outage_limit() if limit_s is None else limit_s
        self._sleep = sleep

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            return self._call(name, attr, args, kwargs)

        return call

    def _call(self, name: str, fn, args, kwargs):
        started, delay = None, 1.0
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as err:
                if not unreachable(err):
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                    print(f"MLflow server {self._uri} unreachable ({_line(err)}): the sweep waits and retries "
                          f"{name} for up to {self._limit:.0f} s ({OUTAGE_ENV}); trials' reports wait in Ray Tune",
                          flush=True)
                waited = now - started
                if waited >= self._limit:
                    raise SweepError(f"the MLflow server {self._uri} was unreachable for {waited:.0f} s ({_line(err)})"
                                     f": start it again, then continue with --resume (the trials' results are in the "
                                     f"Ray storage path; each epoch is written once)") from None
                self._sleep(min(delay, self._limit - waited))
                delay = min(delay * 2, 30.0)
                continue
            if started is not None:
                print(f"MLflow server {self._uri} reachable again after {time.monotonic() - started:.0f} s: "
                      f"{name} done, the sweep goes on (nothing was lost)", flush=True)
            return result


def _line(err: BaseException) -> str:
    return first_line(err)[:200]


__all__ = ["RetryingClient", "unreachable", "OUTAGE_ENV"]
