"""The embedded synthetic face dataset: drawn faces with known levels, no download.

    python -m data.synthetic --out DIR [--size 64] [--n-train N --n-val N --n-test N] [--seed S] [--uniform]
                             [--grid PNG]

Without --out the default toy cache (the one `toy_cache()` uses) is written, or reused if present.
Faces are deterministic by seed: face i depends only on (seed, i) and its levels, so the result does
not depend on how many processes drew it.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.cache import SPLITS, CacheWriter, FaceCache
from data.catalogue import condface_home
from data.errors import DataError
from data.io import atomic_write_bytes, file_lock
from data.schema import ATTRIBUTES, NUM_ATTRIBUTES, NUM_LEVELS, check_levels
from data.synthetic_captions import LEVEL_LABELS
from data.synthetic_draw import draw_range, face_rng, render_face, sample_look

GENERATOR_VERSION = 1  # bump when drawing changes, so old cached toy sets are not reused
MIN_SIZE, MAX_SIZE = 16, 512
_CHUNK = 1000  # faces per worker task
_PARALLEL_FROM = 3000  # below this, one process is faster than starting workers

# Level frequencies (index = level) in CelebA-Dialog's spirit: level 0 is the most common of every
# attribute; bangs, eyeglasses and beard are heavily skewed, smiling and age less so.
SKEWED_LEVEL_PROBS: dict[str, tuple[float, ...]] = {
    "bangs": (0.64, 0.09, 0.07, 0.07, 0.07, 0.06),
    "eyeglasses": (0.68, 0.05, 0.08, 0.08, 0.06, 0.05),
    "beard": (0.60, 0.11, 0.09, 0.08, 0.07, 0.05),
    "smiling": (0.34, 0.20, 0.17, 0.13, 0.10, 0.06),
    "age": (0.32, 0.25, 0.17, 0.12, 0.09, 0.05),
}
DISTRIBUTIONS = ("skewed", "uniform")


def sample_levels(n: int, rng: np.random.Generator, distribution: str = "skewed") -> np.ndarray:
    """(n, 5) int64 attribute levels, each attribute drawn independently."""
    if distribution not in DISTRIBUTIONS:
        raise DataError(f"unknown level distribution {distribution!r}: use one of {', '.join(DISTRIBUTIONS)}")
    if n < 0:
        raise DataError(f"number of faces must be >= 0, got {n}")
    if distribution == "uniform":
        return rng.integers(0, NUM_LEVELS, size=(n, NUM_ATTRIBUTES), dtype=np.int64)
    cols = [rng.choice(NUM_LEVELS, size=n, p=SKEWED_LEVEL_PROBS[a]) for a in ATTRIBUTES]
    return np.stack(cols, 1).astype(np.int64).reshape(n, NUM_ATTRIBUTES)


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise DataError(f"image size must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}: pick e.g. 16, 32 or 64")


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def iter_faces(levels: np.ndarray, size: int, seed: int, workers: int | None = None):
    """Validate, then yield (start, images, captions) chunks in order; big sets use several processes."""
    levels = np.asarray(levels)
    check_levels(levels)
    if levels.ndim != 2:
        raise ValueError(f"levels must have shape (N, {NUM_ATTRIBUTES}), got {levels.shape}")
    _check_size(size)
    _check_seed(seed)
    workers = min(_cpu_count(), 8) if workers is None else max(1, workers)
    return _chunks(levels, size, seed, workers)


def _chunks(levels: np.ndarray, size: int, seed: int, workers: int):
    starts = range(0, len(levels), _CHUNK)
    if workers == 1 or len(levels) < _PARALLEL_FROM:
        for s in starts:
            yield (s, *draw_range(levels[s:s + _CHUNK], size, seed, s))
        return
    # spawn, not fork: callers may be Ray workers or hold torch/OpenCV thread pools that fork would copy broken.
    # (As with any spawned pool, the caller's main module must be import-safe.)
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
    try:
        futures = [pool.submit(draw_range, levels[s:s + _CHUNK], size, seed, s) for s in starts]
        for s, fut in zip(starts, futures):
            yield (s, *fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def draw_faces(levels: np.ndarray, size: int, seed: int, *, workers: int | None = None,
               progress: bool = False) -> tuple[np.ndarray, list[str]]:
    """Draw one face per row of `levels` (N, 5): uint8 (N, size, size, 3) RGB images and their captions."""
    chunks = iter_faces(levels, size, seed, workers)
    images = np.empty((len(levels), size, size, 3), np.uint8)
    captions: list[str] = []
    with tqdm(total=len(levels), desc="drawing faces", unit="face", disable=not progress) as bar:
        for start, imgs, caps in chunks:
            images[start:start + len(imgs)] = imgs
            captions.extend(caps)
            bar.update(len(imgs))
    return images, captions


def write_synthetic_cache(out: str | Path, size: int = 64, n_train: int = 20000, n_val: int = 2000,
                          n_test: int = 2000, seed: int = 0, distribution: str = "skewed",
                          workers: int | None = None, progress: bool = True) -> Path:
    """Draw a synthetic train/val/test set into a new cache directory `out` (atomically)."""
    _check_size(size)
    _check_seed(seed)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for name, n in counts.items():
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise DataError(f"number of {name} faces must be an integer >= 0, got {n!r}")
    if n_train == 0:
        raise DataError("number of train faces must be >= 1")
    total = n_train + n_val + n_test
    levels = sample_levels(total, np.random.default_rng(seed), distribution)
    split = np.repeat(np.array([SPLITS[s] for s in counts], np.int8), list(counts.values()))
    source = {"kind": "synthetic", "generator_version": GENERATOR_VERSION, "seed": seed,
              "distribution": distribution, "size": size, "requested": counts}
    with CacheWriter(out, total, size) as writer:
        writer.levels[:] = levels
        writer.split[:] = split
        writer.names = [f"synthetic_{i + 1:06d}.png" for i in range(total)]
        with tqdm(total=total, desc=f"drawing {size}px faces", unit="face", disable=not progress) as bar:
            for start, imgs, caps in iter_faces(levels, size, seed, workers):
                writer.images[start:start + len(imgs)] = imgs
                writer.captions[start:start + len(caps)] = caps
                bar.update(len(imgs))
        return writer.finish(source)


def toy_root() -> Path:
    return condface_home() / "toy"


def toy_cache_path(size: int = 64, n_train: int = 20000, n_val: int = 2000, n_test: int = 2000, seed: int = 0,
                   distribution: str = "skewed", root: str | Path | None = None) -> tuple[Path, str]:
    """(root folder, directory name) of a toy cache; the name encodes every parameter."""
    name = f"synthetic-v{GENERATOR_VERSION}-{size}px-{n_train}-{n_val}-{n_test}-seed{seed}-{distribution}"
    return Path(root) if root is not None else toy_root(), name


def toy_cache(size: int = 64, n_train: int = 20000, n_val: int = 2000, n_test: int = 2000, seed: int = 0,
              distribution: str = "skewed", root: str | Path | None = None, progress: bool = True) -> Path:
    """The embedded dataset's cache directory, drawn on first use and reused afterwards.

    Safe to call from several processes at once: one draws while the others wait on a lock file,
    and a writer that still loses a race (e.g. on a filesystem without locks) uses the winner's cache.
    """
    base, name = toy_cache_path(size, n_train, n_val, n_test, seed, distribution, root)
    path = base / name
    if _is_complete(path):
        return path
    base.mkdir(parents=True, exist_ok=True)
    with file_lock(base / f".{name}.lock", wait_message=f"waiting for another process drawing {path} ..."):
        if _is_complete(path):
            return path
        try:
            return write_synthetic_cache(path, size, n_train, n_val, n_test, seed, distribution, progress=progress)
        except (DataError, OSError):
            if _is_complete(path):  # another writer finished first
                return path
            raise


def _is_complete(path: Path) -> bool:
    if not path.is_dir():
        return False
    try:
        FaceCache.open(path)
    except DataError as err:
        raise DataError(f"{err} (a toy cache: delete {path} and it is drawn again)") from None
    return True


def save_grid(path: str | Path, size: int = 64, seed: int = 0, tile: int | None = None) -> Path:
    """A labelled PNG: one row per attribute, columns = levels 0..5, other attributes at level 0.

    Each row keeps one person (look), so only the attribute changes along it; the beard row is a man.
    Tiles are upscaled with nearest-neighbour to `tile` pixels (default 128) so small sizes stay visible.
    """
    from PIL import Image, ImageDraw, ImageFont

    _check_size(size)
    tile = tile or max(128, size)
    font = ImageFont.load_default(size=max(12, tile // 9))
    small = ImageFont.load_default(size=max(10, tile // 11))
    left, top, below, gap = tile * 9 // 10, tile // 4, tile // 6, 4
    width = left + NUM_LEVELS * (tile + gap)
    height = top + NUM_ATTRIBUTES * (tile + below + gap)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for lv in range(NUM_LEVELS):
        draw.text((left + lv * (tile + gap) + tile // 2, top // 2), f"level {lv}", fill=(0, 0, 0), font=font,
                  anchor="mm")
    for a, attr in enumerate(ATTRIBUTES):
        rng = face_rng(seed, a)
        look = sample_look(rng, 1 if attr == "beard" else 0)
        y = top + a * (tile + below + gap)
        draw.text((left - 8, y + tile // 2), attr, fill=(0, 0, 0), font=font, anchor="rm")
        for lv in range(NUM_LEVELS):
            levels = np.zeros(NUM_ATTRIBUTES, np.int64)
            levels[a] = lv
            if attr != "age":
                levels[ATTRIBUTES.index("age")] = 1  # young adults, so the beard row is not a bearded child
            face = Image.fromarray(render_face(levels, look, size)).resize((tile, tile), Image.NEAREST)
            x = left + lv * (tile + gap)
            canvas.paste(face, (x, y))
            draw.text((x + tile // 2, y + tile + below // 2), LEVEL_LABELS[attr][lv], fill=(60, 60, 60),
                      font=small, anchor="mm")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def _summary(path: Path, seconds: float | None) -> str:
    cache = FaceCache.open(path)
    counts = cache.manifest["counts"]
    levels = cache.levels
    lines = [f"synthetic faces in {path}",
             f"  {len(cache)} faces at {cache.size}x{cache.size}: train {counts['train']}, val {counts['val']}, "
             f"test {counts['test']}; {cache.manifest['source']['distribution']} levels, "
             f"seed {cache.manifest['source']['seed']}"]
    if seconds is not None:
        lines.append(f"  drawn in {seconds:.1f} s ({len(cache) / max(seconds, 1e-9):.0f} faces/s)")
    for a, attr in enumerate(ATTRIBUTES):
        freq = np.bincount(levels[:, a], minlength=NUM_LEVELS) / max(1, len(levels))
        lines.append(f"  {attr:<10} level share " + " ".join(f"{f:5.1%}" for f in freq))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data.synthetic",
        description="Draw the embedded synthetic face dataset into an image cache (no download needed).",
    )
    parser.add_argument("--out", type=Path, help="new cache directory; default: the shared toy cache "
                        "(reused if it exists). With only --grid, no cache is written.")
    parser.add_argument("--size", type=int, default=64, help=f"image side in pixels, {MIN_SIZE}..{MAX_SIZE} (default 64)")
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-val", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--uniform", action="store_true", help="draw every level equally often (default: skewed "
                        "like CelebA-Dialog, level 0 most common)")
    parser.add_argument("--workers", type=int, default=None, help="processes drawing faces (default: all cores)")
    parser.add_argument("--grid", type=Path, help="also save a labelled sample grid PNG here")
    args = parser.parse_args(argv)
    distribution = "uniform" if args.uniform else "skewed"
    try:
        _check_size(args.size)
        _check_seed(args.seed)
        for flag in ("n_train", "n_val", "n_test"):
            if getattr(args, flag) < 0:
                raise DataError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
        if args.workers is not None and args.workers < 1:
            raise DataError(f"--workers must be >= 1, got {args.workers}")
        if args.grid is not None:
            print(f"sample grid written to {save_grid(args.grid, size=args.size, seed=args.seed)}")
            if args.out is None:
                return
        t0 = time.perf_counter()
        if args.out is None:
            base, name = toy_cache_path(args.size, args.n_train, args.n_val, args.n_test, args.seed, distribution)
            existed = _is_complete(base / name)
            path = toy_cache(args.size, args.n_train, args.n_val, args.n_test, args.seed, distribution)
            seconds = None if existed else time.perf_counter() - t0
        else:
            path = write_synthetic_cache(args.out, args.size, args.n_train, args.n_val, args.n_test, args.seed,
                                         distribution, workers=args.workers)
            seconds = time.perf_counter() - t0
        print(_summary(path, seconds) + ("" if seconds is not None else "\n  (already cached, nothing drawn)"))
    except DataError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
