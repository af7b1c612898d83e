"""The Tracker: MlflowClient for one experiment, with explicit run ids and no global MLflow state."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from data.catalogue import NOTE_TAG, PARENT_TAG, RUN_NAME_TAG, TAG_PREFIX, finite
from orchestration.faults import count_writes
from orchestration.tracking.checks import artifact_root
from orchestration.tracking.describe import dataset_input, param_str, run_description
from orchestration.tracking.retry import RetryingClient

# MLflow 3's UI opens an experiment of this kind in its model-training view (runs, metrics, models; not GenAI).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
ESTIMATOR_LOGGED_TAG = f"{TAG_PREFIX}estimator_logged"  # written last: the estimator's record is complete


class Tracker:
    """Thin layer over MlflowClient for one experiment. Used only in the driver process."""

    def __init__(self, uri: str, experiment: str):
        self.uri = uri
        # every call retried while the server is unreachable, for a bounded time (orchestration.tracking.retry)
        # (and counted where a crash-point test asks for it: orchestration.faults)
        self.client = count_writes(RetryingClient(MlflowClient(tracking_uri=uri, registry_uri=uri), uri))
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_root(uri),
                                                               tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        self.experiment = experiment
        self._logged_steps: dict[tuple[str, str], set[int]] = {}
        self._images: dict[str, set[str]] = {}  # run id -> the image series files it has (images/<key>+step+<n>+)

    # --- runs ---------------------------------------------------------------------------------
    def find_run(self, key: str) -> str | None:
        """The run tagged with this key in this experiment (any status), or None; the oldest if there are several
        (a record written before creates were idempotent), so every caller picks the same one."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TAG_PREFIX}key` = '{key}'",
                                       max_results=100)
        return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)).info.run_id if runs else None

    def open_run(self, key: str, name: str, parent: str | None = None, tags: dict[str, str] | None = None,
                 params: dict[str, Any] | None = None) -> str:
        """Create the run identified by `key`, or reopen it (status RUNNING again) if it exists. A new run gets a
        description in words (`run_description`, unless `tags` bring one) and its parent's dataset inputs."""
        run_id = self.find_run(key)
        if run_id is None:
            all_tags = {RUN_NAME_TAG: name, f"{TAG_PREFIX}key": key, **(tags or {})}
            if parent:
                all_tags[PARENT_TAG] = parent
            all_tags.setdefault(NOTE_TAG, run_description(name, all_tags, params or {}))
            run_id = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name).info.run_id
            if params:
                self.log_params(run_id, params)
            if parent:
                self._inherit_inputs(run_id, parent)
        else:  # also what a driver killed while it created the run left unwritten
            self.client.update_run(run_id, status="RUNNING")
            if tags:
                self.set_tags(run_id, tags)
            if params:
                self.log_params(run_id, params, only_new=True)
            if parent:
                self._inherit_inputs(run_id, parent)
        return run_id

    def _inherit_inputs(self, run_id: str, parent: str) -> None:
        inputs = self.client.get_run(parent).inputs
        have = self.client.get_run(run_id).inputs
        have_ids = {(d.dataset.name, d.dataset.digest) for d in (have.dataset_inputs if have else [])}
        missing = [d for d in (inputs.dataset_inputs if inputs else []) if (d.dataset.name, d.dataset.digest)
                   not in have_ids]
        if missing:
            self.client.log_inputs(run_id, datasets=missing)

    def finish(self, run_id: str, ok: bool = True, reason: str | None = None) -> None:
        if reason:
            self.client.set_tag(run_id, f"{TAG_PREFIX}end_reason", reason[:4000])
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def children(self, parent: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
                                       max_results=1000)

    # --- data ---------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: dict[str, Any], only_new: bool = False) -> None:
        items = {k: param_str(v) for k, v in params.items()}
        if only_new:
            have = self.client.get_run(run_id).data.params
            items = {k: v for k, v in items.items() if k not in have}
        batch = [Param(k, v) for k, v in items.items()]
        for i in range(0, len(batch), 100):
            self.client.log_batch(run_id, params=batch[i:i + 100])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:4000]) for k, v in tags.items()])

    def logged_steps(self, run_id: str, key: str = "epoch") -> set[int]:
        if (run_id, key) not in self._logged_steps:
            self._logged_steps[(run_id, key)] = {m.step for m in self.client.get_metric_history(run_id, key)}
        return self._logged_steps[(run_id, key)]

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None,
                    step_metric: str | None = "epoch") -> bool:
        """Log finite numbers at `step`. With a `step_metric` (default "epoch", also logged as a metric), a
        step already logged is skipped: a trial resumed from an older checkpoint never logs an epoch twice."""
        dedupe = step is not None and step_metric is not None
        if dedupe:
            steps = self.logged_steps(run_id, step_metric)
            if step in steps:
                return False
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if finite(v)]
        if dedupe:
            batch.append(Metric(step_metric, float(step), ts, step))
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i:i + 500])
        if dedupe:
            steps.add(step)
        return True

    def log_once(self, run_id: str, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics without a step (a row of values), each key once per run: keys the run has keep their value (a
        resumed sweep's rerun, or a partial write finished). Returns the run's values of these keys."""
        have = self.client.get_run(run_id).data.metrics
        new = {k: float(v) for k, v in metrics.items() if k not in have and finite(v)}
        if new:
            ts = int(time.time() * 1000)
            batch = [Metric(k, v, ts, 0) for k, v in new.items()]
            for i in range(0, len(batch), 500):
                self.client.log_batch(run_id, metrics=batch[i:i + 500])
        return {k: have.get(k, new.get(k)) for k in metrics if k in have or k in new}

    def log_series(self, run_id: str, key: str, points: Iterable) -> int:
        """Log (step, value) points of one metric, each step once: steps the run already has are skipped (a
        trial resumed from an older checkpoint reports them again). Returns how many were logged."""
        have = self.logged_steps(run_id, key)
        ts = int(time.time() * 1000)
        new = {int(s): float(v) for s, v in points if int(s) not in have and finite(v)}
        batch = [Metric(key, v, ts, s) for s, v in sorted(new.items())]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i:i + 500])
        have.update(new)
        return len(batch)

    def log_unavailable(self, run_id: str, unavailable: dict[str, str]) -> None:
        """A metric that could not be computed is a tag with its reason, never a number."""
        if unavailable:
            self.set_tags(run_id, {f"{TAG_PREFIX}unavailable.{k}": v for k, v in unavailable.items()})

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_json(self, run_id: str, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, obj, artifact_file)

    def log_image(self, run_id: str, path: str | Path, key: str, step: int) -> bool:
        """An image of a series (key, step): the run page shows it over the steps (here: epochs). Once: MLflow
        names each file with a new uuid, so a step the run has (an epoch that a trial restored from an older
        checkpoint reports again) is skipped. Returns whether it was logged."""
        from PIL import Image

        if run_id not in self._images:
            self._images[run_id] = {f.path.rsplit("/", 1)[-1] for f in self.client.list_artifacts(run_id, "images")}
        prefix = f"{key.replace('/', '~')}+step+{step}+"
        if any(f.startswith(prefix) and f.endswith(".png") for f in self._images[run_id]):
            return False
        with Image.open(path) as image:
            self.client.log_image(run_id, image.convert("RGB"), key=key, step=step)
        self._images[run_id].add(f"{prefix}.png")
        return True

    def log_dataset(self, run_id: str, data_root: str | Path, context: str = "training") -> None:
        """The image cache as the run's dataset input (the UI's Dataset column); once per run. Runs that
        `open_run` creates under this run get the same input."""
        entity = dataset_input(data_root, context)
        inputs = self.client.get_run(run_id).inputs
        have = {(d.dataset.name, d.dataset.digest) for d in (inputs.dataset_inputs if inputs else [])}
        if (entity.dataset.name, entity.dataset.digest) not in have:
            self.client.log_inputs(run_id, datasets=[entity])

    def log_estimator(self, run_id: str, estimator_dir: str | Path) -> None:
        """The attribute estimator that judges every run: its config (with the training speed options it resolved
        to) as `estimator.*` params, its held-out accuracy as metrics, its weights, report and confusion matrices
        under `estimator/`; once per run. Each part is written only where missing, and the tag that says it is
        complete last: a resumed sweep finishes an interrupted upload and logs nothing twice."""
        estimator_dir = Path(estimator_dir)
        if self.client.get_run(run_id).data.tags.get(ESTIMATOR_LOGGED_TAG) == "true":
            return
        meta = json.loads((estimator_dir / "config.json").read_text())
        report_path = estimator_dir / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        params = {f"estimator.{k}": v for k, v in meta.get("config", {}).items()}
        params.update({f"estimator.trained_{k}": v for k, v in report.get("speed_options", {}).items()})
        self.log_params(run_id, params, only_new=True)
        val = report.get("val", {})
        self.log_once(run_id, {"estimator_val_acc": val.get("est_acc"),
                               "estimator_val_acc_balanced": val.get("est_acc_balanced"),
                               "estimator_train_seconds": report.get("train_seconds")})
        have = {f.path: f.file_size for f in self.client.list_artifacts(run_id, "estimator")}
        for path in sorted(estimator_dir.iterdir()):
            if path.is_file() and path.suffix in (".json", ".png", ".safetensors") and \
                    have.get(f"estimator/{path.name}") != path.stat().st_size:
                self.log_artifact(run_id, path, "estimator")
        self.set_tags(run_id, {ESTIMATOR_LOGGED_TAG: "true"})

    def log_model(self, run_id: str, name: str, save, tags: dict[str, str] | None = None) -> tuple[str, str]:
        """An MLflow model (MLflow 3's LoggedModel) of the run: `save(local_dir, mlflow_model)` writes it (e.g.
        `mlflow.pyfunc.save_model`), its files are uploaded, it is linked to the run as an output, then marked
        READY. Once per run and `name`, wherever a killed driver stopped: a READY model is reused (and linked if
        it was not), a PENDING one (an interrupted upload) is uploaded again and finished, never created twice.
        Returns (model_id, the artifact location to register)."""
        import tempfile

        from mlflow.models import Model

        found = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'").to_list()
        ready = [m for m in found if str(m.status).endswith("READY")]
        if ready:
            self._link_model(run_id, ready[0].model_id)
            return ready[0].model_id, ready[0].artifact_location
        pending = [m for m in found if str(m.status).endswith("PENDING")]
        model = pending[0] if pending else self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=run_id, tags=tags)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "model"
                save(local, Model(artifact_path=model.artifact_location, run_id=run_id, model_uuid=model.model_id,
                                  model_id=model.model_id))
                self.client.log_model_artifacts(model.model_id, str(local))
        except Exception:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self._link_model(run_id, model.model_id)
        self.client.finalize_logged_model(model.model_id, "READY")
        return model.model_id, model.artifact_location

    def _link_model(self, run_id: str, model_id: str) -> None:
        """The model as an output of the run (the run page's Logged models), once."""
        from mlflow.entities import LoggedModelOutput

        outputs = self.client.get_run(run_id).outputs
        if not any(o.model_id == model_id for o in (outputs.model_outputs if outputs else [])):
            self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
