"""A phase whose driver died right after its Tuner was made (no trial saved yet) is restored with its own
param_space, not an empty one (the final phase of a resumed sweep once failed this way)."""

from __future__ import annotations

import pytest
from ray import tune
from ray.tune import RunConfig, Tuner

from orchestration.phases.tune import run_phase

pytestmark = pytest.mark.slow  # a Ray runtime


def report_grad_accum(config, ctx):
    tune.report({"grad_accum": config["grad_accum"], "ctx": ctx})


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
