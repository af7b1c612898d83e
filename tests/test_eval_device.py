"""One device for all of evaluation: every metric's state lives on the scorer's device, and a device that
cannot be had is one line naming the fix, from the project's one resolver (models.runtime.resolve_device).

Without a GPU the second device is `meta`: the estimator, every torchmetrics state and the CLIP model
can be placed there, and a state left on the CPU shows as a mismatch (no data is computed on meta).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchmetrics import Metric

from evaluation.config import EvalConfig, eval_device
from evaluation.errors import EvalError
from evaluation.scorer import Scorer
from models.runtime import resolve_device
from tests.eval_helpers import random_estimator
from tests.test_eval_clip import faces, tiny_clip  # noqa: F401  (fixtures: a tiny local CLIP model)

META = torch.device("meta")


def torchmetrics_of(wrapper) -> list[Metric]:
    """The torchmetrics objects a metric wrapper (FrechetDistance, EstimatorAccuracy, ...) accumulates in."""
    found = []
    for value in vars(wrapper).values():
        if isinstance(value, nn.Module):
            found += [m for m in value.modules() if isinstance(m, Metric)]
    return found


@pytest.fixture(scope="module")
def estimator_dir(tmp_path_factory):
    return str(random_estimator(tmp_path_factory.mktemp("device") / "est"))


def test_every_metric_state_lives_on_the_scorer_device(estimator_dir, tiny_clip):  # noqa: F811
    scorer = Scorer(EvalConfig(estimator=estimator_dir, clip_model=str(tiny_clip), mtcnn=True, device="meta"))
    assert scorer.device == META
    assert {p.device for p in scorer.estimator.parameters()} == {META}
    assert {"fd_estimator", "est_acc", "mtcnn", "clip_score"} <= set(scorer.metric_names)
    for wrapper in scorer.metrics:
        metrics = torchmetrics_of(wrapper)
        assert metrics, f"{wrapper.name}: no torchmetrics state found"
        for metric in metrics:
            assert metric.device == META, f"{wrapper.name}: {type(metric).__name__} on {metric.device}"
            for name, value in metric.metric_state.items():
                assert value.device == META, f"{wrapper.name}: state {name} on {value.device}, scorer on meta"


def test_the_scorer_takes_auto_from_the_one_resolver(estimator_dir):
    assert Scorer(EvalConfig(estimator=estimator_dir, mtcnn=False)).device == resolve_device("auto")


def test_eval_device_turns_the_resolvers_config_error_into_one_line_eval_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert eval_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert eval_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:1", "tpu-please"):
        with pytest.raises(EvalError) as err:
            eval_device(name)
        assert "\n" not in str(err.value) and "cpu" in str(err.value)  # one line, naming the fix


def test_a_cuda_scorer_without_a_gpu_is_an_eval_error(estimator_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EvalError, match="no CUDA GPU is visible"):
        Scorer(EvalConfig(estimator=estimator_dir, mtcnn=False, device="cuda"))


@pytest.mark.parametrize("module", ["evaluation.reference", "evaluation.bench", "evaluation.train_estimator"])
def test_clis_reject_an_unavailable_device_in_one_line_before_touching_data(module, tmp_path, monkeypatch):
    import importlib

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--data", str(tmp_path / "no-such-cache"), "--device", "cuda"]
    if module.endswith("train_estimator"):
        argv += ["--out", str(tmp_path / "est")]
    with pytest.raises(SystemExit) as err:
        importlib.import_module(module).main(argv)
    message = str(err.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "no CUDA GPU is visible" in message  # the device, not the missing data, is reported first
    assert not (tmp_path / "est").exists()
