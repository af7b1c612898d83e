"""The study's Figures 3.2 and 3.3, drawn from the data cache and logged once per sweep to its parent run (real/).

    real/dataset.png        Figure 3.2: training images, each titled with its five levels (the study: "algunas
                            imágenes de este dataset junto con sus atributos")
    real/augmentation.png   Figure 3.3: a few training images (top row), then what the data loader makes of them
                            (data.dataset.FaceDataset through data.augment's Albumentations pipeline): two draws
                            per policy -- the sweep's, its augmentation axis, and the study's
    real/augmentation.json  the policies of the rows, in order, and the one this sweep trained with

So the report can show them without opening the data cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.schema import ATTRIBUTES

REAL_DIR = "real"
SHORT = {"bangs": "bangs", "eyeglasses": "glasses", "beard": "beard", "smiling": "smile", "age": "age"}
AUGMENT_DRAWS = 2  # rows per policy in Figure 3.3
AUGMENT_IMAGES = 6  # columns of Figure 3.3


def showcase_rows(levels: np.ndarray) -> list[int]:
    """Rows of `levels` (n, 5) that show every attribute: per attribute, the first image at its highest level
    present, then the first at a middle level (2 or 3) -- each row once -- so Figure 3.2 is not ten level-0 faces."""
    picked: list[int] = []
    for a in range(len(ATTRIBUTES)):
        column = levels[:, a]
        for match in (column == column.max(), np.isin(column, (2, 3))):
            hit = next((int(i) for i in np.flatnonzero(match) if int(i) not in picked), None)
            if hit is not None:
                picked.append(hit)
    return picked


def levels_title(levels) -> str:
    return "\n".join(", ".join(f"{SHORT[ATTRIBUTES[a]]} {int(levels[a])}" for a in part)
                     for part in (range(0, 3), range(3, len(ATTRIBUTES))))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tiles(images: list[np.ndarray], titles: list[str], cols: int, row_labels: list[str] | None, path: Path,
           title_size: float = 7.0) -> Path:
    plt = _pyplot()
    rows = -(-len(images) // cols)
    size = (1.45 * cols + (1.2 if row_labels else 0), (1.95 if any(titles) else 1.5) * rows)
    fig, axes = plt.subplots(rows, cols, figsize=size, dpi=110, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i < len(images):
            ax.imshow(images[i], interpolation="nearest")
            if titles[i]:
                ax.set_title(titles[i], fontsize=title_size)
        else:
            ax.axis("off")
    for r, text in enumerate(row_labels or []):
        axes[r, 0].set_ylabel(text, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def write_dataset_figure(data_root: str, out: Path) -> Path:
    """Figure 3.2: training images with their five levels (0..5), into `out`/dataset.png."""
    from data.cache import FaceCache

    cache = FaceCache.open(data_root)
    train = cache.indices("train")
    levels = np.asarray(cache.levels[train])
    rows = showcase_rows(levels)
    images = [np.asarray(cache.images[train[i]]) for i in rows]
    return _tiles(images, [levels_title(levels[i]) for i in rows], 5, None, out / "dataset.png", title_size=6.5)


def augment_policies(trained_with: str, axis: tuple[str, ...]) -> list[str]:
    """The policies Figure 3.3 shows: the sweep's, its axis', then the study's (none: nothing to show)."""
    return [p for p in dict.fromkeys((trained_with, *axis, "study")) if p != "none"]


def augmentation_draws(data_root: str, policies: list[str], seed: int) -> tuple[list[np.ndarray], list[str]]:
    """The first AUGMENT_IMAGES training images, then AUGMENT_DRAWS draws of each policy as the data loader makes
    them (FaceDataset with that policy, reseeded per epoch as in a run seeded with `seed`): (images, row labels)."""
    import torch

    from data.dataset import FaceDataset, to_uint8

    originals = FaceDataset(data_root, "train", augment="none", limit=AUGMENT_IMAGES)
    images = [to_uint8(originals[i]["image"]) for i in range(len(originals))]
    labels = ["original"]
    with torch.random.fork_rng(devices=[]):  # the driver's own generators stay as they were
        torch.manual_seed(seed)
        for policy in policies:
            dataset = FaceDataset(data_root, "train", augment=policy, limit=AUGMENT_IMAGES)
            for draw in range(AUGMENT_DRAWS):
                dataset.set_epoch(draw)  # what epoch `draw` of the run sees
                images += [to_uint8(dataset[i]["image"]) for i in range(len(dataset))]
                labels.append(f"{policy}, draw {draw + 1}")
    return images, labels


def write_augmentation_figure(data_root: str, trained_with: str, axis: tuple[str, ...], seed: int,
                              out: Path) -> Path:
    """Figure 3.3 into `out`/augmentation.png (and what its rows are into augmentation.json)."""
    policies = augment_policies(trained_with, axis)
    images, labels = augmentation_draws(data_root, policies, seed)
    cols = len(images) // len(labels)
    (out / "augmentation.json").write_text(json.dumps({"rows": labels, "policies": policies,
                                                       "trained_with": trained_with}))
    return _tiles(images, [""] * len(images), cols, labels, out / "augmentation.png")


def log_data_figures(tracker, run_id: str, data_root: str, augment: str, axis: tuple[str, ...], seed: int) -> None:
    """Write Figures 3.2 and 3.3 and log them to `run_id` under real/, as artifacts and as the run's images
    (once: skipped when already there, e.g. on --resume)."""
    import tempfile

    if f"{REAL_DIR}/augmentation.png" in {f.path for f in tracker.client.list_artifacts(run_id, REAL_DIR)}:
        return
    with tempfile.TemporaryDirectory(prefix="condface-data-figures-") as tmp:
        out = Path(tmp)
        for key, png in (("figure_3.2_dataset", write_dataset_figure(data_root, out)),
                         ("figure_3.3_augmentation", write_augmentation_figure(data_root, augment, axis, seed, out))):
            tracker.log_image(run_id, png, key=key, step=0)
        tracker.log_artifact(run_id, out, REAL_DIR)


__all__ = ["log_data_figures", "write_dataset_figure", "write_augmentation_figure", "augmentation_draws",
           "showcase_rows", "augment_policies"]
