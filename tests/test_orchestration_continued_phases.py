"""A continued final, CFG or sampler phase reads what MLflow already holds for the settings it finished and samples
only the others, so `sweep.json` (what the summary prints) and the figures' data equal MLflow's values.

Unit-level: the phases' own functions, run as units of a sweep (`Sweep.phase`, `sweep.json`), on a real MLflow
SQLite store, a real tiny DDPM pipeline and a real scorer (a tiny random estimator); the sampling is the real one,
in this process rather than a Ray task. A driver killed between two steps' writes is an interrupt raised at the
next step's write. The continued run scores with another estimator, standing in for a GPU that does not sample the
same twice: a setting sampled again would give values that differ from MLflow's.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from data.catalogue import TAG_PREFIX
from evaluation.config import EvalConfig
from evaluation.scorer import Scorer
from orchestration.config import resolve
from orchestration.driver import Sweep
from orchestration.evaluate import sample_and_score
from orchestration.resources import plan_resources
from orchestration.state import STATE_FILE, SweepState
from orchestration.tracking.client import Tracker
from tests.eval_helpers import random_estimator
from tests.models_helpers import micro_family

ONE_NODE = ({"cpu": 1.0, "gpu": 0.0},)
TAGS = {f"{TAG_PREFIX}family": "ddpm"}
COUNTS = ("_n", "_n_real")


@pytest.fixture(scope="module")
def world(tmp_path_factory, data):
    """A saved tiny pipeline, two scorers with different estimators, one MLflow store."""
    tmp = tmp_path_factory.mktemp("continued-phases")
    pipeline = tmp / "pipeline"
    micro_family().save_pretrained(pipeline)
    pools = [Scorer(EvalConfig(estimator=str(random_estimator(tmp / f"estimator-{seed}", seed=seed)),
                               clip_model=None, mtcnn=False, device="cpu")) for seed in (0, 1)]
    return SimpleNamespace(tmp=tmp, pipeline=pipeline, pools=pools, data=data, uri=f"sqlite:///{tmp / 'mlruns.db'}")


@pytest.fixture
def sampled(monkeypatch) -> list[list[tuple]]:
    """The settings of every sampling call, in order; each sampled for real, in this process."""
    import orchestration.phases.final as final
    import orchestration.phases.guidance as guidance

    calls: list[list[tuple]] = []

    def sample(resources, **kwargs):
        calls.append(list(kwargs["settings"]))
        return sample_and_score(threads=1, **kwargs)

    monkeypatch.setattr(guidance, "run_remote", sample)
    monkeypatch.setattr(final, "run_remote", sample)
    monkeypatch.setattr(guidance, "plan_resources", lambda cfg: plan_resources(cfg, ONE_NODE))
    return calls


def config(world, tmp_path, experiment: str, **changes):
    return resolve("smoke", data=world.data, tracking_uri=world.uri, storage_path=str(tmp_path / "results"),
                   experiment=experiment, **changes)


def open_sweep(world, cfg, pool, root: Path | None = None) -> Sweep:
    """The sweep as a new driver process sees it: its state (from sweep.json when continued), a Tracker of its own."""
    state = SweepState.load(root) if root else SweepState.create(cfg, cfg.tracking_uri)
    tracker = Tracker(cfg.tracking_uri, cfg.experiment_name)
    if state.parent_run_id is None:
        state.parent_run_id = tracker.open_run(f"sweep/{state.root.name}", "sweep", tags=TAGS)
        state.save()
    return Sweep(cfg, state, tracker, state.parent_run_id, world.data, None, pool, plan_resources(cfg, ONE_NODE))


def die_at_step(monkeypatch, tracker: Tracker, step_metric: str, step: int) -> None:
    """The driver dies as it writes `step` of a phase's run (the steps before it are written)."""
    log = tracker.log_metrics

    def dying(run_id, metrics, step=None, step_metric="epoch"):
        if step_metric == metric and step == at:
            raise KeyboardInterrupt
        return log(run_id, metrics, step=step, step_metric=step_metric)

    metric, at = step_metric, step
    monkeypatch.setattr(tracker, "log_metrics", dying)


def metrics_at(client, run_id: str, step: int) -> dict[str, float]:
    out = {}
    for key in client.get_run(run_id).data.metrics:
        for m in client.get_metric_history(run_id, key):
            if m.step == step:
                out[key] = m.value
    return out


def recorded_result(sweep: Sweep, phase: str) -> dict:
    return json.loads((sweep.state.root / STATE_FILE).read_text())["phases"][phase]["result"]


def assert_rows_are_mlflows(client, run_id: str, rows: list[dict], step_metric: str, extras: dict[str, str]) -> None:
    for i, row in enumerate(rows):
        at = metrics_at(client, run_id, i)
        assert at and at[step_metric] == i, (i, at)
        assert row["values"] == {k: v for k, v in at.items()
                                 if k != step_metric and k not in extras and not k.endswith(COUNTS)}, i
        assert row["counts"] == {k: v for k, v in at.items() if k.endswith(COUNTS)}, i
        for metric, field in extras.items():
            assert row[field] == at[metric], (i, field)


def test_a_continued_cfg_phase_reads_the_scales_mlflow_has(world, sampled, tmp_path, monkeypatch):
    from orchestration.phases.guidance import run_cfg_sweep

    cfg = config(world, tmp_path, "continued-cfg", cfg_scales=(1.0, 3.0, 5.0))
    final = {"pipeline_dir": str(world.pipeline), "model_uri": "models:/condface-ddpm/1", "guidance_scale": 3.0}
    first = open_sweep(world, cfg, world.pools[0])
    die_at_step(monkeypatch, first.tracker, "scale_index", 1)
    with pytest.raises(KeyboardInterrupt):
        first.phase("ddpm/cfg", run_cfg_sweep, first, cfg, final, TAGS)

    again = open_sweep(world, cfg, world.pools[1], first.state.root)
    out = again.phase("ddpm/cfg", run_cfg_sweep, again, cfg, final, TAGS)
    assert [[s[2] for s in call] for call in sampled] == [[1.0, 3.0, 5.0], [3.0, 5.0]], "scale 1 sampled again"
    rows = recorded_result(again, "ddpm/cfg")["rows"]
    assert [r["guidance_scale"] for r in rows] == [1.0, 3.0, 5.0]
    client = again.tracker.client
    assert_rows_are_mlflows(client, out["run_id"], rows, "scale_index", {"guidance_scale": "guidance_scale"})
    # the Pareto figure is drawn from these rows; its data is logged beside it
    logged = json.loads(Path(client.download_artifacts(out["run_id"], "cfg/cfg_sweep.json", str(tmp_path))).read_text())
    assert [r["values"] for r in logged] == [r["values"] for r in rows]


def test_a_continued_sampler_phase_reads_the_settings_mlflow_has(world, sampled, tmp_path, monkeypatch):
    from orchestration.phases.samplers import run_sampler_phase

    cfg = config(world, tmp_path, "continued-samplers", sampler_phase=True)
    final = {"pipeline_dir": str(world.pipeline), "model_uri": "models:/condface-ddpm/1", "guidance_scale": 3.0}
    first = open_sweep(world, cfg, world.pools[0])
    die_at_step(monkeypatch, first.tracker, "setting_index", 2)
    with pytest.raises(KeyboardInterrupt):
        first.phase("ddpm/samplers", run_sampler_phase, first, cfg, final, TAGS)

    again = open_sweep(world, cfg, world.pools[1], first.state.root)
    out = again.phase("ddpm/samplers", run_sampler_phase, again, cfg, final, TAGS)
    settings = [("ddim", 2, 3.0), ("ddim", 4, 3.0), ("dpm++", 2, 3.0), ("dpm++", 4, 3.0)]
    assert sampled == [settings, settings[2:]], "a setting MLflow has was sampled again"
    rows = recorded_result(again, "ddpm/samplers")["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [s[:2] for s in settings]
    assert_rows_are_mlflows(again.tracker.client, out["run_id"], rows, "setting_index",
                            {"nfe": "steps", "seconds": "seconds"})


def test_a_continued_final_phase_reads_its_evaluation_back(world, sampled, tmp_path):
    """Killed after the final evaluation was logged (before the model was registered): the continued phase takes
    the evaluation from MLflow (what run_final then logs to the parent and keeps in sweep.json)."""
    from orchestration.phases.final import FINAL_EVAL_STEP, evaluate_final

    cfg = config(world, tmp_path, "continued-final")
    first = open_sweep(world, cfg, world.pools[0])
    run_id = first.tracker.open_run(f"{first.parent}/final/t1", "final:t1", first.parent, TAGS)
    spec, resources, root = SimpleNamespace(guidance_scale=3.0), {"cpu": 1.0}, first.state.dir("ddpm")
    scored = evaluate_final(first, cfg, resources, spec, run_id, world.pipeline, root)

    again = open_sweep(world, cfg, world.pools[1], first.state.root)
    held = evaluate_final(again, cfg, resources, spec, run_id, world.pipeline, root)
    assert len(sampled) == 1, "the final evaluation was sampled again"
    metrics = again.tracker.client.get_run(run_id).data.metrics
    logged = {k[len("final_"):]: v for k, v in metrics.items() if k.startswith("final_") and k != FINAL_EVAL_STEP}
    assert held.values == scored.values == {k: v for k, v in logged.items() if not k.endswith(COUNTS)}
    assert held.values and held.counts == scored.counts == {k: v for k, v in logged.items() if k.endswith(COUNTS)}
    assert held.tables["est_confusion"] == json.loads(json.dumps(scored.tables["est_confusion"]))
