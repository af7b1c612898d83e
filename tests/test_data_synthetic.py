"""The embedded synthetic faces: levels, drawing, captions, the toy cache and the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import synthetic
from data.cache import FaceCache
from data.errors import DataError
from data.schema import ATTRIBUTES, NUM_LEVELS
from data.synthetic import draw_faces, face_rng, sample_levels, save_grid, toy_cache
from data.synthetic_captions import LEVEL_PHRASES
from data.synthetic_draw import draw_range, render_face, sample_look

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("distribution", ["uniform", "skewed"])
def test_every_level_of_every_attribute_occurs(distribution):
    levels = sample_levels(3000, np.random.default_rng(0), distribution)
    assert levels.shape == (3000, 5) and levels.dtype == np.int64
    for a, attr in enumerate(ATTRIBUTES):
        counts = np.bincount(levels[:, a], minlength=NUM_LEVELS)
        assert len(counts) == NUM_LEVELS and (counts > 0).all(), (attr, counts)


def test_skewed_levels_favour_level_zero_and_uniform_does_not():
    skewed = sample_levels(6000, np.random.default_rng(1), "skewed")
    uniform = sample_levels(6000, np.random.default_rng(1), "uniform")
    for a, attr in enumerate(ATTRIBUTES):
        share = np.bincount(skewed[:, a], minlength=NUM_LEVELS) / len(skewed)
        assert share.argmax() == 0, (attr, share)
        if attr in ("bangs", "eyeglasses", "beard"):
            assert 0.5 < share[0] < 0.75, (attr, share)
        assert np.abs(np.bincount(uniform[:, a], minlength=NUM_LEVELS) / len(uniform) - 1 / NUM_LEVELS).max() < 0.03
    # smiling and age are less skewed than bangs/eyeglasses/beard
    zero = (skewed == 0).mean(0)
    assert zero[3] < zero[:3].min() and zero[4] < zero[:3].min()


def test_sample_levels_rejects_unknown_distribution():
    with pytest.raises(DataError, match="unknown level distribution"):
        sample_levels(3, np.random.default_rng(0), "normal")


def test_drawing_is_deterministic_by_seed():
    levels = sample_levels(12, np.random.default_rng(2), "uniform")
    a, caps_a = draw_faces(levels, 16, seed=3)
    b, caps_b = draw_faces(levels, 16, seed=3)
    c, _ = draw_faces(levels, 16, seed=4)
    assert a.tobytes() == b.tobytes() and caps_a == caps_b
    assert a.tobytes() != c.tobytes()
    assert all(not np.array_equal(x, y) for x, y in zip(a, c))


def test_worker_processes_and_chunks_give_the_same_faces(monkeypatch):
    levels = sample_levels(24, np.random.default_rng(3), "uniform")
    serial, caps = draw_faces(levels, 16, seed=5, workers=1)
    monkeypatch.setattr(synthetic, "_CHUNK", 5)
    monkeypatch.setattr(synthetic, "_PARALLEL_FROM", 0)
    parallel, caps_p = draw_faces(levels, 16, seed=5, workers=2)
    assert parallel.tobytes() == serial.tobytes() and caps_p == caps
    # face i depends only on (seed, i) and its levels
    part, _ = draw_range(levels[7:11], 16, 5, start=7)
    assert part.tobytes() == serial[7:11].tobytes()


@pytest.mark.parametrize("size", [16, 32, 64])
def test_shapes_and_dtypes(size):
    levels = sample_levels(6, np.random.default_rng(size), "uniform")
    images, captions = draw_faces(levels, size, seed=0)
    assert images.shape == (6, size, size, 3) and images.dtype == np.uint8
    assert len(captions) == 6 and all(isinstance(c, str) and c for c in captions)
    assert images.std() > 10  # a drawing, not a blank canvas


def test_bad_levels_and_sizes_are_rejected():
    with pytest.raises(ValueError, match="0..5"):
        draw_faces(np.array([[0, 0, 6, 0, 0]]), 16, seed=0)
    with pytest.raises(ValueError, match="shape"):
        draw_faces(np.zeros((2, 4), np.int64), 16, seed=0)
    with pytest.raises(DataError, match="image size"):
        draw_faces(np.zeros((2, 5), np.int64), 7, seed=0)


@pytest.mark.parametrize("size", [16, 64])
@pytest.mark.parametrize("attr", ATTRIBUTES)
def test_each_level_changes_the_face_with_everything_else_fixed(attr, size):
    a = ATTRIBUTES.index(attr)
    for person in range(3):
        look = sample_look(face_rng(person, a), beard_level=1)  # a man, so the beard row can show
        faces = []
        for level in range(NUM_LEVELS):
            levels = np.array([0, 0, 0, 0, 1])
            levels[a] = level
            faces.append(render_face(levels, look, size).astype(np.float64))
        for i in range(NUM_LEVELS):
            for j in range(i + 1, NUM_LEVELS):
                assert np.abs(faces[i] - faces[j]).mean() > 0.1, (attr, person, i, j)
        if size == 64:  # neighbouring levels differ in a visible patch, not in a few stray pixels
            for i in range(NUM_LEVELS - 1):
                changed = (np.abs(faces[i] - faces[i + 1]).max(-1) > 20).sum()
                assert changed >= 10, (attr, person, i, changed)


def test_captions_state_each_level_and_the_gender():
    levels = sample_levels(60, np.random.default_rng(4), "uniform")
    _, captions = draw_faces(levels, 16, seed=9)
    for i, (lv, text) in enumerate(zip(levels, captions)):
        for a, attr in enumerate(ATTRIBUTES):
            phrases = LEVEL_PHRASES[attr]
            assert phrases[lv[a]] in text, (attr, lv[a], text)
            others = [p for k, p in enumerate(phrases) if k != lv[a] and p not in phrases[lv[a]]]
            assert not any(p in text for p in others), (attr, lv[a], text)
        male = sample_look(face_rng(9, i), int(lv[2])).male
        he, she = re.search(r"\b(He|his|man|boy)\b", text), re.search(r"\b(She|her|woman|girl|lady)\b", text)
        assert (bool(he), bool(she)) == (male, not male), text
        if lv[2] > 0:
            assert male, "a beard makes the face a man's"


def test_toy_cache_round_trip_and_reuse(tmp_path, monkeypatch):
    path = toy_cache(size=16, n_train=40, n_val=10, n_test=8, seed=1, root=tmp_path, progress=False)
    assert path.parent == tmp_path and "16px" in path.name and "seed1" in path.name
    cache = FaceCache.open(path)
    assert len(cache) == 58 and cache.size == 16
    assert cache.manifest["counts"] == {"train": 40, "val": 10, "test": 8}
    assert [len(cache.indices(s)) for s in ("train", "val", "test")] == [40, 10, 8]
    source = cache.manifest["source"]
    assert source["kind"] == "synthetic" and source["seed"] == 1 and source["distribution"] == "skewed"
    assert cache.names[0] == "synthetic_000001.png" and cache.names[-1] == "synthetic_000058.png"
    images, captions = draw_faces(cache.levels, 16, seed=1)
    assert np.array_equal(np.asarray(cache.images), images) and cache.captions == captions
    assert not list(tmp_path.glob(".*partial*"))

    mtime = (path / "images.npy").stat().st_mtime_ns

    def no_redraw(*args, **kwargs):
        raise AssertionError("toy_cache redrew an existing cache")

    monkeypatch.setattr(synthetic, "write_synthetic_cache", no_redraw)
    assert toy_cache(size=16, n_train=40, n_val=10, n_test=8, seed=1, root=tmp_path) == path
    assert (path / "images.npy").stat().st_mtime_ns == mtime
    other = tmp_path / "elsewhere"
    with pytest.raises(AssertionError, match="redrew"):  # different parameters -> a different cache
        toy_cache(size=16, n_train=40, n_val=10, n_test=8, seed=2, root=other)


def test_toy_cache_default_root_follows_condface_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDFACE_HOME", str(tmp_path))
    path = toy_cache(size=16, n_train=6, n_val=2, n_test=2, seed=0, distribution="uniform", progress=False)
    assert path.parent == tmp_path / "toy" and "uniform" in path.name
    assert FaceCache.open(path).manifest["source"]["distribution"] == "uniform"


def test_concurrent_toy_cache_calls_draw_once(tmp_path, monkeypatch):
    calls = []
    real = synthetic.write_synthetic_cache

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "write_synthetic_cache", counted)
    results, errors = [], []

    def call():
        try:
            results.append(toy_cache(size=16, n_train=30, n_val=4, n_test=4, seed=7, root=tmp_path, progress=False))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1 and len(set(results)) == 1
    assert len(FaceCache.open(results[0])) == 38


def test_writer_that_loses_the_race_uses_the_winners_cache(tmp_path, monkeypatch):
    real = synthetic.write_synthetic_cache

    def other_process_wins(out, *args, **kwargs):
        real(out, *args, **kwargs)  # the winner finishes first ...
        return real(out, *args, **kwargs)  # ... so this writer finds the output already there

    monkeypatch.setattr(synthetic, "write_synthetic_cache", other_process_wins)
    path = toy_cache(size=16, n_train=12, n_val=2, n_test=2, seed=3, root=tmp_path, progress=False)
    assert len(FaceCache.open(path)) == 16
    assert not list(tmp_path.glob(".*partial*"))


def test_cli_writes_a_cache_and_a_grid(tmp_path, capsys):
    out, grid = tmp_path / "toy16", tmp_path / "grid.png"
    synthetic.main(["--out", str(out), "--size", "16", "--n-train", "20", "--n-val", "5", "--n-test", "5",
                    "--seed", "2", "--uniform", "--grid", str(grid)])
    printed = capsys.readouterr().out
    assert "train 20, val 5, test 5" in printed and "uniform" in printed
    cache = FaceCache.open(out)
    assert len(cache) == 30 and cache.manifest["source"]["distribution"] == "uniform"
    assert cache.manifest["source"]["seed"] == 2
    with Image.open(grid) as img:
        assert img.mode == "RGB" and img.width > 6 * 128 and img.height > 5 * 128
    with pytest.raises(SystemExit) as exc:  # never overwrites
        synthetic.main(["--out", str(out), "--size", "16", "--n-train", "20"])
    assert str(exc.value.code).startswith("error:") and "already exists" in str(exc.value.code)


@pytest.mark.parametrize("args, message", [
    (["--size", "7"], "image size"),
    (["--n-train", "-5"], "--n-train must be >= 0"),
    (["--n-val", "-1"], "--n-val must be >= 0"),
    (["--n-train", "0"], "train faces must be >= 1"),
    (["--seed", "-3"], "seed"),
])
def test_cli_bad_arguments_give_one_line_errors(tmp_path, args, message):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--out", str(out), *args])
    text = str(exc.value.code)
    assert text.startswith("error:") and message in text and "\n" not in text
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_exit_status():
    bad = subprocess.run([sys.executable, "-m", "data.synthetic", "--size", "7", "--out", "x"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("error:")


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--help"])
    helped = capsys.readouterr().out
    assert exc.value.code == 0 and "--uniform" in helped and "--grid" in helped and "--n-train" in helped


def test_save_grid_is_a_labelled_png(tmp_path):
    path = save_grid(tmp_path / "g.png", size=16, seed=1)
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    assert arr.shape[1] > 6 * 128 and arr.shape[0] > 5 * 128
    left_margin = arr[:, :100]
    assert (left_margin < 100).any()  # attribute names are written in the margin


def test_cli_without_out_fills_and_then_reuses_the_toy_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONDFACE_HOME", str(tmp_path))
    args = ["--size", "16", "--n-train", "10", "--n-val", "2", "--n-test", "2", "--seed", "4"]
    synthetic.main(args)
    first = capsys.readouterr().out
    synthetic.main(args)
    second = capsys.readouterr().out
    assert "drawn in" in first and "already cached" in second
    (path,) = [p for p in (tmp_path / "toy").iterdir() if p.is_dir()]
    assert str(path) in second and len(FaceCache.open(path)) == 14


def test_failed_drawing_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def fail_on_second_chunk(levels, size, seed, start):
        calls.append(start)
        if len(calls) == 2:
            raise RuntimeError("drawing failed")
        return draw_range(levels, size, seed, start)

    monkeypatch.setattr(synthetic, "_CHUNK", 5)
    monkeypatch.setattr(synthetic, "draw_range", fail_on_second_chunk)
    with pytest.raises(RuntimeError, match="drawing failed"):
        synthetic.write_synthetic_cache(tmp_path / "c", size=16, n_train=12, n_val=0, n_test=0, workers=1,
                                        progress=False)
    assert not list(tmp_path.iterdir())


def test_a_damaged_toy_cache_is_reported_not_overwritten(tmp_path):
    base, name = synthetic.toy_cache_path(size=16, n_train=4, n_val=0, n_test=0, seed=0, root=tmp_path)
    (base / name).mkdir(parents=True)
    (base / name / "images.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match="delete"):
        toy_cache(size=16, n_train=4, n_val=0, n_test=0, seed=0, root=tmp_path, progress=False)
    assert (base / name / "images.npy").read_bytes() == b"junk"
