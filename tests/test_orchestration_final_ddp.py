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
