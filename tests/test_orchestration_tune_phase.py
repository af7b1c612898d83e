"""A phase whose driver died right after its Tuner was made (no trial saved yet) is restored with its own
param_space, not an empty one (the final phase of a resumed sweep once failed this way), and with the MLflow
runs its trials already had (Tune gives the recreated trials new ids); a grid cut short runs only its unfinished
trials again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray import tune
from ray.tune import RunConfig, Tuner

from orchestration.phases.tune import run_phase

pytestmark = pytest.mark.slow  # a Ray runtime


def report_grad_accum(config, ctx):
    tune.report({"grad_accum": config["grad_accum"], "ctx": ctx})


def report_fid(config, ctx):
    tune.report({"fid": float(config["grad_accum"]), "epoch": 0})


def report_once_or_fail(config, ctx):
    """Counts its runs in ctx's folder (an x each); trial ga2 fails its first run (the driver's death, as Tune sees
    it)."""
    from pathlib import Path

    runs = Path(ctx.folder) / f"ga{config['grad_accum']}"
    count = (runs.read_text() if runs.exists() else "") + "x"
    runs.write_text(count)
    if config["grad_accum"] == 2 and count == "x":
        raise RuntimeError("interrupted")
    tune.report({"fid": float(config["grad_accum"]), "epoch": 0})


def label_of(config):
    return f"grid:ga{config['grad_accum']}", {"trial.grad_accum": config["grad_accum"]}


GRID = {"grad_accum": tune.grid_search([1, 2])}
SWEEP = SimpleNamespace(seed=0, max_failures=0)  # what run_phase reads of the sweep's config


def grid_record(tmp_path, experiment: str) -> SimpleNamespace:
    """A sweep's parent run in a fresh MLflow store: `callback()` makes the grid's tracking callback (the sweep's,
    a new one per command), `runs()` lists the parent's child runs, `client` reads them."""
    from mlflow.tracking import MlflowClient

    from orchestration.tracking.callback import MlflowTrialCallback
    from orchestration.tracking.client import Tracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    parent = Tracker(uri, experiment).open_run("sweep", "sweep")
    client = MlflowClient(uri)

    def callback():
        return MlflowTrialCallback(uri, experiment, parent, "grid", {}, label_of, "fid", policy="none",
                                   by_label=True, family="ddpm")

    def runs():
        return client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")

    return SimpleNamespace(client=client, callback=callback, runs=runs)


@pytest.fixture
def ray_runtime():
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_phase_killed_before_its_first_trial_was_saved_is_restored_with_its_param_space(ray_runtime, tmp_path):
    params = {"grad_accum": 4, "timesteps": 1000, "min_snr_gamma": 0.0}
    resources = {"cpu": 1}
    trainable = tune.with_resources(tune.with_parameters(report_grad_accum, ctx=7), resources)
    Tuner(trainable, param_space=params, run_config=RunConfig(name="final", storage_path=str(tmp_path)))
    assert Tuner.can_restore(str(tmp_path / "final"))  # tuner.pkl written, no experiment state yet

    results = run_phase(7, tmp_path, "final", params, resources, "grad_accum", "max", callback=None,
                        resume=True, fn=report_grad_accum)

    assert len(results) == 1 and results.errors == []
    assert results[0].config == params
    assert results[0].metrics["grad_accum"] == 4 and results[0].metrics["ctx"] == 7


def test_a_grid_restored_before_tune_saved_its_trials_keeps_one_run_per_trial(ray_runtime, tmp_path):
    """crash_points point 155: the driver killed after the callback opened the trials' runs, before Tune wrote its
    experiment state. The restored grid recreates its trials under new ids; each finds its run by its label."""
    record, ctx = grid_record(tmp_path, "restored-grid"), SimpleNamespace(sweep=SWEEP)
    first = run_phase(ctx, tmp_path, "grid", GRID, {"cpu": 1}, "fid", "min", record.callback(), fn=report_fid)
    for state in (tmp_path / "grid").glob("experiment_state-*.json"):  # as if killed before Tune saved it
        state.unlink()
    again = run_phase(ctx, tmp_path, "grid", GRID, {"cpu": 1}, "fid", "min", record.callback(), resume=True,
                      fn=report_fid)

    assert {r.metrics["trial_id"] for r in first}.isdisjoint(r.metrics["trial_id"] for r in again)
    runs = record.runs()
    assert sorted(r.info.run_name for r in runs) == ["grid:ga1", "grid:ga2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert [m.step for m in record.client.get_metric_history(runs[0].info.run_id, "fid")] == [0]


def test_a_grid_restored_after_one_trial_finished_runs_only_the_other(ray_runtime, tmp_path):
    """`--resume` of a grid cut short: the finished trial keeps its result and run and does not run again; the
    unfinished one runs again."""
    record, ctx = grid_record(tmp_path, "resumed-grid"), SimpleNamespace(sweep=SWEEP, folder=str(tmp_path))
    first = run_phase(ctx, tmp_path, "grid", GRID, {"cpu": 1}, "fid", "min", record.callback(),
                      fn=report_once_or_fail)
    assert len(first.errors) == 1
    again = run_phase(ctx, tmp_path, "grid", GRID, {"cpu": 1}, "fid", "min", record.callback(), resume=True,
                      fn=report_once_or_fail)
    assert again.errors == [] and sorted(r.metrics["fid"] for r in again) == [1.0, 2.0]
    assert (tmp_path / "ga1").read_text() == "x" and (tmp_path / "ga2").read_text() == "xx"
    # one run each, across both commands
    assert sorted(r.info.run_name for r in record.runs()) == ["grid:ga1", "grid:ga2"]
