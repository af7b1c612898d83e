"""Real images of the conditions the models are asked for, as grids logged once per sweep to its parent run.

    real/epoch_samples.png   the real validation images of the per-epoch conditions (beside every trial's
                             samples/epoch_NNN/samples.png: same order, same 8-wide layout)
    real/final_samples.png   those of the final evaluation's conditions (beside final_samples/final_samples.png)
    real/attributes.png      the attribute grid's conditions (row a: attribute a at levels 0..5, the others
                             0): a validation image with exactly those levels, else the nearest one that has the
                             row's level (fewest differing levels elsewhere), else a blank tile
    real/attributes.json     for each tile: the cache row used, its levels and whether they match exactly

So the report can set real images beside generated ones without opening the data cache.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

REAL_DIR = "real"


def attribute_matches(levels: np.ndarray, wanted: np.ndarray) -> list[tuple[int | None, bool]]:
    """For each row of an attribute sweep (n, 5): (index into `levels` of the best real row or None, exact?)."""
    from data.schema import NUM_LEVELS

    out: list[tuple[int | None, bool]] = []
    for row_i, want in enumerate(wanted):
        attribute = row_i // NUM_LEVELS  # models.sampling.attribute_sweep's order
        candidates = np.flatnonzero(levels[:, attribute] == want[attribute])
        if len(candidates) == 0:
            out.append((None, False))
            continue
        distance = (levels[candidates] != want).sum(axis=1)
        best = candidates[int(np.argmin(distance))]
        out.append((int(best), bool(distance.min() == 0)))
    return out


def write_real_grids(data_root: str, eval_samples: int, final_samples: int, seed: int, out: Path) -> dict:
    """Write the three PNGs (and attributes.json) into `out`; returns what attributes.json holds."""
    import json

    from data.cache import FaceCache
    from data.io import atomic_write_text
    from data.schema import ATTRIBUTES, NUM_LEVELS
    from evaluation.conditions import paired_conditions
    from models.sampling import attribute_sweep, image_grid, save_png
    from orchestration.trainable import samples_png

    cache = FaceCache.open(data_root)
    samples_png(paired_conditions(cache, eval_samples, split="val", seed=seed).real_images, out / "epoch_samples.png")
    final = paired_conditions(cache, final_samples, split="val", seed=seed + 1)
    samples_png(final.real_images[:64], out / "final_samples.png")  # the final grid shows the first 64 samples

    val = cache.indices("val")
    levels = np.asarray(cache.levels[val])
    wanted = attribute_sweep()
    matches = attribute_matches(levels, wanted)
    size = cache.size
    tiles = np.full((len(wanted), size, size, 3), 255, dtype=np.uint8)
    for i, (j, _) in enumerate(matches):
        if j is not None:
            tiles[i] = np.asarray(cache.images[val[j]])
    save_png(image_grid(tiles, NUM_LEVELS, row_labels=list(ATTRIBUTES), scale=max(1, 64 // size)),
             out / "attributes.png")
    info = {"tiles": [{"wanted": wanted[i].tolist(), "row": None if j is None else int(val[j]),
                       "levels": None if j is None else levels[j].tolist(), "exact": exact}
                      for i, (j, exact) in enumerate(matches)]}
    info["exact"] = sum(t["exact"] for t in info["tiles"])
    atomic_write_text(out / "attributes.json", json.dumps(info))
    return info


def log_real_grids(tracker, run_id: str, data_root: str, eval_samples: int, final_samples: int, seed: int) -> None:
    """Write the real-image grids and log them to `run_id` under real/ (once: skipped when already there)."""
    have = {f.path for f in tracker.client.list_artifacts(run_id, REAL_DIR)}
    if f"{REAL_DIR}/attributes.png" in have:
        return
    with tempfile.TemporaryDirectory(prefix="condface-real-") as tmp:
        write_real_grids(data_root, eval_samples, final_samples, seed, Path(tmp))
        tracker.log_artifact(run_id, tmp, REAL_DIR)


__all__ = ["write_real_grids", "log_real_grids", "attribute_matches", "REAL_DIR"]
