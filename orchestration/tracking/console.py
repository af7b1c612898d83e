"""The lines the sweep prints about its trials."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from data.catalogue import finite


def progress_line(label: str, result: dict[str, Any], metric: str) -> str:
    """One line per reported epoch, e.g. `grid:ga1-T1000-snroff-small epoch 2: train_loss 0.071 ...`."""
    keys = ["train_loss", "val_loss", metric, "est_acc_balanced"]
    shown = []
    for k in dict.fromkeys(keys):
        if finite(result.get(k)):
            shown.append(f"{k} {result[k]:.4g}")
    speed = ""
    if finite(result.get("epoch_seconds")):
        speed = f"  ({result['epoch_seconds']:.1f} s, {result.get('images_per_second', 0):.0f} img/s)"
    return f"{label} epoch {result.get('epoch', '?')}: " + "  ".join(shown) + speed


def error_line(trial) -> str:
    """The last line of a failed trial's error file (its exception), or where to look."""
    msg = ""
    path = getattr(trial, "error_file", None) or ""
    try:
        if path and os.path.isfile(path):
            lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
            msg = lines[-1] if lines else ""
    except OSError:
        pass
    return msg or "trial failed (see the Ray storage path for its error file)"

