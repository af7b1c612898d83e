"""MLflow tracking with ONE writer: the driver.

Trials never touch MLflow. They report to Ray Tune; `MlflowTrialCallback` runs inside the Tune driver
and writes what they report (params, per-epoch metrics, the sample-grid PNG and checkpoints of each
epoch). So concurrent trials never write the embedded SQLite store concurrently, and a remote
cluster's workers need no access to the tracking server.

Layout of one sweep in MLflow: one experiment per sweep name; a parent run for the sweep; nested
runs per trial (phase "grid"), for the final run (phase "final"), for the CFG sweep (phase "cfg");
reference rows (untrained model, ground truth) once per experiment (phase "reference"). Every run
ends FINISHED or FAILED: the driver closes what it opened in `finally` blocks; a run that a killed
driver left RUNNING is reattached and closed by `--resume`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from orchestration.errors import SweepError
from orchestration.mlflow_retry import RetryingClient
from orchestration.trainable import STEP_LOSSES

STEP_LOSS_METRIC = "train_loss_step"  # training loss per optimizer step (step = global optimizer step)

TAG_PREFIX = "condface."
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI
# MLflow 3's UI opens an experiment of this kind in its model-training view (runs, metrics, models; not GenAI).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
CHAMPION_ALIAS = "champion"  # the registry alias of each family's newest final model
# Keys Tune adds to every result; everything else numeric that a trial reports is logged as a metric.
_TUNE_KEYS = set(AUTO_RESULT_KEYS) | {
    "done", "trial_id", "experiment_tag", "should_checkpoint", "episodes_this_iter", "timesteps_this_iter",
    "epoch",
}


# --------------------------------------------------------------------------------------------------
# Store location and reachability
# --------------------------------------------------------------------------------------------------
def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """The embedded store: an SQLite file in the working directory."""
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlruns.db'}"


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside an SQLite file; a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Raise SweepError when the store cannot be written (SQLite/file) or reached (http)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):])
        check_writable_dir(path.parent, what=f"MLflow store {uri}", fix="pass a writable --tracking-uri")
    elif parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
        except OSError as err:
            raise SweepError(f"cannot reach the MLflow server at {uri} ({err.strerror or err}): start it "
                             f"(`mlflow server ...`) or drop --tracking-uri to use the embedded store") from None
    elif parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else uri)
        check_writable_dir(path, what=f"MLflow store {uri}", fix="pass a writable --tracking-uri")
    # other schemes (databricks, ...) are checked by MLflow itself on first use


def check_writable_dir(path: Path, what: str, fix: str) -> None:
    """Create `path` if needed and prove it writable, or raise SweepError("<what> is not writable (...): <fix>")."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SweepError(f"{what} is not writable ({err.strerror or err}): {fix}") from None


def mlflow_ui_command(uri: str) -> str:
    cmd = f"mlflow ui --backend-store-uri {uri}"
    if uri.startswith("sqlite:///"):
        cmd += f" --default-artifact-root {artifact_root(uri)}"
    return cmd


# --------------------------------------------------------------------------------------------------
# The tracker: explicit run ids, no global MLflow state
# --------------------------------------------------------------------------------------------------
class Tracker:
    """Thin layer over MlflowClient for one experiment. Used only in the driver process."""

    def __init__(self, uri: str, experiment: str):
        self.uri = uri
        # every call retried while the server is unreachable, for a bounded time (orchestration.mlflow_retry)
        self.client = RetryingClient(MlflowClient(tracking_uri=uri, registry_uri=uri), uri)
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

    # --- runs ---------------------------------------------------------------------------------
    def find_run(self, key: str) -> str | None:
        """The run tagged with this key in this experiment (any status), or None."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{TAG_PREFIX}key` = '{key}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

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
                inputs = self.client.get_run(parent).inputs
                if inputs and inputs.dataset_inputs:
                    self.client.log_inputs(run_id, datasets=list(inputs.dataset_inputs))
        else:
            self.client.update_run(run_id, status="RUNNING")
            if tags:
                self.set_tags(run_id, tags)
            if params:
                self.log_params(run_id, params, only_new=True)
        return run_id

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
        items = {k: _param_str(v) for k, v in params.items()}
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
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if _is_number(v)]
        if dedupe:
            batch.append(Metric(step_metric, float(step), ts, step))
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i:i + 500])
        if dedupe:
            steps.add(step)
        return True

    def log_series(self, run_id: str, key: str, points: Iterable) -> int:
        """Log (step, value) points of one metric, each step once: steps the run already has are skipped (a
        trial resumed from an older checkpoint reports them again). Returns how many were logged."""
        have = self.logged_steps(run_id, key)
        ts = int(time.time() * 1000)
        new = {int(s): float(v) for s, v in points if int(s) not in have and _is_number(v)}
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

    def log_image(self, run_id: str, path: str | Path, key: str, step: int) -> None:
        """An image of a series (key, step): the run page shows it over the steps (here: epochs)."""
        from PIL import Image

        with Image.open(path) as image:
            self.client.log_image(run_id, image.convert("RGB"), key=key, step=step)

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
        under `estimator/`; once per run (a resumed sweep finds the params and logs nothing again)."""
        estimator_dir = Path(estimator_dir)
        if "estimator.preset" in self.client.get_run(run_id).data.params:
            return
        meta = json.loads((estimator_dir / "config.json").read_text())
        report_path = estimator_dir / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        params = {f"estimator.{k}": v for k, v in meta.get("config", {}).items()}
        params.update({f"estimator.trained_{k}": v for k, v in report.get("speed_options", {}).items()})
        self.log_params(run_id, params)
        val = report.get("val", {})
        self.log_metrics(run_id, {"estimator_val_acc": val.get("est_acc"),
                                  "estimator_val_acc_balanced": val.get("est_acc_balanced"),
                                  "estimator_train_seconds": report.get("train_seconds")}, step_metric=None)
        for path in sorted(estimator_dir.iterdir()):
            if path.is_file() and path.suffix in (".json", ".png", ".safetensors"):
                self.log_artifact(run_id, path, "estimator")

    def log_model(self, run_id: str, name: str, save, tags: dict[str, str] | None = None) -> tuple[str, str]:
        """An MLflow model (MLflow 3's LoggedModel) of the run: `save(local_dir, mlflow_model)` writes it (e.g.
        `mlflow.pyfunc.save_model`), then its files are uploaded and the model is marked READY. A READY model
        `name` the run already has is reused (a resumed sweep logs nothing twice). Returns (model_id, the
        artifact location to register)."""
        import tempfile

        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        found = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'").to_list()
        ready = [m for m in found if str(m.status).endswith("READY")]
        if ready:
            return ready[0].model_id, ready[0].artifact_location
        model = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=run_id, tags=tags)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "model"
                save(local, Model(artifact_path=model.artifact_location, run_id=run_id, model_uuid=model.model_id,
                                  model_id=model.model_id))
                self.client.log_model_artifacts(model.model_id, str(local))
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        return model.model_id, model.artifact_location


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _param_str(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        v = ",".join(str(x) for x in v)
    return ("none" if v is None else str(v))[:6000]


def dataset_input(data_root: str | Path, context: str = "training"):
    """An image cache as an MLflow dataset input: named by its folder, digest = md5 of its manifest (what it
    holds and how it was made), source = its path, schema = what a data item is."""
    import hashlib

    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, DataType, Schema

    from data.schema import ATTRIBUTES

    root = Path(data_root).resolve()
    digest = hashlib.md5((root / "manifest.json").read_bytes()).hexdigest()[:8]
    schema = Schema([ColSpec(DataType.binary, "image"), *(ColSpec(DataType.long, a) for a in ATTRIBUTES),
                     ColSpec(DataType.string, "caption")])
    dataset = MetaDataset(LocalArtifactDatasetSource(str(root)), name=root.name, digest=digest, schema=schema)
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])


def run_description(name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """What a run is, in words (its `mlflow.note.content`), from its phase tag, name and params."""
    phase, family = tags.get(f"{TAG_PREFIX}phase"), tags.get(f"{TAG_PREFIX}family", "")
    p = {k: _param_str(v) for k, v in params.items()}

    def axes() -> str:
        snr = p.get("trial.min_snr_gamma", "none")
        parts = [f"gradient accumulation {p.get('trial.grad_accum')}", f"T = {p.get('trial.timesteps')}",
                 f"Min-SNR {'off' if snr in ('none', '0', '0.0') else 'gamma ' + snr}"]
        if p.get("trial.channels") not in (None, "none"):
            parts.append(f"channels {p['trial.channels']} ({p.get('trial.channels_list', '?')})")
        if p.get("trial.lora_rank") not in (None, "none"):
            parts.append(f"LoRA rank {p['trial.lora_rank']}")
        parts.append(f"augmentation {p.get('trial.augment', p.get('augment', '?'))}")
        parts.append(f"lr {p.get('trial.lr', '?')}, guidance {p.get('trial.guidance_scale', '?')}")
        return ", ".join(parts)

    if phase == "sweep":
        return (f"The sweep {name} ({family}, preset {tags.get(f'{TAG_PREFIX}preset', '?')}): its nested runs are "
                "the reference rows, the grid trials, the final run(s) and the CFG sweep(s); the study's summary "
                "metrics are logged here.")
    if phase == "grid":
        return (f"Grid trial of the {family} study ({name}): {axes()}. Trained {p.get('train.epochs', '?')} "
                f"epoch(s); every epoch it samples a fixed, seeded set of validation conditions, scores them "
                f"(ranked by {p.get('select_metric', '?')}) and draws the attribute grid (the image series).")
    if phase == "final":
        return (f"Final run of {family} ({name}): the grid's best configuration -- {axes()} -- retrained for "
                f"{p.get('train.epochs', '?')} epoch(s), scored on the final sample set (final_* metrics) and "
                f"registered in the Model Registry with the alias '{CHAMPION_ALIAS}' (the logged model below).")
    if phase == "reference":
        return (f"Reference rows ({name.split(': ', 1)[-1]}): scored by the same evaluation code as the models, "
                "for the study's Table 3.1; metrics are named <row>.<metric>.")
    if phase == "cfg":
        return (f"CFG sweep of the final {family} model: guidance scales {p.get('cfg_scales', '?')}, "
                f"{p.get('cfg_samples', '?')} samples each; one step per scale, image quality vs estimator "
                "accuracy in cfg/cfg_pareto.png.")
    if phase == "samplers":
        return (f"Sampler sweep of the final {family} model: every sampler x step count, image quality and "
                "accuracy against the number of U-Net passes.")
    return name


def dir_mb(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


# --------------------------------------------------------------------------------------------------
# The Tune callback: the single MLflow writer for trials
# --------------------------------------------------------------------------------------------------
class MlflowTrialCallback(Callback):
    """Mirror every Tune trial into a nested MLflow run, from the driver.

    phase: "grid" or "final". trial_params(config_dict) -> (run name, params) gives each trial's whole
    resolved configuration. Checkpoint artifacts follow `policy` ("none" | "best" | "all") within
    `limit_mb`. Picklable (Tune stores callbacks with the experiment state for `Tuner.restore`).
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str, phase: str, tags: dict[str, str],
                 trial_params, select_metric: str, select_mode: str, policy: str = "best",
                 limit_mb: float = 2048.0, total: int | None = None):
        self.uri, self.experiment, self.parent = uri, experiment, parent_run_id
        self.phase, self.tags, self.trial_params = phase, dict(tags), trial_params
        self.metric, self.mode = select_metric, select_mode
        self.policy, self.limit_mb = policy, limit_mb
        self.runs: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self.best: dict[str, tuple[float, str, int]] = {}  # trial id -> (value, checkpoint path, epoch)
        self.logged_mb = 0.0
        self.labels: dict[str, str] = {}
        self.total = total
        self.finished = 0
        self.diverged: dict[str, str] = {}  # trial id -> reason (the trial reported a NaN/inf loss)
        self._tracker: Tracker | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tracker"] = None
        return state

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.experiment)
        return self._tracker

    def get_state(self) -> dict:
        return {"runs": self.runs, "best": self.best, "logged_mb": self.logged_mb, "finished": self.finished,
                "diverged": self.diverged}

    def set_state(self, state: dict) -> None:
        self.runs, self.best, self.logged_mb = state["runs"], state["best"], state["logged_mb"]
        self.finished = state.get("finished", 0)  # a resumed sweep keeps counting where it stopped
        self.diverged = state.get("diverged", {})

    def _run(self, trial) -> str:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or trial.trial_id not in self.labels:  # new, or restored by Tuner.restore
            name, params = self.trial_params(trial.config)
            self.labels[trial.trial_id] = name
        if run_id is None:
            tags = {**self.tags, f"{TAG_PREFIX}phase": self.phase, f"{TAG_PREFIX}trial_id": trial.trial_id}
            run_id = self.tracker.open_run(f"{self.parent}/{self.phase}/{trial.trial_id}", name, self.parent,
                                           tags=tags, params=params)
            self.runs[trial.trial_id] = run_id
        return run_id

    # --- Tune hooks -------------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.client.update_run(self._run(trial), status="RUNNING")

    def on_trial_restore(self, iteration, trials, trial, **info):
        self.on_trial_start(iteration, trials, trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        self.tracker.set_tags(run_id, {f"{TAG_PREFIX}retries": trial.num_failures,
                                       f"{TAG_PREFIX}last_error": _error_line(trial)})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run(trial)
        if result.get("diverged"):
            reason = str(result.get("diverged_reason") or "the training loss became NaN or inf")
            self.diverged[trial.trial_id] = reason
            print(f"{self.labels.get(trial.trial_id, trial.trial_id)}: {reason}", flush=True)
            return
        epoch = result.get("epoch")
        print(progress_line(self.labels.get(trial.trial_id, trial.trial_id), result, self.metric), flush=True)
        metrics = {k: v for k, v in result.items() if k not in _TUNE_KEYS and _is_number(v)}
        self.tracker.log_metrics(run_id, metrics, step=int(epoch) if epoch is not None else None)
        if isinstance(result.get(STEP_LOSSES), list):  # loss per optimizer step (a resumed trial's are logged once)
            self.tracker.log_series(run_id, STEP_LOSS_METRIC, result[STEP_LOSSES])
        unavailable = result.get("unavailable")
        if isinstance(unavailable, dict):
            self.tracker.log_unavailable(run_id, unavailable)
        value = result.get(self.metric)
        if _is_number(value) and epoch is not None:
            best = self.best.get(trial.trial_id)
            better = best is None or (value < best[0] if self.mode == "min" else value > best[0])
            if better:
                self.best[trial.trial_id] = (float(value), "", int(epoch))
        if isinstance(result.get("checkpoint_path"), str):  # a Ray Train run inside the trial (--final-workers)
            self.on_checkpoint(iteration, trials, trial, SimpleNamespace(path=result["checkpoint_path"]))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        run_id = self._run(trial)
        path = Path(checkpoint.path)
        report = json.loads((path / "report.json").read_text()) if (path / "report.json").is_file() else {}
        epoch = int(report.get("epoch", -1))
        placement = report.get("placement") or {}
        if placement:  # which node ran this trial, holding which resources (GPU ids on a GPU cluster)
            self.tracker.set_tags(run_id, {f"{TAG_PREFIX}node_ip": placement.get("node_ip"),
                                           f"{TAG_PREFIX}node_id": placement.get("node_id"),
                                           f"{TAG_PREFIX}resources": json.dumps(placement.get("resources", {})),
                                           f"{TAG_PREFIX}gpu_ids": ",".join(placement.get("gpu_ids", []))})
        if report.get("describe"):  # the built model's own description: parameter counts, scheduler settings
            self.tracker.log_params(run_id, {f"built.{k}": v for k, v in report["describe"].items()}, only_new=True)
            if "base" in report["describe"]:  # sd-lora: say plainly which base the adapters were trained on
                self.tracker.set_tags(run_id, {f"{TAG_PREFIX}base": report["describe"]["base"]})
        for png in sorted(path.glob("*.png")):
            self.tracker.log_artifact(run_id, png, f"samples/epoch_{epoch:03d}")
            if epoch >= 0:  # the same picture as an image series over epochs (the run page's image charts)
                self.tracker.log_image(run_id, png, key=png.stem, step=epoch)
        best = self.best.get(trial.trial_id)
        if best is not None and best[2] == epoch:
            self.best[trial.trial_id] = (best[0], str(path), epoch)
        if self.policy == "all":
            self._log_checkpoint(run_id, path / "engine", f"checkpoints/epoch_{epoch:03d}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        if trial.trial_id in self.diverged:
            self.tracker.finish(run_id, ok=False, reason=f"diverged: {self.diverged[trial.trial_id]}")
            self.finished += 1
            print(f"[{self.phase}] {self.labels.get(trial.trial_id, trial.trial_id)} FAILED (diverged; the "
                  f"{self.phase} goes on) ({self.finished}/{self.total or len(trials)} trials done)", flush=True)
            return
        if self.policy == "best" and trial.trial_id in self.best:
            value, path, epoch = self.best[trial.trial_id]
            if path and Path(path, "engine").is_dir():
                self._log_checkpoint(run_id, Path(path, "engine"), f"checkpoints/best_epoch_{epoch:03d}")
        self.tracker.finish(run_id, ok=True)
        self.finished += 1
        print(f"[{self.phase}] {self.labels.get(trial.trial_id, trial.trial_id)} finished "
              f"({self.finished}/{self.total or len(trials)} trials done)", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        self.tracker.finish(run_id, ok=False, reason=_error_line(trial))

    def _log_checkpoint(self, run_id: str, path: Path, artifact_path: str) -> None:
        """Log what sampling uses -- the EMA weights (else the trained weights) and the small training state --
        not the optimizer: a study-large engine checkpoint is ~4.6 GB, its EMA weights 1.1 GB. The full
        resumable checkpoint stays in the Ray storage path."""
        if not path.is_dir():
            return
        weights = path / "ema.safetensors" if (path / "ema.safetensors").is_file() else path / "trainable.safetensors"
        files = [f for f in (weights, path / "state.pt") if f.is_file()]
        if not files:
            return
        size = sum(f.stat().st_size for f in files) / 2**20
        if self.logged_mb + size > self.limit_mb:
            self.tracker.set_tags(run_id, {f"{TAG_PREFIX}checkpoint_skipped":
                                           f"{artifact_path}: artifact limit {self.limit_mb:g} MB reached "
                                           f"(raise --artifact-limit-mb); it stays in the Ray storage path"})
            return
        for f in files:
            self.tracker.log_artifact(run_id, f, artifact_path)
        self.logged_mb += size


def progress_line(label: str, result: dict[str, Any], metric: str) -> str:
    """One line per reported epoch, e.g. `grid:ga1-T1000-snroff-small epoch 2: train_loss 0.071 ...`."""
    keys = ["train_loss", "val_loss", metric, "est_acc_balanced"]
    shown = []
    for k in dict.fromkeys(keys):
        if _is_number(result.get(k)):
            shown.append(f"{k} {result[k]:.4g}")
    speed = ""
    if _is_number(result.get("epoch_seconds")):
        speed = f"  ({result['epoch_seconds']:.1f} s, {result.get('images_per_second', 0):.0f} img/s)"
    return f"{label} epoch {result.get('epoch', '?')}: " + "  ".join(shown) + speed


def _error_line(trial) -> str:
    msg = ""
    path = getattr(trial, "error_file", None) or ""
    try:
        if path and os.path.isfile(path):
            lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
            msg = lines[-1] if lines else ""
    except OSError:
        pass
    return msg or "trial failed (see the Ray storage path for its error file)"


def numeric_items(d: dict[str, Any]) -> Iterable[tuple[str, float]]:
    return ((k, float(v)) for k, v in d.items() if _is_number(v))
