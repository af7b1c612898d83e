"""What a finished sweep's record must be, however often its driver was killed and resumed: the invariants the
crash-point harness (orchestration.crash_points) checks after every kill.

    runs      one parent run with the estimator's whole record; every child FINISHED (a diverged grid trial FAILED with its reason); one run per key
    metrics   every metric of every run logged once per step; each trial's `epoch` steps are 1..epochs
    images    each image series (key, step) logged once, every epoch of a trial there
    models    per family one final run per seed (`final_seeds`: seed, seed + 1, ...), one registered version (the
              first seed's run's), `champion` on it; every logged model READY, one for the registered final run
              (none for the further seeds'), linked to it as an output and registered
    files     sweep.json (every phase done) equal to MLflow: the reference rows, each seed's final values and the
              model URI, the CFG and sampler rows, the parent's final_<family>.* metrics; the report written after
              the parent closed (report.md here and as an artifact); the printed summary's final table (with
              several seeds, the mean over them)
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from data.catalogue import CHAMPION_ALIAS, PARENT_TAG, TAG_PREFIX

PHASE, FAMILY, KEY = f"{TAG_PREFIX}phase", f"{TAG_PREFIX}family", f"{TAG_PREFIX}key"


def _same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    except (TypeError, ValueError):
        return False


def _differs(what: str, recorded: dict[str, Any], logged: dict[str, Any]) -> list[str]:
    """Keys of `recorded` (sweep.json) whose value MLflow does not have."""
    bad = [k for k, v in recorded.items() if isinstance(v, (int, float)) and not _same(v, logged.get(k))]
    return [f"{what}: sweep.json differs from MLflow for {', '.join(sorted(bad)[:5])} (e.g. {bad[0]}: "
            f"{recorded[bad[0]]} vs {logged.get(bad[0])})"] if bad else []


class RecordCheck:
    """The invariants of one sweep's record: `violations()` lists each broken one in a line."""

    def __init__(self, uri: str, sweep_dir: Path, log_text: str | None = None, experiment: str | None = None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.dir, self.log_text, self.experiment = Path(sweep_dir), log_text, experiment
        self.state = json.loads((self.dir / "sweep.json").read_text())
        self.phases = self.state["phases"]
        self.out: list[str] = []

    def violations(self) -> list[str]:
        parent = self._parent()
        if parent is None:
            return self.out
        runs = self.client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                       max_results=1000)
        self._phases_done()
        self._estimator(parent)
        self._runs(parent, runs)
        for run in [parent, *runs]:
            self._metrics_once(run)
            self._images_once(run)
        finals = {}
        for family in self.state["config"]["model"].split(","):
            finals[family] = self._family(parent, runs, family)
        self._logged_models(parent.info.experiment_id, finals)
        self._references(runs)
        self._report(parent)
        self._summary(finals)
        return self.out

    # --- runs ---------------------------------------------------------------------------------------------
    def _parent(self):
        experiments = [e.experiment_id for e in self.client.search_experiments()
                       if self.experiment is None or e.name == self.experiment]
        parents = self.client.search_runs(experiments, f"tags.`{PHASE}` = 'sweep'", max_results=100)
        if len(parents) != 1:
            self.out.append(f"{len(parents)} parent runs (one expected)")
        if not parents:
            return None
        parent = parents[0]
        if parent.info.status != "FINISHED":
            self.out.append(f"the parent run is {parent.info.status}")
        if self.state.get("parent_run_id") != parent.info.run_id:
            self.out.append("sweep.json names another parent run")
        return parent

    def _estimator(self, parent) -> None:
        """The parent's estimator record is whole: params, metrics, config and weights under estimator/."""
        files = {f.path for f in self.client.list_artifacts(parent.info.run_id, "estimator")}
        missing = [x for x in ("estimator/config.json", "estimator/estimator.safetensors") if x not in files]
        if "estimator.preset" not in parent.data.params or "estimator_val_acc" not in parent.data.metrics:
            missing.append("estimator.* params or estimator_val_acc")
        if missing:
            self.out.append(f"the parent's estimator record lacks {', '.join(missing)}")

    def _phases_done(self) -> None:
        undone = [name for name, p in self.phases.items() if p.get("status") != "done"]
        if undone or "sweep" not in self.phases:
            self.out.append(f"sweep.json: not done: {', '.join(undone) or 'sweep'}")

    def _runs(self, parent, runs) -> None:
        keys: dict[str, int] = {}
        for run in runs:
            tags = run.data.tags
            keys[tags.get(KEY, "")] = keys.get(tags.get(KEY, ""), 0) + 1
            reason = tags.get(f"{TAG_PREFIX}end_reason", "")
            diverged = tags.get(PHASE) == "grid" and run.info.status == "FAILED" and reason.startswith("diverged")
            if run.info.status != "FINISHED" and not diverged:
                self.out.append(f"run {run.info.run_name} is {run.info.status} ({reason or 'no reason'})")
        self.out += [f"{n} runs with the key {k}" for k, n in keys.items() if n > 1]

    def _metrics_once(self, run) -> None:
        name, run_id = run.info.run_name, run.info.run_id
        for key in run.data.metrics:
            steps = [m.step for m in self.client.get_metric_history(run_id, key)]
            if len(steps) != len(set(steps)):
                self.out.append(f"run {name}: metric {key} logged more than once per step ({steps})")
        epochs = run.data.params.get("train.epochs")
        if run.data.tags.get(PHASE) in ("grid", "final") and epochs and run.info.status == "FINISHED":
            steps = sorted({m.step for m in self.client.get_metric_history(run_id, "epoch")})
            if steps != list(range(1, int(epochs) + 1)):
                self.out.append(f"run {name}: epochs logged {steps}, expected 1..{epochs}")

    def _images_once(self, run) -> None:
        seen: dict[tuple[str, int], int] = {}
        for f in self.client.list_artifacts(run.info.run_id, "images"):
            m = re.match(r"(.+)\+step\+(\d+)\+.*\.png$", f.path.rsplit("/", 1)[-1])
            if m and not f.path.endswith("+compressed.webp"):
                seen[(m.group(1), int(m.group(2)))] = seen.get((m.group(1), int(m.group(2))), 0) + 1
        twice = sorted(k for k, n in seen.items() if n > 1)
        if twice:
            self.out.append(f"run {run.info.run_name}: images logged more than once: {twice[:4]}")
        epochs = run.data.params.get("train.epochs")
        if run.data.tags.get(PHASE) in ("grid", "final") and epochs and run.info.status == "FINISHED":
            for key in {k for k, _ in seen}:
                steps = sorted(s for k, s in seen if k == key)
                if steps != list(range(1, int(epochs) + 1)):
                    self.out.append(f"run {run.info.run_name}: image {key} at steps {steps}, expected 1..{epochs}")

    # --- per family ---------------------------------------------------------------------------------------
    def _family(self, parent, runs, family: str) -> dict[str, Any] | None:
        mine = [r for r in runs if r.data.tags.get(FAMILY) == family]
        by_phase: dict[str, list] = {}
        for r in mine:
            by_phase.setdefault(r.data.tags.get(PHASE, "?"), []).append(r)
        grid = self.phases.get(f"{family}/grid", {}).get("result") or {}
        if len(by_phase.get("grid", [])) != len(grid.get("records", [])):
            self.out.append(f"{family}: {len(by_phase.get('grid', []))} grid runs for "
                            f"{len(grid.get('records', []))} trials")
        for phase in ("cfg", "samplers", "reference"):
            if f"{family}/{phase}" in self.phases and len(by_phase.get(phase, [])) != 1:
                self.out.append(f"{family}: {len(by_phase.get(phase, []))} {phase} runs (one expected)")
        seeds = self._final_seeds(family, by_phase.get("final", []))
        final = self.phases.get(f"{family}/final", {}).get("result")
        if not final or seeds is None:
            return None
        run = seeds[int(self.state["config"].get("seed", 0))]
        if final["run_id"] != run.info.run_id:
            self.out.append(f"{family}: sweep.json names another final run")
        for entry in final.get("seeds") or [{**final, "seed": self.state["config"].get("seed", 0)}]:
            mine = seeds.get(int(entry["seed"]))
            if mine is None or mine.info.run_id != entry["run_id"]:
                self.out.append(f"{family}: sweep.json names another final run for seed {entry['seed']}")
                continue
            self.out += _differs(f"{family} final values (seed {entry['seed']})", entry["values"],
                                 {k[len("final_"):]: v for k, v in mine.data.metrics.items()})
        self.out += _differs(f"{family} final values on the parent", final["values"],
                             {k.split(".", 1)[1]: v for k, v in parent.data.metrics.items()
                              if k.startswith(f"final_{family}.")})
        self._registered(family, run, final)
        for phase in ("cfg", "samplers"):
            result = self.phases.get(f"{family}/{phase}", {}).get("result")
            if result and len(by_phase.get(phase, [])) == 1:
                self._rows(f"{family} {phase}", by_phase[phase][0].info.run_id, result["rows"])
        return {"run": run, "result": final, "seeds": seeds}

    def _final_seeds(self, family: str, runs: list) -> dict[int, Any] | None:
        """Seed -> the family's final run of it: one per seed of `final_seeds` (None, and said, when not)."""
        if f"{family}/final" not in self.phases:
            return None
        config = self.state["config"]
        want = list(range(int(config.get("seed", 0)), int(config.get("seed", 0)) + int(config.get("final_seeds", 1))))
        got = sorted(int(r.data.params.get("train.seed", -1)) for r in runs)
        if got != want:
            self.out.append(f"{family}: final runs of seeds {got} (one per seed of {want} expected)")
            return None
        return {int(r.data.params["train.seed"]): r for r in runs}

    def _registered(self, family: str, run, final: dict) -> None:
        uri = run.data.tags.get(f"{TAG_PREFIX}registered_model", "")
        name = uri[len("models:/"):].rsplit("/", 1)[0] if uri.startswith("models:/") else f"condface-{family}"
        versions = self.client.search_model_versions(f"name = '{name}'")
        ours = [v for v in versions if v.run_id == run.info.run_id]  # (an earlier sweep's versions may be there)
        if len(ours) > 1:
            self.out.append(f"{family}: {len(ours)} registered versions of {name} from this sweep (one expected)")
        if not ours:
            self.out.append(f"{family}: no registered version of {name} from the final run")
            return
        try:
            champion = self.client.get_model_version_by_alias(name, CHAMPION_ALIAS).version
        except Exception:
            champion = None
        if str(champion) != str(ours[0].version):
            self.out.append(f"{family}: `{CHAMPION_ALIAS}` is on version {champion}, not this sweep's "
                            f"{ours[0].version}")
        if final.get("model_uri") != f"models:/{name}/{ours[0].version}":
            self.out.append(f"{family}: sweep.json's model_uri {final.get('model_uri')} is not the registered one")

    def _logged_models(self, experiment_id: str, finals: dict[str, dict | None]) -> None:
        models = self.client.search_logged_models([experiment_id]).to_list()
        for m in models:
            if not str(m.status).endswith("READY"):
                self.out.append(f"logged model {m.model_id} ({m.name}) is {m.status}")
        for family, final in finals.items():
            if final is None:
                continue
            run = self.client.get_run(final["run"].info.run_id)
            own = [m for m in models if m.source_run_id == run.info.run_id]
            if len(own) != 1:
                self.out.append(f"{family}: {len(own)} logged models of the final run (one expected)")
            for seed, other in final["seeds"].items():
                if other.info.run_id != run.info.run_id and any(m.source_run_id == other.info.run_id for m in models):
                    self.out.append(f"{family}: the final run of seed {seed} logged a model (only the registered "
                                    "run's is expected)")
            linked = {o.model_id for o in (run.outputs.model_outputs if run.outputs else [])}
            for m in own:
                if m.model_id not in linked:
                    self.out.append(f"{family}: the logged model {m.model_id} is not linked to its run")
            # the store gives a version's model id back only in its source (the logged model's artifacts)
            sources = [v.source for v in self.client.search_model_versions(f"run_id = '{run.info.run_id}'")]
            if own and not any(m.model_id in src for m in own for src in sources):
                self.out.append(f"{family}: the registered version is not the run's logged model")

    def _rows(self, what: str, run_id: str, rows: list[dict]) -> None:
        """Row i of sweep.json is step i of the run."""
        history: dict[int, dict[str, float]] = {}
        for key in rows[0]["values"] if rows else []:
            for m in self.client.get_metric_history(run_id, key):
                history.setdefault(m.step, {})[key] = m.value
        for i, row in enumerate(rows):
            self.out += _differs(f"{what} row {i}", row["values"], history.get(i, {}))

    def _references(self, runs) -> None:
        refs = {r.data.tags.get(FAMILY): r for r in runs if r.data.tags.get(PHASE) == "reference"}
        checks = [("real", self.phases.get("references/real", {}).get("result") or {})]
        for family in self.state["config"]["model"].split(","):
            checks.append((family, {"untrained": self.phases.get(f"{family}/reference", {}).get("result") or {}}))
        for family, rows in checks:
            run = refs.get(family)
            if run is None:  # a reference run of an earlier sweep is reused, not a child: read it by the parent tag
                continue
            for row, values in rows.items():
                self.out += _differs(f"reference {family}/{row}", values,
                                     {k.split(".", 1)[1]: v for k, v in run.data.metrics.items()
                                      if k.startswith(f"{row}.")})

    # --- what was written from the record -----------------------------------------------------------------
    def _report(self, parent) -> None:
        local = self.dir / "report" / "report.md"
        if not local.is_file():
            self.out.append("no report.md in the sweep directory")
            return
        names = {f.path for f in self.client.list_artifacts(parent.info.run_id, "report")}
        if "report/report.md" not in names:
            self.out.append("the parent run has no report/report.md")
            return
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            logged = Path(self.client.download_artifacts(parent.info.run_id, "report/report.md", tmp)).read_text()
        text = local.read_text()
        if logged != text:
            self.out.append("report.md differs between the sweep directory and the parent run")
        if "status FINISHED" not in text:
            self.out.append("the report was written before the parent run finished")

    def _summary(self, finals: dict[str, dict | None]) -> None:
        """The printed Table 4.4's estimator accuracy row equals the final runs' final_est_acc."""
        if not self.log_text or "Final models" not in self.log_text:
            return
        table = self.log_text[self.log_text.rindex("Final models"):]
        row = next((ln for ln in table.splitlines() if ln.startswith("estimator accuracy  ")), None)
        want = []
        for f in filter(None, finals.values()):  # with several seeds, the mean over them
            accuracies = [r.data.metrics.get("final_est_acc", float("nan")) for r in f["seeds"].values()]
            want.append(f"{sum(accuracies) / len(accuracies):.2%}")
        if row is None or re.sub(r"\([^)]*\)", "", row).split()[2:2 + len(want)] != want:
            self.out.append(f"the printed summary's final table ({row!r}) differs from MLflow ({want})")


def sweep_dir(storage: Path) -> Path:
    """The one sweep directory under a storage path."""
    found = sorted(p.parent for p in Path(storage).glob("*/sweep.json"))
    if len(found) != 1:
        raise ValueError(f"{len(found)} sweeps under {storage} (one expected)")
    return found[0]


def check_record(uri: str, storage: Path, log_text: str | None = None, experiment: str | None = None) -> list[str]:
    """Every broken invariant of the one sweep under `storage` recorded at `uri` (in `experiment`, where the store
    holds other sweeps too), one line each (none: [])."""
    return RecordCheck(uri, sweep_dir(storage), log_text, experiment).violations()


__all__ = ["check_record", "RecordCheck", "sweep_dir"]
