"""The study's augmentation (Albumentations), selectable by name.

The study lists brightness, contrast, saturation, rotation, translation and scale but gives no
magnitudes; these are mild values that keep a 64x64 face recognisable:
    colour:   brightness / contrast / saturation jitter of +-20%  (p = 0.8)
    geometry: rotation +-10 deg, translation +-5%, scale 0.9..1.1, reflected borders (p = 0.8)
`study-no-color` keeps only the geometry: the study suspected the saturation jitter hurt FID,
because the DDPM learned to reproduce it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import albumentations as A

AUGMENTATIONS = ("none", "study", "study-no-color")


# Albumentations (with SciPy and OpenCV) is imported only where an augmentation is built: every process that reads
# the data (each trial, task and actor of a sweep) pays ~0.7 s of CPU for it otherwise, and most runs augment nothing.
def _geometry() -> A.BasicTransform:
    import albumentations as A
    import cv2

    return A.Affine(
        rotate=(-10, 10),
        translate_percent=(-0.05, 0.05),
        scale=(0.9, 1.1),
        border_mode=cv2.BORDER_REFLECT_101,
        p=0.8,
    )


def build_augmentation(name: str) -> A.Compose | None:
    """An Albumentations pipeline over uint8 HxWx3 images, or None for `none`."""
    if name == "none":
        return None
    import albumentations as A

    if name == "study":
        return A.Compose([A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, p=0.8), _geometry()])
    if name == "study-no-color":
        return A.Compose([_geometry()])
    raise ValueError(f"unknown augmentation {name!r}: use one of {', '.join(AUGMENTATIONS)}")
