"""--final-workers 2: the final run trains data-parallel with Ray Train (TorchTrainer, gloo, 2 CPU workers) inside the
same sweep, and is recorded, evaluated and registered like a one-worker final run."""

from __future__ import annotations

import os

import pytest

from orchestration.errors import SweepError
from tests.test_orchestration_sweep import children, client_for, smoke


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("condface-home")
    old = os.environ.get("CONDFACE_HOME")
    os.environ["CONDFACE_HOME"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CONDFACE_HOME", None)
    else:
        os.environ["CONDFACE_HOME"] = old


@pytest.fixture(scope="module")
def data(home, tmp_path_factory):
    from data.synthetic import toy_cache

    return str(toy_cache(size=16, n_train=256, n_val=64, n_test=8, root=tmp_path_factory.mktemp("data"),
                         progress=False))


def test_the_final_run_on_two_data_parallel_workers(tmp_path, data):
    import ray

    from orchestration.driver import run_sweep
    from orchestration.resources import final_worker_resources, plan_resources

    cfg = smoke(tmp_path, data, final_workers=2, final_epochs=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert final_worker_resources(cfg, plan_resources(cfg)) == {"CPU": 1.0}  # 2 CPUs shared out
        with pytest.raises(SweepError, match="do not fit"):
            import dataclasses

            final_worker_resources(dataclasses.replace(cfg, final_workers=4), plan_resources(cfg))
        out = run_sweep(cfg, dashboard=False)
    finally:
        ray.shutdown()
    client = client_for(cfg.tracking_uri)
    (final,) = [r for r in children(client, out["parent_run_id"]) if r.data.tags["condface.phase"] == "final"]
    assert final.info.status == "FINISHED"
    for key in ("train_loss", "val_loss", "fd_estimator", "epoch"):  # rank 0's report of every epoch, once
        assert [m.step for m in client.get_metric_history(final.info.run_id, key)] == [1, 2], key
    assert "final_fd_estimator" in final.data.metrics  # evaluated on the pipeline rank 0 saved
    assert final.data.tags["condface.registered_model"].startswith("models:/condface-ddpm/")
    fam = out["families"]["ddpm"]["final"]
    assert "final-train" in fam["pipeline_dir"]  # Ray Train's checkpoint, passed on through the trial


def test_a_killed_data_parallel_final_run_resumes_from_ray_trains_checkpoint(tmp_path, data, home):
    """The driver (and its Ray runtime) dies after the data-parallel final run's first epoch: `--resume` starts the
    trainer again under the same name, Ray Train restores that epoch's checkpoint, and epoch 1 is not trained again."""
    import re
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.test_orchestration_sweep import _kill_tree

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = [sys.executable, "-m", "orchestration.sweep", "--preset", "smoke", "--data", data, "--final-epochs", "3",
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
    assert re.search(r"^final:\S+ epoch 3:", text, re.M)
    client = client_for(uri)
    exp = client.get_experiment_by_name("condface-ddpm-smoke")
    (final,) = client.search_runs([exp.experiment_id], filter_string="tags.`condface.phase` = 'final'")
    assert final.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(final.info.run_id, "train_loss")] == [1, 2, 3]
