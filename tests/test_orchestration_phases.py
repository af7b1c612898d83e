"""Phases as units: the whole study (both families) in one sweep, killed inside phases and resumed; the
sampler phase, the augmentation axis and a diverged trial in one smoke sweep. Real Ray, real MLflow store.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.test_orchestration_sweep import _kill_tree, artifact_paths, children, client_for, smoke

pytestmark = pytest.mark.slow  # sweeps

ROOT = Path(__file__).resolve().parent.parent


def _run_until(args: list[str], env: dict, log: Path, pause_at: str | None, timeout: float = 300) -> str:
    """Run the sweep; with `pause_at`, kill it (driver + Ray, as a dying machine) once it pauses there."""
    env = {**env, "CONDFACE_PAUSE_AT": pause_at or ""}
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if pause_at and f"[reached] {pause_at}: paused" in log.read_text():
                _kill_tree(proc)
                return log.read_text()
        if proc.poll() is None:
            _kill_tree(proc)
            raise AssertionError(f"timed out:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert proc.returncode == 0 and not pause_at, f"rc {proc.returncode}, expected a pause at {pause_at}:\n{text[-4000:]}"
    return text


def test_the_whole_study_in_one_sweep_killed_inside_phases_and_resumed(tmp_path, data, home):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = [sys.executable, "-m", "orchestration.sweep", "--preset", "smoke", "--model", "ddpm,sd-lora", "--data", data,
            "--no-dashboard", "--tracking-uri", uri, "--storage-path", str(tmp_path / "results"), "--sampler-phase"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CONDFACE_HOME": str(home)}
    first = _run_until(args, env, tmp_path / "1.log", "ddpm/final:trained")  # the final run trained, not evaluated
    assert "40 trials" not in first and "4 trials (ddpm + sd-lora)" in first
    # one line per trial epoch: the callback's, not also the engine's through Ray's log forwarding
    assert len(re.findall(r"^grid:ga1-T1000-snroff-small epoch 1:", first, re.M)) == 1
    assert not re.search(r"\(run_trial pid=\d+\).*epoch 1/1", first), "the engine's epoch line reached the driver"
    second = _run_until([*args, "--resume"], env, tmp_path / "2.log", "ddpm/cfg")  # killed during the CFG sweep
    assert "[ddpm/grid] done in an earlier run of this sweep: skipped" in second
    assert "[ddpm/final] cut short in an earlier run: continuing" in second
    assert not re.search(r"^grid:\S+ epoch", second, re.M), "a finished grid trial ran again"
    assert not re.search(r"^final:\S+ epoch", second, re.M), "the finished final training ran again"
    third = _run_until([*args, "--resume"], env, tmp_path / "3.log", "sd-lora/grid")
    last_log = _run_until([*args, "--resume"], env, tmp_path / "3b.log", "sd-lora/final:registered")
    # the sd-lora trials do not each repeat which base they adapt (the driver says it once)
    assert len(re.findall(r"\(run_trial pid=\d+\) sd-lora: base", last_log)) == 0
    assert "[ddpm/final] done in an earlier run of this sweep: skipped" in third
    assert "[ddpm/cfg] cut short in an earlier run: continuing" in third
    last = _run_until([*args, "--resume", "--epochs", "3"], env, tmp_path / "4.log", None)
    assert "ignored: --epochs 3 (the sweep has 1)" in last
    assert not re.search(r"^(grid|final):ga\S+-(small|large) epoch", last, re.M), "a DDPM trial ran again"

    client = client_for(uri)
    exp = client.get_experiment_by_name("condface-ddpm+sd-lora-smoke")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`condface.phase` = 'sweep'")
    assert parent.info.status == "FINISHED"
    runs = children(client, parent.info.run_id)
    kinds = Counter((r.data.tags["condface.phase"], r.data.tags["condface.family"]) for r in runs)
    assert kinds == Counter({("grid", "ddpm"): 2, ("grid", "sd-lora"): 2, ("final", "ddpm"): 1,
                             ("final", "sd-lora"): 1, ("cfg", "ddpm"): 1, ("cfg", "sd-lora"): 1,
                             ("samplers", "ddpm"): 1, ("samplers", "sd-lora"): 1, ("reference", "real"): 1,
                             ("reference", "ddpm"): 1, ("reference", "sd-lora"): 1}), kinds
    for r in runs:
        assert r.info.status == "FINISHED", (r.info.run_name, r.data.tags.get("condface.end_reason"))
        for key in r.data.metrics:  # no step logged twice, however often the sweep was resumed
            steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
            assert len(steps) == len(set(steps)), (r.info.run_name, key, steps)
    for name in ("condface-ddpm", "condface-sd-lora"):  # one model version each
        assert len(client.search_model_versions(f"name = '{name}'")) == 1, name

    # the joint Table 4.4 in the terminal equals the MLflow record
    finals = {r.data.tags["condface.family"]: r for r in runs if r.data.tags["condface.phase"] == "final"}
    table = last[last.index("Final models"):]
    row = next(line for line in table.splitlines() if line.startswith("estimator accuracy  "))
    shown = row.split()[2:4]
    assert shown == [f"{finals[f].data.metrics['final_est_acc']:.2%}" for f in ("ddpm", "sd-lora")], (row, shown)
    assert "untrained DDPM" in table and "SD base (no LoRA)" in table and "ground_truth" in table
    # one Pareto figure with a curve per family on the parent run
    assert {"cfg/cfg_pareto_joint.png", "cfg/cfg_pareto_joint.json"} <= artifact_paths(client, parent.info.run_id)
    local = client.download_artifacts(parent.info.run_id, "cfg/cfg_pareto_joint.json", str(tmp_path))
    curves = json.loads(Path(local).read_text())
    assert sorted(curves) == ["ddpm", "sd-lora"] and all(len(v) == 2 for v in curves.values())


def test_sampler_phase_augmentation_axis_and_a_diverged_trial(tmp_path, data, home, monkeypatch):
    import ray

    from orchestration.driver import run_sweep
    from orchestration.faults import DIVERGE_ENV

    cfg = smoke(tmp_path, data, augment_axis=("none", "study-no-color"), sampler_phase=True)
    monkeypatch.setenv(DIVERGE_ENV, "ga1-T1000-snroff-small-aug:none")  # before Ray starts: its workers inherit it
    cfg = __import__("dataclasses").replace(cfg, channel_sets=(("small", (16, 64)),))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = run_sweep(cfg, dashboard=False)
    finally:
        ray.shutdown()
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
