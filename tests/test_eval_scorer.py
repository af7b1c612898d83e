"""The scorer: estimator accuracy figures, merged states, input checks, unavailable metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.cache import FaceCache
from data.schema import ATTRIBUTES
from evaluation.config import EvalConfig
from evaluation.errors import EvalError
from evaluation.estimator import AttributeEstimator
from evaluation.metrics.accuracy import accuracies
from evaluation.scorer import Scorer
from tests.eval_helpers import face_cache, random_estimator  # noqa: F401


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorer")
    cache = FaceCache.open(face_cache(root, n_train=8, n_val=40, n_test=8))
    estimator = random_estimator(root / "est", seed=1)
    val = cache.indices("val")
    return EvalConfig(estimator=str(estimator), device="cpu"), np.asarray(cache.images[val]), cache.levels[val]


def test_balanced_accuracy_ignores_levels_never_asked_for():
    # rows = requested level, columns = estimated level; level 2 is never requested but sometimes estimated
    confmat = torch.zeros(6, 6, dtype=torch.long)
    confmat[0, 0], confmat[0, 2] = 8, 2  # level 0: 8 of 10 right
    confmat[1, 1], confmat[1, 0] = 1, 1  # level 1: 1 of 2 right
    accuracy, balanced = accuracies(confmat)
    assert accuracy == pytest.approx(9 / 12)
    assert balanced == pytest.approx((0.8 + 0.5) / 2)


def test_estimator_accuracy_matches_its_predictions(setup):
    config, images, levels = setup
    result = Scorer(config.replace(mtcnn=False)).score(images, levels)
    estimator = AttributeEstimator.load(config.estimator)
    predicted = estimator.predict(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    for i, attr in enumerate(ATTRIBUTES):
        assert result.values[f"est_acc_{attr}"] == pytest.approx(float(np.mean(predicted[:, i] == levels[:, i])))
    assert result.values["est_acc"] == pytest.approx(float(np.mean(predicted == levels)))
    assert result.counts["est_acc_n"] == len(images)
    # the confusion matrices behind the figures (rows: level asked for, columns: level read), cell by cell
    confusion = result.tables["est_confusion"]
    assert list(confusion) == list(ATTRIBUTES)
    for i, attr in enumerate(ATTRIBUTES):
        expected = np.zeros((6, 6), dtype=int)
        np.add.at(expected, (levels[:, i], predicted[:, i]), 1)
        assert np.array_equal(np.array(confusion[attr]), expected), attr


def test_every_metric_merges_over_uneven_parts(setup):
    config, images, levels = setup
    scorer = Scorer(config.replace(batch_size=16))
    captions = [f"face {i}" for i in range(len(images))]
    whole = scorer.score(images, levels, captions, images[::-1].copy())
    parts = [scorer.update(images[a:b], levels[a:b], captions[a:b], images[::-1][a:b].copy())
             for a, b in ((0, 5), (5, 29), (29, 40))]
    merged = scorer.compute(Scorer.merge(parts))
    assert set(whole.values) == {"fd_estimator", "mtcnn", "est_acc", "est_acc_balanced",
                                 *(f"est_acc_{a}" for a in ATTRIBUTES)}
    for k, v in whole.values.items():
        assert merged.values[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    assert merged.counts == whole.counts
    assert merged.tables == whole.tables and whole.tables["est_confusion"]
    assert merged.unavailable == whole.unavailable
    assert set(whole.unavailable) == {"fid", "clip_score"}


@pytest.mark.parametrize("bad", ["float_images", "levels_shape", "captions", "real_count", "level_range"])
def test_bad_inputs_are_one_line_errors(setup, bad):
    config, images, levels = setup
    scorer = Scorer(config.replace(mtcnn=False))
    kwargs = dict(images=images[:4], levels=levels[:4], captions=None, real_images=None)
    if bad == "float_images":
        kwargs["images"] = images[:4].astype(np.float32)
    elif bad == "levels_shape":
        kwargs["levels"] = levels[:3]
    elif bad == "captions":
        kwargs["captions"] = ["one caption"]
    elif bad == "real_count":
        kwargs["real_images"] = images[:2]
    else:
        kwargs["levels"] = levels[:4] + 6
    with pytest.raises((EvalError, ValueError)) as err:
        scorer.update(**kwargs)
    assert "\n" not in str(err.value)


def test_missing_estimator_directory_names_the_fix(tmp_path):
    with pytest.raises(EvalError, match="evaluation.train_estimator"):
        Scorer(EvalConfig(estimator=str(tmp_path / "nowhere"), device="cpu"))
