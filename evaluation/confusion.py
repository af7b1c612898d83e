"""Confusion-matrix figures of the attribute estimator's readings (rows: the level asked for or true, columns:
the level the estimator read), from the matrices `evaluation.metrics.accuracy.EstimatorAccuracy` keeps.

* `plot_confusion`: one attribute, counts in the cells (the estimator's own report on real images).
* `plot_confusions`: all five attributes in one row, each row normalised to the fraction of its level, the
  diagonal being each level's recall -- for a model's samples it shows which levels the model fails to draw
  (the class-balanced accuracy is the mean of those diagonals).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from data.schema import ATTRIBUTES, NUM_LEVELS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confmat: np.ndarray, attribute: str, path: Path) -> None:
    plt = _pyplot()
    rows = confmat / np.maximum(confmat.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    im = ax.imshow(rows, vmin=0, vmax=1, cmap="Blues")
    for r in range(NUM_LEVELS):
        for c in range(NUM_LEVELS):
            ax.text(c, r, int(confmat[r, c]), ha="center", va="center", fontsize=7,
                    color="white" if rows[r, c] > 0.5 else "black")
    ax.set(xlabel="estimated level", ylabel="true level", xticks=range(NUM_LEVELS), yticks=range(NUM_LEVELS))
    acc = confmat.trace() / max(confmat.sum(), 1)
    ax.set_title(f"{attribute}: accuracy {acc:.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true level")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recalls(confmat: np.ndarray) -> np.ndarray:
    """Each level's recall (NaN for a level never asked for)."""
    confmat = np.asarray(confmat, dtype=np.float64)
    support = confmat.sum(1)
    return np.where(support > 0, confmat.diagonal() / np.maximum(support, 1), np.nan)


def plot_confusions(confmats: Mapping[str, np.ndarray], title: str, path: Path, ylabel: str = "level asked for") -> Path:
    """One row of five row-normalised matrices; each level's recall and count (n) on the y tick labels."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(ATTRIBUTES), figsize=(3.0 * len(ATTRIBUTES), 3.3))
    for ax, attr in zip(axes, ATTRIBUTES):
        cm = np.asarray(confmats[attr], dtype=np.float64)
        support = cm.sum(1)
        rows = cm / np.maximum(support[:, None], 1)
        ax.imshow(rows, vmin=0, vmax=1, cmap="Blues")
        for r in range(NUM_LEVELS):
            for c in range(NUM_LEVELS):
                if cm[r, c]:
                    ax.text(c, r, f"{rows[r, c]:.2f}".lstrip("0"), ha="center", va="center", fontsize=6,
                            color="white" if rows[r, c] > 0.5 else "black")
        rec = recalls(cm)
        balanced = np.nanmean(rec) if np.isfinite(rec).any() else float("nan")
        ax.set_title(f"{attr}: balanced {balanced:.2f}", fontsize=9)
        ax.set_xticks(range(NUM_LEVELS))
        ax.set_yticks(range(NUM_LEVELS), [f"{lv} (n={int(n)})" for lv, n in zip(range(NUM_LEVELS), support)],
                      fontsize=7)
        ax.set_xlabel("level the estimator read", fontsize=8)
    axes[0].set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["plot_confusion", "plot_confusions", "recalls"]
