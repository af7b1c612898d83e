"""The Ray evaluator pool gives the same result as scoring in-process."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from data.cache import FaceCache
from evaluation.actors import EvaluatorPool
from evaluation.config import EvalConfig
from evaluation.scorer import Scorer
from tests.eval_helpers import face_cache, random_estimator  # noqa: F401

pytestmark = pytest.mark.slow  # a Ray runtime


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def test_pool_equals_in_process(tmp_path_factory, local_ray):
    root = tmp_path_factory.mktemp("actors")
    cache = FaceCache.open(face_cache(root, n_train=8, n_val=30, n_test=8))
    config = EvalConfig(estimator=str(random_estimator(root / "est")), device="cpu")
    val = cache.indices("val")
    images, levels = np.asarray(cache.images[val]), cache.levels[val]
    real = images[::-1].copy()

    pool = EvaluatorPool(config, num_actors=2)
    try:
        pooled = pool.score(images, levels, None, real)
        again = pool.compute(Scorer.merge([pool.update(images[:13], levels[:13], None, real[:13]),
                                           pool.update(images[13:], levels[13:], None, real[13:])]))
    finally:
        pool.shutdown()
    local = Scorer(config).score(images, levels, None, real)

    assert set(pooled.values) == set(local.values) >= {"fd_estimator", "mtcnn", "est_acc", "est_acc_balanced"}
    for result in (pooled, again):
        for k, v in local.values.items():
            assert result.values[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
        assert result.counts == local.counts
        assert result.unavailable == local.unavailable
