"""Loader throughput: images/s with and without augmentation, for 0, 1 and 2 DataLoader workers.

    python -m data.bench [--data toy|DIR] [--size 64] [--batch-size 32] [--batches 60]

Target (64x64, `study` augmentation, this 2-core machine): >= 2,000 images/s per worker.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.utils.data import DataLoader

from data.dataset import FaceDataset, resolve_data
from data.errors import DataError


def throughput(dataset: FaceDataset, workers: int, batch_size: int, batches: int) -> float:
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=False
    )
    it = iter(loader)
    next(it)  # start-up (worker spawn, first page faults) is not throughput
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            n += len(next(it)["image"])
        except StopIteration:
            break
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="toy", help="toy (embedded synthetic faces) or a cache directory")
    p.add_argument("--size", type=int, default=64, help="image size of the toy data (default 64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=60, help="batches timed per setting")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        root = resolve_data(a.data, a.size if a.data == "toy" else None)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(f"data {root}  batch {a.batch_size}  {a.batches} batches per setting")
    print(f"{'augment':<16}{'workers':>8}{'images/s':>12}{'per worker':>12}")
    for augment in ("none", "study", "study-no-color"):
        ds = FaceDataset(root, "train", augment=augment)
        for workers in (0, 1, 2):
            ips = throughput(ds, workers, a.batch_size, a.batches)
            print(f"{augment:<16}{workers:>8}{ips:>12,.0f}{ips / max(workers, 1):>12,.0f}", flush=True)


if __name__ == "__main__":
    main()
