"""The study's method figures (its chapter 3), from the PNGs the references phase logged:

    3.2  training images with their five levels     real/dataset.png on the parent run
    3.3  the augmentation the data loader applies    real/augmentation.png (+ .json) on the parent run
    3.4  one image of each reference group           reference/<row>.png on each reference run
"""

from __future__ import annotations

import json
import re

from data.catalogue import FAMILY_NAMES
from orchestration.report.document import Figure, Panel, Report
from orchestration.report.record import Record

OLD_SWEEP = "sweeps before the figure existed"


def dataset_figure(rec: Record) -> Figure:
    png = rec.artifact(rec.parent, "real/dataset.png")
    return Figure("3.2", "training images with their five attributes' levels (0..5)",
                  [Panel(f"training images of {rec.params.get('data', '?')}", png, "fig3.2_dataset.png",
                         f"the sweep logged no real/dataset.png ({OLD_SWEEP})")],
                  "Chosen to show every attribute: per attribute, the first training image at its highest level, "
                  "then one at a middle level. The study shows CelebA-Dialog images with their attributes (§3.3).")


def augmentation_figure(rec: Record) -> Figure:
    png = rec.artifact(rec.parent, "real/augmentation.png")
    info = rec.artifact(rec.parent, "real/augmentation.json")
    rows = json.loads(info) if info else {}
    trained = rows.get("trained_with", rec.params.get("augment", "?"))
    caption = (f"Top row: training images as stored; below, two draws of each policy "
               f"({', '.join(rows.get('policies', [])) or '?'}) as the data loader makes them (data.dataset."
               f"FaceDataset through data.augment's Albumentations pipeline, reseeded per epoch as in training). This "
               f"sweep trained with augment = {trained}"
               + (" (no augmentation: the rows show the policy --augment study would use)" if trained == "none" else "")
               + ". The study lists brightness, contrast, saturation, rotation, translation and scale (§3.4) but "
                 "no magnitudes: data.augment's are this project's choice.")
    return Figure("3.3", "the training augmentation applied to a few images",
                  [Panel("augmentation", png, "fig3.3_augmentation.png",
                         f"the sweep logged no real/augmentation.png ({OLD_SWEEP})")], caption)


def _group_name(run, fallback: str) -> str:
    """A reference run's group, from its name ("reference: SD base without LoRA (100)" -> "SD base without LoRA")."""
    name = (run.info.run_name or "").removeprefix("reference: ")
    return re.sub(r"\s*\(\d+\)$", "", name) or fallback


def reference_samples_figure(rec: Record, report: Report) -> Figure:
    """Figure 3.4: each reference group's first images: every family's untrained model (for a pretrained family
    its base without adapters) and the real images, on the same conditions."""
    panels = []
    for family in [*rec.families, "real"]:
        run, _ = rec.reference(family)
        row = "ground_truth" if family == "real" else "untrained"
        fallback = "real images" if family == "real" else f"{FAMILY_NAMES.get(family, family)}, untrained"
        if run is None:
            panels.append(Panel(fallback, None, "", "no reference run"))
            continue
        png = rec.artifact(run, f"reference/{row}.png")
        if png is None:
            report.missing.append(f"Figure 3.4: the reference run {run.info.run_id} logged no images ({OLD_SWEEP})")
        name = "real images (validation)" if family == "real" else _group_name(run, fallback)
        panels.append(Panel(name, png, f"fig3.4_{family}_{row}.png",
                            f"the reference run logged no reference/{row}.png ({OLD_SWEEP})"))
    return Figure("3.4", "one image of each reference group (Table 3.1's rows)", panels,
                  "The first images of each group, asked for the same conditions (the final comparison's) in the same "
                  "order; the study shows one image per group.")


__all__ = ["dataset_figure", "augmentation_figure", "reference_samples_figure"]
