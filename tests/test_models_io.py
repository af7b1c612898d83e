"""data.io, the atomic-write and lock helpers the models layer writes its files with."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from data.io import atomic_dir, atomic_write_bytes, atomic_write_text, file_lock


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "sub" / "a.json"
    assert atomic_write_text(target, "one") == target
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_atomic_write_that_fails_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_dir_creates_replaces_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.") and not out.exists()
        (tmp / "f").write_text("1")
    assert (out / "f").read_text() == "1"
    with atomic_dir(out) as tmp:  # an existing folder is replaced whole
        (tmp / "g").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["g"]
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(out) as tmp:
        (tmp / "h").write_text("3")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["g"]  # untouched by the failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def _hold(lock_path: str, seconds: float, ready) -> None:
    with file_lock(lock_path):
        ready.set()
        time.sleep(seconds)


def test_file_lock_makes_another_process_wait(tmp_path, capsys):
    lock = tmp_path / ".x.lock"
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(lock), 1.0, ready))
    holder.start()
    try:
        assert ready.wait(60)
        start = time.perf_counter()
        with file_lock(lock, wait_message="waiting for x"):
            waited = time.perf_counter() - start
    finally:
        holder.join(60)
    assert waited > 0.3
    assert "waiting for x" in capsys.readouterr().err
    with file_lock(lock, wait_message="never printed"):  # free now: no wait, no message
        pass
    assert capsys.readouterr().err == "" and lock.exists()
