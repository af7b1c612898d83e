"""MTCNN face confidence: finds a real (photographed) face at 16-64 px, gives 0 for a blank image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image

from evaluation.metrics.base import EvalBatch
from evaluation.metrics.mtcnn import FaceConfidence


@pytest.fixture(scope="module")
def detector():
    return FaceConfidence(size=160)


def real_face(size: int) -> np.ndarray:
    """Grace Hopper's portrait (shipped with matplotlib), cropped around the face like CelebA and shrunk."""
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        photo = np.asarray(im.convert("RGB"))
    crop = photo[80:400, 105:425]  # the face, with forehead, chin and some hair around it
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_detects_a_real_face_at_small_sizes(detector, size):
    assert detector.confidence(real_face(size)) > 0.9


def test_blank_image_scores_zero(detector):
    assert detector.confidence(np.zeros((64, 64, 3), np.uint8)) == 0.0
    assert detector.confidence(np.full((32, 32, 3), 255, np.uint8)) == 0.0


def test_mean_over_images_as_percent(detector):
    images = np.stack([real_face(64), np.zeros((64, 64, 3), np.uint8)])
    face = detector.confidence(images[0])
    detector.reset()
    detector.update(EvalBatch(images=torch.from_numpy(images).permute(0, 3, 1, 2),
                              levels=torch.zeros(2, 5, dtype=torch.int64)))
    out = detector.compute(detector.state())
    assert out.values["mtcnn"] == pytest.approx(100 * face / 2, rel=1e-5)
    assert out.counts["mtcnn_n"] == 2
