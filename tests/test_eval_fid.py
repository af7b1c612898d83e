"""Frechet distances: ~0 for a set against itself, growing with a shift; FID unavailable without Inception."""

from __future__ import annotations

import numpy as np
import pytest

from data.cache import FaceCache
from evaluation.config import EvalConfig
from evaluation.metrics.fid import find_inception
from evaluation.scorer import Scorer
from tests.eval_helpers import face_cache, random_estimator  # noqa: F401


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    cache = FaceCache.open(face_cache(root, n_train=8, n_val=64, n_test=8))
    scorer = Scorer(EvalConfig(estimator=str(random_estimator(root / "est")), mtcnn=False, device="cpu"))
    val = cache.indices("val")
    return scorer, np.asarray(cache.images[val]), cache.levels[val]


def shifted(images: np.ndarray, amount: int) -> np.ndarray:
    return np.clip(images.astype(np.int16) + amount, 0, 255).astype(np.uint8)


def test_frechet_distance_is_zero_against_itself_and_grows_with_shift(setup):
    scorer, images, levels = setup
    same = scorer.score(images, levels, real_images=images).values["fd_estimator"]
    small = scorer.score(shifted(images, 30), levels, real_images=images).values["fd_estimator"]
    large = scorer.score(shifted(images, 90), levels, real_images=images).values["fd_estimator"]
    assert abs(same) < 1e-3 * large
    assert large > small > 10 * abs(same)


def test_sample_counts_are_recorded_with_the_value(setup):
    scorer, images, levels = setup
    result = scorer.score(images[:40], levels[:40], real_images=images[20:60])
    assert result.counts["fd_estimator_n"] == 40 and result.counts["fd_estimator_n_real"] == 40


def test_merged_partial_states_equal_the_whole(setup):
    scorer, images, levels = setup
    whole = scorer.score(shifted(images, 20), levels, real_images=images)
    parts = [scorer.update(shifted(images[a:b], 20), levels[a:b], real_images=images[a:b])
             for a, b in ((0, 7), (7, 40), (40, 64))]
    merged = scorer.compute(Scorer.merge(parts))
    assert merged.values.keys() == whole.values.keys()
    for k, v in whole.values.items():
        assert merged.values[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


def test_without_real_images_the_distance_is_unavailable_not_a_number(setup):
    scorer, images, levels = setup
    result = scorer.score(images, levels)
    assert "fd_estimator" not in result.values
    assert "no real images" in result.unavailable["fd_estimator"]


def test_inception_fid_is_unavailable_with_a_reason_when_it_cannot_run(setup, tmp_path):
    weights, reason = find_inception(str(tmp_path / "missing.pth"))
    assert weights is None and reason
    scorer, images, levels = setup
    result = Scorer(EvalConfig(estimator=scorer.config.estimator, inception_weights=str(tmp_path / "missing.pth"),
                               mtcnn=False, device="cpu")).score(images, levels, real_images=images)
    assert "fid" not in result.values
    assert result.unavailable["fid"]
    assert "fd_estimator" in result.values  # the stand-in is computed in its place


def test_without_an_estimator_its_metrics_are_unavailable(setup):
    _, images, levels = setup
    result = Scorer(EvalConfig(estimator=None, mtcnn=False, device="cpu")).score(images, levels, real_images=images)
    for name in ("fd_estimator", "est_acc", "est_acc_balanced"):
        assert name not in result.values and "estimator" in result.unavailable[name]
