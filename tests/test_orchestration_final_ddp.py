"""A sweep killed and resumed: Tune's retry of a crashed trial, and the final run trained data-parallel with Ray
Train (`--final-workers 2`: TorchTrainer, gloo, 2 CPU workers), recorded, evaluated and registered like a one-worker
final run, resumed from Ray Train's checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestration.errors import SweepError
from tests.test_orchestration_sweep import ROOT, children, client_for, smoke


def test_worker_resources_for_the_data_parallel_final_run(data):
    import dataclasses

    from orchestration.resources import final_worker_resources, plan_resources

    cfg = smoke(Path("/tmp"), data, final_workers=2)
    cpu = plan_resources(cfg, nodes=({"cpu": 2.0, "gpu": 0.0},))
    assert final_worker_resources(cfg, cpu) == {"CPU": 1.0}  # the lone work's 2 CPUs shared out
    two_nodes = plan_resources(cfg, nodes=({"cpu": 1.0, "gpu": 0.0}, {"cpu": 1.0, "gpu": 0.0}))
    assert final_worker_resources(cfg, two_nodes) == {"CPU": 1.0}  # one worker on each node
    gpus = plan_resources(cfg, nodes=({"cpu": 8.0, "gpu": 1.0}, {"cpu": 8.0, "gpu": 1.0}))
    assert final_worker_resources(cfg, gpus) == {"CPU": 8.0, "GPU": 1.0}  # a GPU and its node's CPUs (the loader)
    with pytest.raises(SweepError, match="do not fit"):
        final_worker_resources(dataclasses.replace(cfg, final_workers=4), cpu)
    with pytest.raises(SweepError, match="needs 4 GPUs"):
        final_worker_resources(dataclasses.replace(cfg, final_workers=4), gpus)
    with pytest.raises(SweepError, match="does not divide"):
        smoke(Path("/tmp"), data, final_workers=3)  # batch 16


@pytest.mark.slow
def test_a_sweep_with_a_crashing_grid_killed_in_its_data_parallel_final_run_resumes(tmp_path, data, home):
    """Two faults in one sweep (ddpm, smoke, 2 grid epochs one trial at a time, a 2-epoch final run on 2
    data-parallel workers): every grid trial crashes once at its second epoch (Tune retries it from the first
    epoch's checkpoint); then the driver dies with its Ray runtime after the final run's first epoch (`--resume`
    starts the trainer again under the same name, Ray Train restores that epoch's checkpoint, epoch 1 is not trained
    again). A driver killed mid-grid and resumed is tests/test_cluster.py's."""
    from orchestration.faults import FAIL_ONCE_ENV

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = [sys.executable, "-m", "orchestration.sweep", "--preset", "smoke", "--data", data, "--epochs", "2",
            "--max-concurrent", "1", "--max-failures", "1", "--final-epochs", "2", "--final-workers", "2",
            "--no-dashboard", "--tracking-uri", uri, "--storage-path", str(tmp_path / "results")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNE_GLOBAL_CHECKPOINT_S": "1", "CONDFACE_HOME": str(home),
           FAIL_ONCE_ENV: "1"}

    first = _run_until_killed(args, env, tmp_path / "1.log",
                              lambda text: re.search(r"^final:\S+ epoch 1:", text, re.M) is not None)
    assert first.count("injected failure at epoch index 1") >= 2  # each grid trial crashed once
    assert "(2/2 trials done)" in first
    assert "on 2 data-parallel workers (gloo, {'CPU': 1.0} each)" in first
    second = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-4000:]
    assert "[ddpm/grid] done in an earlier run of this sweep: skipped" in text
    assert not re.search(r"^final:\S+ epoch 1:", text, re.M), "the restored trainer trained epoch 1 again"
    assert re.search(r"^final:\S+ epoch 2:", text, re.M)

    client = client_for(uri)
    exp = client.get_experiment_by_name("condface-ddpm-smoke")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`condface.phase` = 'sweep'")
    assert parent.info.status == "FINISHED"
    runs = children(client, parent.info.run_id)
    grid = [r for r in runs if r.data.tags["condface.phase"] == "grid"]
    assert len(grid) == 2 and all(r.info.status == "FINISHED" for r in grid)
    for r in grid:  # every epoch of every trial logged exactly once, the crashed epoch's retry included
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [1, 2]
        assert "fail_once_at_epoch" not in r.data.params  # a test's fault is no setting of the user's
        assert r.data.tags["condface.retries"] == "1"
        assert "injected failure" in r.data.tags["condface.last_error"]

    (final,) = [r for r in runs if r.data.tags["condface.phase"] == "final"]
    assert final.info.status == "FINISHED"
    for key in ("train_loss", "val_loss", "fd_estimator", "epoch"):  # rank 0's report of every epoch, once
        assert [m.step for m in client.get_metric_history(final.info.run_id, key)] == [1, 2], key
    assert "final_fd_estimator" in final.data.metrics  # evaluated on the pipeline rank 0 saved
    assert final.data.tags["condface.registered_model"].startswith("models:/condface-ddpm/")
    assert list((tmp_path / "results").glob("*/ddpm/final-train/final-*/checkpoint_*"))  # Ray Train's checkpoints
    sweep_dir = Path(parent.data.tags["condface.storage"])
    phases = json.loads((sweep_dir / "sweep.json").read_text())["phases"]
    assert phases["sweep"]["status"] == "done" and phases["ddpm/grid"]["status"] == "done"


def _run_until_killed(args: list[str], env: dict, log: Path, when: Callable[[str], bool], timeout: float = 400) -> str:
    """Run the sweep until its output satisfies `when`, then kill it with its Ray runtime: the machine 'dies'."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while proc.poll() is None and not when(log.read_text()):
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep ended before it could be killed:\n" + log.read_text()[-3000:]
        _kill_tree(proc)
    return log.read_text()


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (its local Ray runtime): the machine 'dies'."""
    import psutil

    parent = psutil.Process(proc.pid)
    for p in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a child that ended on its own meanwhile
            p.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
