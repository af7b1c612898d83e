"""What each piece of work asks Ray for on a GPU cluster and on two nodes, without a GPU: Ray advertises GPUs
it does not have (num_gpus=), and ray.cluster_utils.Cluster starts two real nodes on this machine."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from orchestration.config import resolve
from orchestration.errors import SweepError
from tests.test_orchestration_sweep import children, client_for, smoke

pytestmark = pytest.mark.slow  # a sweep on Ray; a two-node Ray cluster


def test_an_optuna_search_with_asha_on_a_gpu_machine_holds_the_gpu_and_samples_the_continuous_settings(tmp_path,
                                                                                                        data):
    """A one-GPU machine (advertised) and the search a user would run there: the trials and the lone final run each
    hold the GPU (with the node's CPUs for their loaders); TPE samples lr, p_uncond and the guidance scale from their
    ranges, and ASHA stops trials at epoch boundaries, every epoch they ran recorded."""
    import ray

    from orchestration.driver import run_sweep
    from orchestration.evaluate import estimator_task, in_task
    from orchestration.resources import plan_resources

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        cfg = smoke(tmp_path, data, search="optuna", num_samples=3, scheduler="asha", epochs=2)
        plan = plan_resources(cfg)
        # the lone work (final run, references, final evaluation, CFG sweep) asks for a GPU, not every CPU
        assert plan.grid == {"cpu": 2.0, "gpu": 1.0} and plan.lone == {"cpu": 2.0, "gpu": 1.0}  # CPUs per GPU
        # the attribute estimator trains in a Ray task holding the GPU, never in the driver
        trained = in_task(estimator_task, plan.lone, data_root=data, preset=cfg.estimator_preset)
        assert trained["resources"] == {"CPU": 2.0, "GPU": 1.0} and Path(trained["path"]).is_dir()
        with pytest.raises(SweepError, match="trials would wait forever"):
            plan_resources(dataclasses.replace(cfg, gpus_per_eval_actor=0.5))  # 0.5 + a 1-GPU trial > 1 GPU
        out = run_sweep(cfg, dashboard=False)
    finally:
        ray.shutdown()
    client = client_for(cfg.tracking_uri)
    assert client.get_run(out["parent_run_id"]).info.status == "FINISHED"
    runs = children(client, out["parent_run_id"])
    grid = [r for r in runs if r.data.tags["condface.phase"] == "grid"]
    assert len(grid) == 3 and all(r.info.status == "FINISHED" for r in grid)
    assert len(out["families"]["ddpm"]["grid"]["records"]) == 3
    lrs = set()
    for run in grid:
        params = run.data.params
        lr, p_uncond, guidance = (float(params[k]) for k in ("trial.lr", "trial.p_uncond", "trial.guidance_scale"))
        assert cfg.lr_range[0] <= lr <= cfg.lr_range[1] and float(params["train.lr"]) == lr
        assert cfg.p_uncond_range[0] <= p_uncond <= cfg.p_uncond_range[1]
        assert cfg.guidance_range[0] <= guidance <= cfg.guidance_range[1]
        lrs.add(lr)
        # ASHA may stop a trial after its grace epoch, never before; every epoch it ran is recorded
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert steps in ([1], [1, 2]), steps
    assert len(lrs) == 3  # TPE really sampled the continuous axis
    (final,) = [r for r in runs if r.data.tags["condface.phase"] == "final"]
    for run in [*grid, final]:  # each trial and the final run held the (advertised) GPU Ray gave it
        assert json.loads(run.data.tags["condface.resources"]).get("GPU") == 1.0, run.data.tags
        assert run.data.tags["condface.gpu_ids"] != ""
        # its loader's worker processes on the CPUs beside the GPU (2 CPUs per GPU: 1), recorded as placement
        assert run.data.tags["condface.loader_workers"] == "1" and "train.num_workers" not in run.data.params


def test_the_plan_is_checked_against_two_real_nodes(data, monkeypatch):
    """Also: the sweep's workers on a cluster's nodes get the driver's OpenMP spin count through the runtime env,
    whatever the nodes were started with."""
    import signal

    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from orchestration.driver import start_ray
    from orchestration.resources import plan_resources

    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")  # what the nodes inherit
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    node = cluster.add_node(num_cpus=2)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        cluster.wait_for_nodes()
        cfg = resolve("smoke", data=data)
        monkeypatch.setenv("GOMP_SPINCOUNT", "1000")  # the driver's
        start_ray(dataclasses.replace(cfg, address=cluster.address), dashboard=False)
        on_node = ray.remote(lambda: os.environ.get("GOMP_SPINCOUNT")).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False))
        assert ray.get(on_node.remote()) == "1000"
        plan = plan_resources(cfg)
        assert len(plan.nodes) == 2
        assert plan.lone == {"cpu": 2.0, "gpu": 0.0}  # one node's CPUs: the cluster's 4 would never be scheduled
        with pytest.raises(SweepError, match="no node has that much"):
            plan_resources(dataclasses.replace(cfg, cpus_per_trial=3.0))  # 3 CPUs exist only across nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
        signal.signal(signal.SIGTERM, sigterm)
