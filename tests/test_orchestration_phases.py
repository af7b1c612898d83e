"""Phases as units: the whole study (both families) in one sweep, killed at MLflow writes in every phase and
resumed after each (the crash-point harness's CI sample); the sampler phase, the augmentation axis, a diverged
trial and two final seeds (interrupted between them and resumed) in one smoke sweep. Real Ray, real MLflow store.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.test_orchestration_sweep import artifact_paths, children, client_for, smoke

pytestmark = pytest.mark.slow  # sweeps


# Where the sweep is killed (SIGKILL, driver + its Ray), one command each, resumed after each: `k@<point>` = just
# before the k-th MLflow write after that point (orchestration.faults). Beside each, the window of issue 21 it left
# wrong before the fix (each confirmed with python -m orchestration.crash_points on the code before).
KILLS = [
    "7@setup",  # 4: the estimator's params logged, its files not: never completed
    "13@ddpm/final:trained",  # 2: this sweep's version registered, `champion` left on the earlier sweep's
    "8@sd-lora/final:trained",  # 3: the logged model created, its upload cut: PENDING for good, and a second one
    "2@sweep/closing",  # 1: the children closed, the parent not (sweep.json said done first: RUNNING for good)
]


def test_the_whole_study_killed_at_mlflow_writes_in_every_phase_and_resumed(tmp_path, data, home, tiny_bases):
    from orchestration.crash_points import crash_sweep
    from orchestration.crash_record import check_record

    result = crash_sweep(data, tmp_path, KILLS, timeout_s=900)
    logs = [log.read_text() for log in result.logs]
    assert result.violations == [], "\n".join(result.violations + result.killed) + "\n" + logs[-1][-3000:]
    assert len(result.killed) == len(KILLS), "\n".join(result.killed)
    first, last = logs[0] + logs[1], logs[-1]
    assert "4 trials (ddpm + sd-lora)" in first
    # one line per trial epoch: the callback's, not also the engine's through Ray's log forwarding
    assert len(re.findall(r"^grid:ga1-T1000-snroff-small epoch 1:", first, re.M)) == 1
    assert not re.search(r"\(run_trial pid=\d+\).*epoch 1/1", first), "the engine's epoch line reached the driver"
    assert "[ddpm/final] cut short in an earlier run: continuing" in "".join(logs)
    assert "[ddpm/grid] done in an earlier run of this sweep: skipped" in last
    assert not re.search(r"^(grid|final):\S+ epoch", last, re.M), "a finished trial ran again"

    client = client_for(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("condface-ddpm+sd-lora-smoke")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`condface.phase` = 'sweep'")
    kinds = Counter((r.data.tags["condface.phase"], r.data.tags["condface.family"])
                    for r in children(client, parent.info.run_id))
    assert kinds == Counter({("grid", "ddpm"): 2, ("grid", "sd-lora"): 2, ("final", "ddpm"): 1,
                             ("final", "sd-lora"): 1, ("cfg", "ddpm"): 1, ("cfg", "sd-lora"): 1,
                             ("samplers", "ddpm"): 1, ("samplers", "sd-lora"): 1, ("reference", "real"): 1,
                             ("reference", "ddpm"): 1, ("reference", "sd-lora"): 1}), kinds
    # one Pareto figure with a curve per family on the parent run
    local = client.download_artifacts(parent.info.run_id, "cfg/cfg_pareto_joint.json", str(tmp_path))
    curves = json.loads(Path(local).read_text())
    assert sorted(curves) == ["ddpm", "sd-lora"] and all(len(v) == 2 for v in curves.values())

    # the invariants bite: an epoch's loss logged again and `champion` back on the earlier version are found
    grid = next(r for r in children(client, parent.info.run_id) if r.data.tags["condface.phase"] == "grid")
    client.log_metric(grid.info.run_id, "train_loss", 1.0, step=1)
    client.set_registered_model_alias("condface-ddpm", "champion", "1")
    found = check_record(f"sqlite:///{tmp_path / 'mlruns.db'}", tmp_path / "results", last)
    assert len(found) == 2 and "train_loss logged more than once" in found[0] and "champion" in found[1], found


def test_sampler_phase_augmentation_axis_a_diverged_trial_and_two_final_seeds(tmp_path, data, home, monkeypatch,
                                                                             capsys):
    import dataclasses

    import ray

    import orchestration.driver as driver
    from orchestration.faults import DIVERGE_ENV

    cfg = smoke(tmp_path, data, augment_axis=("none", "study-no-color"), sampler_phase=True, final_seeds=2)
    monkeypatch.setenv(DIVERGE_ENV, "ga1-T1000-snroff-small-aug:none")  # before Ray starts: its workers inherit it
    cfg = dataclasses.replace(cfg, channel_sets=(("small", (16, 64)),))

    def interrupt_between_seeds(point: str, reach=driver.reached) -> None:  # Ctrl-C once seed 0 is registered
        reach(point)
        if point == "ddpm/final/seed1":
            monkeypatch.setattr(driver, "reached", reach)
            raise KeyboardInterrupt

    monkeypatch.setattr(driver, "reached", interrupt_between_seeds)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(KeyboardInterrupt):
            driver.run_sweep(cfg, dashboard=False)
        first = capsys.readouterr().out
        out = driver.run_sweep(dataclasses.replace(cfg, resume=True), dashboard=False)
    finally:
        ray.shutdown()
    last = capsys.readouterr().out
    client = client_for(cfg.tracking_uri)
    runs = children(client, out["parent_run_id"])
    grid = {r.data.params["augment"]: r for r in runs if r.data.tags["condface.phase"] == "grid"}
    assert sorted(grid) == ["none", "study-no-color"]  # augmentation answered by the same grid
    assert grid["none"].info.status == "FAILED" and "diverged" in grid["none"].data.tags["condface.end_reason"]
    assert grid["study-no-color"].info.status == "FINISHED"  # the grid went on
    fam = out["families"]["ddpm"]
    assert fam["grid"]["best_label"] == "ga1-T1000-snroff-small-aug:study-no-color"
    assert [r["error"] is not None for r in fam["grid"]["records"]].count(True) == 1

    (samplers,) = [r for r in runs if r.data.tags["condface.phase"] == "samplers"]
    assert samplers.info.status == "FINISHED"
    nfe = [m.value for m in client.get_metric_history(samplers.info.run_id, "nfe")]
    assert sorted(nfe) == [2, 2, 4, 4]  # smoke: ddim and dpm++ at 2 and 4 steps
    assert {"samplers/samplers.png", "samplers/samplers.json"} <= artifact_paths(client, samplers.info.run_id)
    assert [(r["sampler"], r["steps"]) for r in fam["samplers"]["rows"]] == [("ddim", 2), ("ddim", 4), ("dpm++", 2),
                                                                           ("dpm++", 4)]
    _two_final_seeds(client, cfg, out, first, last)


def _two_final_seeds(client, cfg, out, first: str, last: str) -> None:
    """--final-seeds 2, the sweep interrupted between the seeds and resumed: seed 1 alone trained on resume; two
    final runs, one registered version (seed 0's, which the sampler phase used); the mean and spread in sweep.json,
    the summary, Table 4.4 and the conclusions' measurements; the crash record's invariants hold, and bite."""
    from orchestration.crash_record import check_record
    from orchestration.report.conclusions import finals_by_seed, measured, verdict
    from orchestration.report.record import Record

    assert re.search(r"^final:\S+-seed0 epoch 1:", first, re.M) and not re.search(r"-seed1 epoch", first)
    assert not re.search(r"^(grid|final):\S+-seed0 epoch", last, re.M), "seed 0 trained again"
    assert re.search(r"^final:\S+-seed1 epoch 1:", last, re.M)
    finals = [r for r in children(client, out["parent_run_id"]) if r.data.tags["condface.phase"] == "final"]
    by_seed = {int(r.data.params["train.seed"]): r for r in finals}
    assert sorted(by_seed) == [0, 1] and len(finals) == 2 and all(r.info.status == "FINISHED" for r in finals)
    assert [by_seed[s].data.tags["condface.seed_role"] for s in (0, 1)] == ["registered", "spread"]
    (version,) = [v for v in client.search_model_versions("name = 'condface-ddpm'")
                  if v.run_id in {r.info.run_id for r in finals}]
    assert version.run_id == by_seed[0].info.run_id and "condface.registered_model" not in by_seed[1].data.tags
    fin = out["families"]["ddpm"]["final"]
    assert fin["run_id"] == by_seed[0].info.run_id and "/ddpm/final/" in fin["pipeline_dir"]  # what the samplers used
    assert [s["seed"] for s in fin["seeds"]] == [0, 1]
    accs = [by_seed[s].data.metrics["final_est_acc"] for s in (0, 1)]
    assert fin["over_seeds"]["spread"]["est_acc"] == pytest.approx(max(accs) - min(accs))
    assert "ddpm (final) (mean of 2 seeds)" in last and "2 seeds each" in last
    report = (out["state"].root / "report" / "report.md").read_text()
    assert "ddpm final (mean of 2 seeds)" in report and f"(spread {max(accs) - min(accs):.2%})" in report
    rec = Record.load(cfg.tracking_uri, cfg.experiment_name, out["parent_run_id"])
    m = measured(finals_by_seed(rec, "ddpm"), "est_acc")
    assert m.values == dict(enumerate(accs)) and m.spread == pytest.approx(max(accs) - min(accs))
    assert "does not exceed the seed-to-seed spread" in verdict("est_acc", m, m)  # measured: a difference of 0
    assert rec.one("final", "ddpm").info.run_id == by_seed[0].info.run_id  # the figures show the registered model

    storage = Path(cfg.storage_path)
    assert check_record(cfg.tracking_uri, storage, last) == []
    client.delete_run(by_seed[1].info.run_id)  # the invariant bites: a seed's final run missing
    assert check_record(cfg.tracking_uri, storage, last) == [
        "ddpm: final runs of seeds [0] (one per seed of [0, 1] expected)"]
