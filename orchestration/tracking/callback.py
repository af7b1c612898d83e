"""The Tune callback: the single MLflow writer for trials, inside the Tune driver."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from data.catalogue import STEP_LOSS_METRIC, TAG_PREFIX, finite, metric
from orchestration.faults import reached
from orchestration.tracking.client import Tracker
from orchestration.tracking.console import error_line, progress_line
from orchestration.trainable import STEP_LOSSES

# Keys Tune adds to every result; everything else numeric that a trial reports is logged as a metric.
_TUNE_KEYS = set(AUTO_RESULT_KEYS) | {
    "done", "trial_id", "experiment_tag", "should_checkpoint", "episodes_this_iter", "timesteps_this_iter",
    "epoch",
}


class MlflowTrialCallback(Callback):
    """Mirror every Tune trial into a nested MLflow run, from the driver.

    phase: "grid" or "final". trial_params(config_dict) -> (run name, params) gives each trial's whole
    resolved configuration. Checkpoint artifacts follow `policy` ("none" | "best" | "all") within
    `limit_mb`. Picklable (Tune stores callbacks with the experiment state for `Tuner.restore`).

    by_label: each trial's run is keyed by its label (unique in a grid or a final run) rather than by Tune's
    trial id, which changes when a driver killed before Tune saved its trials is restored; `family` keeps the
    labels of two families apart under one parent. An Optuna search, whose labels can repeat, keys by trial id.
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str, phase: str, tags: dict[str, str],
                 trial_params, select_metric: str, policy: str = "best",
                 limit_mb: float = 2048.0, total: int | None = None, by_label: bool = False, family: str = ""):
        self.uri, self.experiment, self.parent = uri, experiment, parent_run_id
        self.phase, self.tags, self.trial_params = phase, dict(tags), trial_params
        self.metric = select_metric  # ranks each trial's epochs in the catalogue's better direction
        self.policy, self.limit_mb = policy, limit_mb
        self.runs: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self.best: dict[str, tuple[float, str, int]] = {}  # trial id -> (value, checkpoint path, epoch)
        self.logged_mb = 0.0
        self.labels: dict[str, str] = {}
        self.total = total
        self.by_label, self.family = by_label, family
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

    def key(self, trial_id: str, config: dict) -> str:
        """The key of a trial's run (`Tracker.open_run`): the same for a trial that Tune recreated."""
        if self.by_label:
            return f"{self.parent}/{self.phase}/{self.family}/{self.trial_params(config)[0]}"
        return f"{self.parent}/{self.phase}/{trial_id}"

    def _run(self, trial) -> str:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or trial.trial_id not in self.labels:  # new, or restored by Tuner.restore
            name, params = self.trial_params(trial.config)
            self.labels[trial.trial_id] = name
        if run_id is None:
            tags = {**self.tags, f"{TAG_PREFIX}phase": self.phase, f"{TAG_PREFIX}trial_id": trial.trial_id}
            run_id = self.tracker.open_run(self.key(trial.trial_id, trial.config), name, self.parent, tags=tags,
                                           params=params)
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
                                       f"{TAG_PREFIX}last_error": error_line(trial)})
        reached(f"{self.family}/{self.phase}:retried")  # a fault point: the retry is recorded

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run(trial)
        if result.get("diverged"):
            reason = str(result.get("diverged_reason") or "the training loss became NaN or inf")
            self.diverged[trial.trial_id] = reason
            print(f"{self.labels.get(trial.trial_id, trial.trial_id)}: {reason}", flush=True)
            return
        epoch = result.get("epoch")
        print(progress_line(self.labels.get(trial.trial_id, trial.trial_id), result, self.metric), flush=True)
        metrics = {k: v for k, v in result.items() if k not in _TUNE_KEYS and finite(v)}
        self.tracker.log_metrics(run_id, metrics, step=int(epoch) if epoch is not None else None)
        if isinstance(result.get(STEP_LOSSES), list):  # loss per optimizer step (a resumed trial's are logged once)
            self.tracker.log_series(run_id, STEP_LOSS_METRIC, result[STEP_LOSSES])
        unavailable = result.get("unavailable")
        if isinstance(unavailable, dict):
            self.tracker.log_unavailable(run_id, unavailable)
        value = result.get(self.metric)
        if finite(value) and epoch is not None:
            best = self.best.get(trial.trial_id)
            if best is None or metric(self.metric).better_than(value, best[0]):
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
                                           f"{TAG_PREFIX}gpu_ids": ",".join(placement.get("gpu_ids", [])),
                                           f"{TAG_PREFIX}loader_workers": str(placement.get("loader_workers", 0))})
        if report.get("describe"):  # the built model's own description: parameter counts, scheduler settings
            self.tracker.log_params(run_id, {f"built.{k}": v for k, v in report["describe"].items()}, only_new=True)
            if "base" in report["describe"]:  # say plainly which pretrained weights it builds on (tiny stand-in?)
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
        self.tracker.finish(run_id, ok=False, reason=error_line(trial))

    def settle(self, results):
        """After the phase: every trial's run closed as its result says (FINISHED, or FAILED with the reason),
        also where a killed driver never closed it (Tune restored the trial as finished). Returns `results`."""
        for result in results:
            trial_id = (result.metrics or {}).get("trial_id")
            run_id = self.tracker.find_run(self.key(trial_id, result.config)) if trial_id else None
            if run_id is None or self.tracker.status(run_id) != "RUNNING":
                continue
            last = result.metrics or {}
            if last.get("diverged"):
                reason = f"diverged: {last.get('diverged_reason') or 'the training loss became NaN or inf'}"
            else:
                reason = str(result.error).strip().splitlines()[-1][:300] if result.error else None
            self.tracker.finish(run_id, ok=reason is None, reason=reason)
        return results

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
