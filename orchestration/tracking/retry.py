"""The driver's MLflow calls outlive a tracking server that is down for a while.

Every call of the Tracker's client (so every MLflow write of the sweep: the Tune callback's, the phases') goes
through `RetryingClient`: when the server cannot be reached (connection refused or reset, a timeout, 502/503/504
from a proxy or a server whose database restarts, 429), the call is retried with bounded exponential backoff
(1, 2, 4, then every 5 s: a server that is back is found within seconds) until it succeeds or the outage has lasted
`CONDFACE_MLFLOW_OUTAGE_S` (default 900 s).

Nothing is lost meanwhile: the driver is the only MLflow writer and it waits inside the call, so Ray Tune keeps
the trials' reports (a trial's `tune.report` waits for the driver to take it, the trial stays where it is) and
they are written, in order, once the server answers again. Past the bound the sweep stops loudly (SweepError:
restart the server, then `--resume`): the trials' results stay in the Ray storage path and the resumed sweep
writes each epoch once (the Tracker skips steps a run already has).

MLflow's own HTTP retries (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, default 7: ~4 minutes of silent backoff per call)
are turned off by `python -m orchestration.sweep` (0), so an outage is reported at once, here.

Creates are idempotent. A create the server committed but whose answer was lost (a timeout, a 503 from a proxy)
would be applied again by a retry -- MLflow's own HTTP layer re-sends POSTs too, and MLflow offers no idempotency
key. So a run, model version or logged model is created with a key of its own (the tag CREATE_KEY_TAG, a fresh
uuid per call); a retry first looks for what the key made, and after a create every extra one the key made (a
re-sent POST) is deleted, the oldest kept. Experiments and registered models are unique by name: a retried create
returns the one that exists.
"""

from __future__ import annotations

import functools
import inspect
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from data.catalogue import TAG_PREFIX, redact_uri
from data.cli import first_line
from orchestration.errors import SweepError

OUTAGE_ENV = "CONDFACE_MLFLOW_OUTAGE_S"
DEFAULT_OUTAGE_S = 900.0
MAX_RETRY_DELAY_S = 5.0
_RETRY_STATUS = (429, 502, 503, 504)
CREATE_KEY_TAG = f"{TAG_PREFIX}create_key"
KEYED_CREATES = ("create_run", "create_model_version", "create_logged_model")  # found by their key tag
NAMED_CREATES = ("create_experiment", "create_registered_model")  # unique by name


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
            if name in KEYED_CREATES or name in NAMED_CREATES:
                return self._call(name, self._once(name, attr, args, kwargs))
            return self._call(name, lambda: attr(*args, **kwargs))

        return call

    def _once(self, name: str, fn, args, kwargs) -> Callable[[], Any]:
        """One attempt of the create `name`, such that repeating it never creates twice (see the module)."""
        key = uuid.uuid4().hex
        bound = inspect.signature(fn).bind(*args, **kwargs)
        if name in KEYED_CREATES:
            bound.arguments["tags"] = {**(bound.arguments.get("tags") or {}), CREATE_KEY_TAG: key}
        tried = False

        def attempt():
            nonlocal tried
            made = made_by(self._client, name, bound.arguments, key) if tried else []
            if not made:
                tried = True
                try:
                    result = fn(*bound.args, **bound.kwargs)
                except Exception as err:
                    exists = name in NAMED_CREATES and getattr(err, "error_code", "") == "RESOURCE_ALREADY_EXISTS"
                    made = made_by(self._client, name, bound.arguments, key) if exists else []
                    if not made:
                        raise
                    return made[0]
                made = made_by(self._client, name, bound.arguments, key) if name in KEYED_CREATES else []
                if not made:
                    return result
            for extra in made[1:]:
                drop(self._client, name, extra)
            return made[0]

        return attempt

    def _call(self, name: str, attempt: Callable[[], Any]):
        started, delay = None, 1.0
        while True:
            try:
                result = attempt()
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
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
                continue
            if started is not None:
                print(f"MLflow server {self._uri} reachable again after {time.monotonic() - started:.0f} s: "
                      f"{name} done, the sweep goes on (nothing was lost)", flush=True)
            return result


def made_by(client: Any, name: str, args: dict[str, Any], key: str) -> list:
    """What the create `name` with these arguments made so far, oldest first: the runs, model versions or logged
    models tagged with `key`; the experiment id or registered model of that name. [] when nothing."""
    from mlflow.exceptions import MlflowException

    tagged = f"tags.`{CREATE_KEY_TAG}` = '{key}'"
    if name == "create_run":
        runs = client.search_runs([args["experiment_id"]], filter_string=tagged, max_results=100)
        return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
    if name == "create_model_version":
        versions = client.search_model_versions(f"name = '{args['name']}' and {tagged}")
        return sorted(versions, key=lambda v: int(v.version))
    if name == "create_logged_model":
        models = client.search_logged_models([args["experiment_id"]], filter_string=tagged, max_results=100)
        return sorted(models, key=lambda m: (m.creation_timestamp or 0, m.model_id))
    if name == "create_experiment":
        experiment = client.get_experiment_by_name(args["name"])
        return [experiment.experiment_id] if experiment is not None else []
    try:
        return [client.get_registered_model(args["name"])]
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise


def drop(client: Any, name: str, extra: Any) -> None:
    """Delete what a re-sent create made a second time."""
    if name == "create_run":
        client.delete_run(extra.info.run_id)
    elif name == "create_model_version":
        client.delete_model_version(extra.name, extra.version)
    elif name == "create_logged_model":
        client.delete_logged_model(extra.model_id)


def _line(err: BaseException) -> str:
    return first_line(err)[:200]


__all__ = ["RetryingClient", "unreachable", "OUTAGE_ENV", "CREATE_KEY_TAG"]
