"""The GPU-only code paths, checked on the CPU: a faked CUDA capability for the precision policy, CUDA RNG states
restored onto fewer visible GPUs, and the resource plan of a GPU cluster given as node dicts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.checkpoint import rng_state, set_rng_state
from models.runtime import autocast_dtype, use_bf16
from orchestration.config import STUDY
from orchestration.errors import SweepError
from orchestration.resources import final_worker_resources, loader_workers, plan_resources


@pytest.mark.parametrize(("capability", "native"), [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
@pytest.mark.parametrize("workload", ["train", "sample", "estimator"])
def test_auto_precision_picks_bf16_only_on_gpus_with_native_bf16(monkeypatch, capability, native, workload):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    assert use_bf16("auto", "cuda", workload) is native  # V100 (7.0) and T4 (7.5) only emulate bf16
    assert autocast_dtype("auto", "cuda:0", workload) == (torch.bfloat16 if native else None)
    assert use_bf16("bf16", "cuda", workload) and not use_bf16("no", "cuda", workload)  # explicit choices stand
    assert asked and all(torch.device(d).type == "cuda" for d in asked)


@pytest.fixture
def two_visible_gpus(monkeypatch):
    """A process that sees 2 GPUs: torch.cuda's RNG calls recorded; an ordinal it does not see fails like CUDA's.
    Yields (the states restored by device index, this process's CPU generators' states)."""
    restored: dict[int, torch.Tensor] = {}
    cpu_states = rng_state()

    def set_state(state, device="cuda"):
        index = torch.device(device).index if not isinstance(device, int) else device
        index = 0 if index is None else index
        if index >= 2:
            raise RuntimeError("CUDA error: invalid device ordinal")
        restored[index] = state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda.random, "device_count", lambda: 2)
    return restored, cpu_states


def test_cuda_rng_states_of_more_gpus_than_visible_restore_the_visible_ones(two_visible_gpus):
    restored, cpu_states = two_visible_gpus
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]  # saved by a run that saw 4 GPUs
    set_rng_state({**cpu_states, "cuda": saved})
    assert sorted(restored) == [0, 1]
    assert all(torch.equal(restored[i], saved[i]) for i in (0, 1))
    restored.clear()
    set_rng_state({**cpu_states, "cuda": saved[:1]})  # saved by a run that saw 1 GPU: the second keeps its state
    assert list(restored) == [0]


def test_a_cpu_only_run_ignores_the_saved_cuda_rng_states():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CPU-only case cannot be seen here")
    torch.manual_seed(11)
    state = {**rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)] * 3}
    expected = torch.rand(4)
    set_rng_state(state)
    assert torch.equal(torch.rand(4), expected)


GPU_NODE = {"cpu": 16.0, "gpu": 2.0}


def test_a_gpu_trial_gets_its_nodes_cpus_per_gpu_and_loads_with_workers():
    plan = plan_resources(STUDY, (GPU_NODE, {"cpu": 12.0, "gpu": 1.0}))
    assert plan.grid == {"cpu": 8.0, "gpu": 1.0} == plan.lone  # the leaner node's share: 16 CPUs / 2 GPUs
    half = plan_resources(dataclasses.replace(STUDY, gpus_per_trial=0.5), (GPU_NODE,))
    assert half.grid == {"cpu": 4.0, "gpu": 0.5}
    assert plan_resources(dataclasses.replace(STUDY, cpus_per_trial=2.0), (GPU_NODE,)).grid["cpu"] == 2.0
    assert plan_resources(STUDY, ({"cpu": 16.0, "gpu": 0.0},)).grid == {"cpu": 1.0, "gpu": 0.0}
    assert loader_workers({"CPU": 8.0, "GPU": 1.0}) == 7 and loader_workers({"CPU": 1.0, "GPU": 1.0}) == 1
    assert loader_workers({"CPU": 8.0}) == 0  # a CPU trial computes on its CPUs itself


def test_the_data_parallel_final_run_counts_the_evaluation_actors_gpus():
    two_workers = dataclasses.replace(STUDY, final_workers=2)
    fits = plan_resources(two_workers, (GPU_NODE, GPU_NODE))
    assert final_worker_resources(dataclasses.replace(two_workers, gpus_per_eval_actor=0.5), fits)["GPU"] == 1.0
    crowded = dataclasses.replace(two_workers, gpus_per_eval_actor=0.5, eval_actors=1)
    plan = plan_resources(crowded, (GPU_NODE,))  # a trial (1 GPU) and the actor (0.5) fit 2 GPUs ...
    with pytest.raises(SweepError, match=r"--final-workers 2 .* need 3 GPUs but the cluster has 2"):
        final_worker_resources(crowded, plan)  # ... two whole-GPU workers and the actor do not
    three_quarters = dataclasses.replace(two_workers, gpus_per_eval_actor=0.25, eval_actors=5)  # 4 share a GPU
    with pytest.raises(SweepError, match="need 4 GPUs but the cluster has 3"):
        final_worker_resources(three_quarters, plan_resources(three_quarters, (GPU_NODE, {"cpu": 8.0, "gpu": 1.0})))
