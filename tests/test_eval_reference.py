"""Reference rows: the untrained model and the real images, scored by the same code."""

from __future__ import annotations

import json

import pytest

from evaluation.reference import main
from tests.eval_helpers import face_cache, random_estimator  # noqa: F401


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    cache = face_cache(root, size=16, n_train=8, n_val=24, n_test=24)
    estimator = random_estimator(root / "est")
    out = root / "rows.json"
    main(["--data", str(cache), "--samples", "12", "--estimator", str(estimator), "--model", "ddpm",
          "--model-preset", "cpu-16", "--steps", "2", "--out", str(out)])
    return json.loads(out.read_text())


def test_all_rows_are_scored_with_the_same_metrics(rows):
    assert set(rows) == {"untrained", "ground-truth", "real-held-out"}
    names = {frozenset(r["values"]) | frozenset(r["unavailable"]) for r in rows.values()}
    assert len(names) == 1
    for r in rows.values():
        assert r["counts"]["fd_estimator_n"] == 12 and r["counts"]["est_acc_n"] == 12
        assert "fid" in r["unavailable"] or "fid" in r["values"]


def test_ground_truth_is_the_floor_and_noise_is_far_from_it(rows):
    gt, held_out, untrained = (rows[k]["values"]["fd_estimator"] for k in ("ground-truth", "real-held-out", "untrained"))
    assert abs(gt) < 1e-3  # a set against itself, as in the study's table
    assert untrained > held_out > abs(gt)


def test_bad_row_name_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["--data", str(tmp_path), "--rows", "ground-truth,best"])
    assert str(err.value.code).startswith("error: ") and "best" in str(err.value.code)
