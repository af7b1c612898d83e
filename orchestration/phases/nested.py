"""A phase's nested MLflow run that ends FINISHED, or FAILED with the reason, whatever happens inside it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the phases' Ray tasks live beside their phase and import this module: they need no MLflow
    from orchestration.tracking.client import Tracker


@contextmanager
def nested_run(tracker: Tracker, key: str, name: str, parent: str, tags: dict[str, str],
               params: dict[str, Any] | None = None) -> Iterator[str]:
    """Open (or reopen) the run `key` under `parent` and yield its id; close it FINISHED when the block ends,
    FAILED with "<error type>: <message>" when it raises (also on Ctrl-C), and re-raise."""
    run_id = tracker.open_run(key, name, parent, tags=tags, params=params)
    try:
        yield run_id
    except BaseException as err:
        tracker.finish(run_id, ok=False, reason=f"{type(err).__name__}: {err}")
        raise
    tracker.finish(run_id, ok=True)
