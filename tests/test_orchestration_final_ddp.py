"""--final-workers 2: the final run trains data-parallel with Ray Train (TorchTrainer, gloo, 2 CPU workers) inside the
same sweep, is recorded, evaluated and registered like a one-worker final run, and resumes from Ray Train's
checkpoint when the driver died."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestration.errors import SweepError
from tests.test_orchestration_sweep import client_for, smoke


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
def test_a_killed_data_parallel_final_run_resumes_from_ray_trains_checkpoint(tmp_path, data, home):
    """The driver (and its Ray runtime) dies after the data-parallel final run's first epoch: `--resume` starts the
    trainer again under the same name, Ray Train restores that epoch's checkpoint, and epoch 1 is not trained again."""
    import re
    import subprocess
    import sys
    import time

    from tests.test_orchestration_sweep import _kill_tree

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = [sys.executable, "-m", "orchestration.sweep", "--preset", "smoke", "--data", data, "--final-epochs", "2",
            "--final-workers", "2", "--no-dashboard", "--tracking-uri", uri, "--storage-path",
            str(tmp_path / "results")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "CONDFACE_HOME": str(home)}
    log = tmp_path / "1.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 400
        while proc.poll() is None and not re.search(r"^final:\S+ epoch 1:", log.read_text(), re.M):
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        assert proc.poll() is None, log.read_text()[-3000:]
        _kill_tree(proc)
    second = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-4000:]
    assert not re.search(r"^final:\S+ epoch 1:", text, re.M), "the restored trainer trained epoch 1 again"
    assert re.search(r"^final:\S+ epoch 2:", text, re.M)
    client = client_for(uri)
    exp = client.get_experiment_by_name("condface-ddpm-smoke")
    (final,) = client.search_runs([exp.experiment_id], filter_string="tags.`condface.phase` = 'final'")
    assert final.info.status == "FINISHED"
    for key in ("train_loss", "val_loss", "fd_estimator", "epoch"):  # rank 0's report of every epoch, once
        assert [m.step for m in client.get_metric_history(final.info.run_id, key)] == [1, 2], key
    assert "final_fd_estimator" in final.data.metrics  # evaluated on the pipeline rank 0 saved
    assert final.data.tags["condface.registered_model"].startswith("models:/condface-ddpm/")
    first = (tmp_path / "1.log").read_text()
    assert "on 2 data-parallel workers (gloo, {'CPU': 1.0} each)" in first
    assert list((tmp_path / "results").glob("*/ddpm/final-train/final-*/checkpoint_*"))  # Ray Train's checkpoints
