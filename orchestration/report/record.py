"""The MLflow READER: one sweep's record (the parent run, its children, metric histories, logged PNGs).

It only reads -- no model is loaded, nothing is recomputed, and a missing store is never created. MLflow is
imported when a record is loaded, so the command's checks of its input answer before MLflow is loaded.
"""

from __future__ import annotations

import os
import socket
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from data.catalogue import PARENT_TAG, TAG_PREFIX, redact_uri
from data.cli import first_line
from orchestration.errors import SweepError

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # artifacts are read one small PNG at a time


def check_source(uri: str, timeout_s: float = 5.0) -> None:
    """Raise SweepError when the store is not there (SQLite/file) or cannot be reached (http): read-only checks."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise SweepError(f"no MLflow store at {uri} ({path} does not exist): pass the sweep's --tracking-uri")
    elif parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
        except OSError as err:
            raise SweepError(f"cannot reach the MLflow server at {redact_uri(uri)} ({err.strerror or err}): start it or pass "
                             "the sweep's --tracking-uri") from None
    elif parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else uri)
        if not path.is_dir():
            raise SweepError(f"no MLflow store at {uri} ({path} is not a directory): pass the sweep's --tracking-uri")


class Record:
    """One sweep's MLflow record: the parent run, its children, metric histories and artifacts (read-only)."""

    def __init__(self, client, uri: str, experiment, parent):
        self.client, self.uri, self.experiment, self.parent = client, uri, experiment, parent
        self.children = self._search(f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
        self._history: dict[tuple[str, str], list] = {}
        self._artifacts: dict[tuple[str, str], bytes | None] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="condface-report-")

    @classmethod
    def load(cls, uri: str, experiment: str, run_id: str | None = None, client=None) -> Record:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = client or MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            exp = client.get_experiment_by_name(experiment)
        except MlflowException as err:
            raise SweepError(f"cannot read the MLflow store at {uri}: {first_line(err)}") from None
        if exp is None:
            names = sorted(e.name for e in client.search_experiments(max_results=11) if e.name != "Default")
            listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise SweepError(f"no experiment {experiment!r} in the MLflow store at {uri}"
                             + (f": it has {listed}" if names else ": it has no experiment yet"))
        if run_id:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                raise SweepError(f"no run {run_id!r} in the MLflow store at {uri}: pass a sweep's parent run id "
                                 f"(tag {TAG_PREFIX}phase = sweep) or leave out --run for the latest") from None
            if run.info.experiment_id != exp.experiment_id:
                raise SweepError(f"run {run_id} belongs to another experiment than {experiment!r}")
            phase = run.data.tags.get(f"{TAG_PREFIX}phase")
            if phase != "sweep":
                up = run.data.tags.get(PARENT_TAG)
                raise SweepError(f"run {run_id} is a {phase or 'non-condface'} run, not a sweep's parent run"
                                 + (f": pass its parent, --run {up}" if up else ""))
        else:
            runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_PREFIX}phase` = 'sweep'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
            if not runs:
                raise SweepError(f"experiment {experiment!r} has no sweep run (tag {TAG_PREFIX}phase = sweep) yet")
            run = runs[0]
        return cls(client, uri, exp, run)

    def _search(self, filter_string: str) -> list:
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment.experiment_id], filter_string=filter_string,
                                           max_results=1000, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    # --- what the sweep was -------------------------------------------------------------------
    @property
    def params(self) -> dict[str, str]:
        return self.parent.data.params

    @property
    def tags(self) -> dict[str, str]:
        return self.parent.data.tags

    @property
    def families(self) -> list[str]:
        spec = self.params.get("model") or self.tags.get(f"{TAG_PREFIX}family", "")
        return [f.strip() for f in spec.split(",") if f.strip()]

    def expects(self, phase: str) -> bool:
        if phase in ("final", "cfg"):
            return self.params.get("final_epochs", "1") not in ("0", "")
        if phase == "samplers":
            return self.params.get("sampler_phase") == "True"
        return True

    def runs(self, phase: str, family: str | None = None) -> list:
        out = [r for r in self.children if r.data.tags.get(f"{TAG_PREFIX}phase") == phase
               and (family is None or r.data.tags.get(f"{TAG_PREFIX}family") == family)]
        return sorted(out, key=lambda r: (r.info.run_name or "", r.info.start_time or 0))

    def one(self, phase: str, family: str):
        """The family's latest run of `phase`; of its final runs (one per seed), the sweep's seed's: the registered
        model, which the CFG and sampler phases sampled."""
        runs = self.runs(phase, family)
        if phase == "final":
            runs = [r for r in runs if r.data.params.get("train.seed") == self.params.get("seed")] or runs
        return max(runs, key=lambda r: r.info.start_time or 0) if runs else None

    def reference(self, family: str) -> tuple[Any, str]:
        """The reference run of `family` ("real" for the real-image rows) this sweep used, and a note on where it
        came from (a reference run is reused across sweeps of an experiment when everything it depends on is equal)."""
        run = self.one("reference", family)
        if run is not None:
            return run, ""
        tagged = self.tags.get(f"{TAG_PREFIX}reference_run.{family}")
        if tagged:
            try:
                return self.client.get_run(tagged), f"computed by an earlier sweep of this experiment (run {tagged})"
            except Exception:  # deleted since
                pass
        runs = self._search(f"tags.`{TAG_PREFIX}phase` = 'reference' and tags.`{TAG_PREFIX}family` = '{family}' "
                            "and attributes.status = 'FINISHED'")
        if runs:
            run = max(runs, key=lambda r: r.info.start_time or 0)
            return run, f"not recorded by this sweep: the experiment's latest {family} reference run ({run.info.run_id})"
        return None, ""

    # --- data ---------------------------------------------------------------------------------
    def history(self, run, key: str) -> list:
        run_id = run.info.run_id
        if (run_id, key) not in self._history:
            if key in run.data.metrics:
                self._history[(run_id, key)] = sorted(self.client.get_metric_history(run_id, key),
                                                      key=lambda m: (m.step, m.timestamp))
            else:
                self._history[(run_id, key)] = []
        return self._history[(run_id, key)]

    def series(self, run, key: str) -> dict[int, float]:
        return {m.step: m.value for m in self.history(run, key)}

    def artifact(self, run, path: str) -> bytes | None:
        run_id = run.info.run_id
        if (run_id, path) not in self._artifacts:
            folder, _, _ = path.rpartition("/")
            data = None
            try:
                if any(f.path == path for f in self.client.list_artifacts(run_id, folder or None)):
                    local = self.client.download_artifacts(run_id, path, tempfile.mkdtemp(dir=self._tmp.name))
                    data = Path(local).read_bytes()
            except Exception:  # an artifact store that cannot be read: shown as missing
                data = None
            self._artifacts[(run_id, path)] = data
        return self._artifacts[(run_id, path)]

    def artifact_dirs(self, run, folder: str) -> list[str]:
        try:
            return sorted(f.path for f in self.client.list_artifacts(run.info.run_id, folder) if f.is_dir)
        except Exception:
            return []

    @staticmethod
    def unavailable(run) -> dict[str, str]:
        prefix = f"{TAG_PREFIX}unavailable."
        return {k[len(prefix):]: v for k, v in run.data.tags.items() if k.startswith(prefix)} if run else {}



    # --- a phase's rows, in the shape the phases keep them (`Scored.record()`) -------------------
    def scale_rows(self, run) -> list[dict[str, Any]]:
        """A CFG sweep's rows: one per guidance scale (the MLflow step is the scale's index)."""
        scales = self.series(run, "guidance_scale")
        series = {k: self.series(run, k) for k in run.data.metrics if k not in ("guidance_scale", "scale_index")}
        return [{"guidance_scale": scales[step], "step": step, **_values_at(series, step)} for step in sorted(scales)]

    def sampler_rows(self, run) -> list[dict[str, Any]]:
        """A sampler phase's rows: one per (sampler, steps) setting, its name from samplers/samplers.json."""
        import json

        listed = self.artifact(run, "samplers/samplers.json")
        names = json.loads(listed) if listed else []
        series = {k: self.series(run, k) for k in run.data.metrics if k != "setting_index"}
        nfe, seconds = series.pop("nfe", {}), series.pop("seconds", {})
        return [{"sampler": names[i]["sampler"] if i < len(names) else f"setting {i}", "steps": int(nfe[i]),
                 "seconds": seconds.get(i), **_values_at(series, i)} for i in sorted(nfe)]


def _values_at(series: dict[str, dict[int, float]], step: int) -> dict[str, dict[str, float]]:
    """The metrics (values) and sample counts (counts) logged at `step`."""
    at = {k: s[step] for k, s in series.items() if step in s}
    return {"values": {k: v for k, v in at.items() if not k.endswith(("_n", "_n_real"))},
            "counts": {k: v for k, v in at.items() if k.endswith("_n")}}


def run_label(run) -> str:
    """A run's name without its phase prefix ("grid:ga1-T1000-..." -> "ga1-T1000-...")."""
    name = run.info.run_name or run.info.run_id
    return name.split(":", 1)[1] if ":" in name else name


__all__ = ["check_source", "Record", "run_label"]
