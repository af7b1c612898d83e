"""Paired conditions: the real half of FID has exactly the conditions that are generated."""

from __future__ import annotations

import numpy as np
import pytest

from data.cache import FaceCache
from evaluation.conditions import paired_conditions
from evaluation.errors import EvalError
from tests.eval_helpers import face_cache  # noqa: F401


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return FaceCache.open(face_cache(tmp_path_factory.mktemp("cond"), n_train=8, n_val=60, n_test=8))


def test_paired_rows_share_levels_captions_and_images(cache):
    paired = paired_conditions(cache, 25, split="val", seed=3)
    assert len(set(paired.indices.tolist())) == 25
    assert set(paired.indices.tolist()) <= set(cache.indices("val").tolist())
    np.testing.assert_array_equal(cache.levels[paired.real_indices], paired.levels)
    assert [cache.captions[i] for i in paired.real_indices] == paired.captions
    np.testing.assert_array_equal(paired.real_images, cache.images[paired.indices])


def test_batches_stream_the_same_set_in_order(cache):
    paired = paired_conditions(cache, 25, seed=1)
    chunks = list(paired.batches(10))
    assert [len(c[0]) for c in chunks] == [10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), paired.levels)
    assert sum((c[1] for c in chunks), []) == paired.captions
    np.testing.assert_array_equal(np.concatenate([c[2] for c in chunks]), paired.real_images)


def test_draw_is_seeded(cache):
    a, b, c = (paired_conditions(cache, 20, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)


def test_unpaired_real_half_is_an_independent_draw(cache):
    paired = paired_conditions(cache, 30, seed=2, protocol="paired")
    unpaired = paired_conditions(cache, 30, seed=2, protocol="unpaired")
    np.testing.assert_array_equal(paired.indices, unpaired.indices)  # same conditions are generated
    assert not np.array_equal(unpaired.real_indices, unpaired.indices)
    assert set(unpaired.real_indices.tolist()) <= set(cache.indices("val").tolist())


@pytest.mark.parametrize("n,protocol", [(61, "paired"), (0, "paired"), (5, "random")])
def test_bad_requests_are_one_line_errors(cache, n, protocol):
    with pytest.raises(EvalError) as err:
        paired_conditions(cache, n, protocol=protocol)
    assert "\n" not in str(err.value)


def test_condition_images_are_the_rows_asked_for(cache):
    unpaired = paired_conditions(cache, 30, seed=2, protocol="unpaired")
    own = np.concatenate(list(unpaired.condition_images(8)))
    np.testing.assert_array_equal(own, cache.images[unpaired.indices])
