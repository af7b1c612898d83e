"""The study's Figure 3.1 ("Efecto del VAE en Stable Diffusion"), regenerated for the VAE tuned at the data's size.

The study showed what SD's and SD Nano's VAEs make of its 64 px faces; here the rows are real validation
images, the base VAE's reconstructions and the tuned VAE's (the `vae` phase, orchestration.phases.vae), at
the data's resolution, each row labelled with its PSNR and FID stand-in against the real row.
`draw_vae_figure` draws it (the phase logs it to its run); `vae_figure` finds it in a sweep's record.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from data.catalogue import FID_STAND_IN, finite
from data.io import atomic_write_bytes
from orchestration.report.document import Figure, Panel
from orchestration.report.record import Record

FIGURE_KEY = "3.1"
ARTIFACT = "vae/fig3.1_vae.png"  # under the vae run's artifacts


def _row_label(name: str, metrics: dict[str, float] | None) -> str:
    if not metrics:
        return name
    parts = [f"PSNR {metrics['psnr']:.1f} dB"] if finite(metrics.get("psnr")) else []
    if finite(metrics.get(FID_STAND_IN)):
        parts.append(f"{FID_STAND_IN} {metrics[FID_STAND_IN]:.2f}")
    return f"{name}\n" + ", ".join(parts)


def draw_vae_figure(real: np.ndarray, base: np.ndarray, tuned: np.ndarray, path: str | Path, title: str,
                    base_metrics: dict[str, float] | None = None,
                    tuned_metrics: dict[str, float] | None = None) -> Path:
    """Three rows of uint8 (N, H, W, 3) images -- real, base VAE, tuned VAE -- at their own pixels (no smoothing),
    written atomically as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("real", real, None), ("base VAE", base, base_metrics), ("tuned VAE", tuned, tuned_metrics)]
    n = min(len(r[1]) for r in rows)
    if n == 0:
        raise ValueError("Figure 3.1 needs at least one image per row")
    fig, axes = plt.subplots(3, n, figsize=(1.1 * n + 1.6, 3.9), dpi=110, squeeze=False)
    for r, (name, images, metrics) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(images[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(_row_label(name, metrics), rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(Path(path), buf.getvalue())


def vae_figure(rec: Record, family: str = "sd-lora") -> Figure | None:
    """Figure 3.1 from a sweep's record: the vae run's figure, or None when the sweep tuned no VAE."""
    run = rec.one("vae", family)
    if run is None:
        return None
    png = rec.artifact(run, ARTIFACT)
    size = run.data.params.get("image_size", "?")
    return Figure(FIGURE_KEY, f"The effect of the VAE at {size} px: real images, the base VAE's and the tuned VAE's "
                              "reconstructions",
                  [Panel(f"{family}: real / base VAE / tuned VAE", png, "fig3.1_vae.png",
                         "the vae run logged no figure (it did not finish)")],
                  "The study's Figure 3.1 compared SD's and SD Nano's VAEs; this one compares the base's VAE with the "
                  "same VAE tuned on the training images at the data's resolution (§5's future work). Each row's "
                  "PSNR and FID stand-in are against the real row.")


__all__ = ["draw_vae_figure", "vae_figure", "ARTIFACT", "FIGURE_KEY"]
