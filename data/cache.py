"""The training-ready image cache: one directory, written once, read fast.

Layout of a cache directory:
    images.npy     uint8  N x H x W x 3 (memory-mapped on read)
    levels.npy     int64  N x 5, attribute levels 0..5 in schema.ATTRIBUTES order
    split.npy      int8   N, 0 = train, 1 = val, 2 = test
    meta.json      {"names": [...], "captions": [...]}
    manifest.json  counts per split, image size, source description and checksums

A cache is written into a temporary sibling directory and renamed into place at the end,
so a directory that exists at `path` is always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.errors import DataError
from data.schema import ATTRIBUTES, NUM_ATTRIBUTES, check_levels

SPLITS = {"train": 0, "val": 1, "test": 2}
FORMAT_VERSION = 1
_FILES = ("images.npy", "levels.npy", "split.npy", "meta.json", "manifest.json")


@dataclass(frozen=True)
class FaceCache:
    """A read-only view of a cache directory. `images` is memory-mapped."""

    root: Path
    images: np.ndarray
    levels: np.ndarray
    split: np.ndarray
    names: list[str]
    captions: list[str]
    manifest: dict = field(repr=False)

    @classmethod
    def open(cls, root: str | Path) -> FaceCache:
        root = Path(root)
        if not root.is_dir():
            raise DataError(
                f"cache directory {root} does not exist: run `python -m data.prepare ... --out {root}` first"
            )
        missing = [f for f in _FILES if not (root / f).is_file()]
        if missing:
            raise DataError(
                f"{root} is not a complete image cache (missing {', '.join(missing)}): rebuild it with data.prepare"
            )
        manifest = json.loads((root / "manifest.json").read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{root} has cache format {manifest.get('format_version')}, expected {FORMAT_VERSION}: rebuild it"
            )
        meta = json.loads((root / "meta.json").read_text())
        return cls(
            root=root,
            images=np.load(root / "images.npy", mmap_mode="r"),
            levels=np.load(root / "levels.npy"),
            split=np.load(root / "split.npy"),
            names=meta["names"],
            captions=meta["captions"],
            manifest=manifest,
        )

    def __len__(self) -> int:
        return len(self.levels)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.split == SPLITS[split])


def manifest_key(root: str | Path) -> str:
    """sha256 of a cache's manifest without its `created` time: what caches derived from the data key on, so the
    same data drawn twice (e.g. by two test sessions, or two machines) shares them."""
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    manifest.pop("created", None)
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


class CacheWriter:
    """Fill a cache row by row, then `finish()` renames it into place; `abort()` removes it.

    Use as a context manager: leaving the block with an exception removes the partial cache.
    """

    def __init__(self, out: str | Path, n: int, size: int):
        self.out = Path(out)
        if self.out.exists():
            raise DataError(f"output {self.out} already exists: choose another --out or delete it")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.with_name(f".{self.out.name}.partial-{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.n, self.size = n, size
        self.images = np.lib.format.open_memmap(
            self.tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
        )
        self.levels = np.zeros((n, NUM_ATTRIBUTES), dtype=np.int64)
        self.split = np.zeros(n, dtype=np.int8)
        self.names: list[str] = [""] * n
        self.captions: list[str] = [""] * n

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def put(self, i: int, image: np.ndarray, levels, split: int, name: str, caption: str) -> None:
        self.images[i] = image
        self.levels[i] = levels
        self.split[i] = split
        self.names[i] = name
        self.captions[i] = caption

    def truncate(self, n: int) -> None:
        """Keep only the first n rows (used when bad images were skipped)."""
        if n == self.n:
            return
        kept = np.lib.format.open_memmap(
            self.tmp / "images.kept.npy", mode="w+", dtype=np.uint8, shape=(n, self.size, self.size, 3)
        )
        kept[:] = self.images[:n]
        kept.flush()
        self.images = None
        os.replace(self.tmp / "images.kept.npy", self.tmp / "images.npy")
        self.images = np.load(self.tmp / "images.npy", mmap_mode="r+")
        self.levels, self.split = self.levels[:n], self.split[:n]
        self.names, self.captions, self.n = self.names[:n], self.captions[:n], n

    def finish(self, source: dict, extra: dict | None = None) -> Path:
        check_levels(self.levels)
        self.images.flush()
        self.images = None
        np.save(self.tmp / "levels.npy", self.levels)
        np.save(self.tmp / "split.npy", self.split)
        (self.tmp / "meta.json").write_text(json.dumps({"names": self.names, "captions": self.captions}))
        counts = {name: int((self.split == code).sum()) for name, code in SPLITS.items()}
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "num_images": self.n,
            "image_size": self.size,
            "attributes": list(ATTRIBUTES),
            "counts": counts,
            "source": source,
            **(extra or {}),
        }
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if self.out.exists():
            raise DataError(f"output {self.out} appeared while writing: another process wrote it; delete one of them")
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        self.images = None
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_cache(
    out: str | Path,
    images: np.ndarray,
    levels: np.ndarray,
    split: np.ndarray,
    names: list[str],
    captions: list[str],
    source: dict,
    extra: dict | None = None,
) -> Path:
    """Write a whole cache from in-memory arrays (atomically)."""
    n, size = len(images), int(images.shape[1])
    with CacheWriter(out, n, size) as w:
        w.images[:] = images
        w.levels[:] = levels
        w.split[:] = split
        w.names, w.captions = list(names), list(captions)
        return w.finish(source, extra)
