"""Score generated images: load the metric models once, update over batches, merge partial states, compute.

    scorer = Scorer(config)
    state = scorer.update(images, levels, captions, real_images)      # any number of times, any process
    result = scorer.compute(Scorer.merge([state, ...]))   # MetricResult(values, unavailable, counts, tables)

Metric names (stable; used as MLflow keys): fid, fd_estimator, mtcnn, clip_score, est_acc,
est_acc_balanced, est_acc_<attribute>. A metric that cannot be computed here is listed in
`unavailable` with the reason, never given a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from data.cli import first_line
from data.schema import ATTRIBUTES, check_levels
from evaluation.config import EvalConfig, eval_device
from evaluation.errors import EvalError
from evaluation.metrics.base import EvalBatch, State, add_states


@dataclass
class MetricResult:
    values: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # metric name -> reason
    counts: dict[str, int] = field(default_factory=dict)  # samples behind each value, e.g. fid_n
    tables: dict[str, dict[str, list]] = field(default_factory=dict)  # est_confusion: attribute -> 6x6 counts

    def to_json(self) -> dict:
        return {"values": self.values, "unavailable": self.unavailable, "counts": self.counts, "tables": self.tables}


@dataclass
class ScoreState:
    """Partial metric states (sums), keyed by metric; small, picklable, merged by addition."""

    parts: dict[str, State] = field(default_factory=dict)

    def merge(self, other: ScoreState) -> ScoreState:
        if self.parts.keys() != other.parts.keys():
            raise ValueError(f"cannot merge states of different scorers: {sorted(self.parts)} vs {sorted(other.parts)}")
        return ScoreState({k: add_states(self.parts[k], other.parts[k]) for k in self.parts})


def _as_nchw_uint8(images, what: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        array = np.asarray(images)
        images = torch.as_tensor(array if array.flags.writeable else array.copy())  # Ray hands over read-only arrays
    t = images
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise EvalError(f"{what} must be uint8 (N, H, W, 3), got {t.dtype} {tuple(t.shape)}: convert with data.dataset.to_uint8")
    return t.permute(0, 3, 1, 2).contiguous()


class Scorer:
    """Holds the metric models (estimator, MTCNN, CLIP, Inception) for one process."""

    def __init__(self, config: EvalConfig):
        self.config = config
        self.device = eval_device(config.device)
        self.metrics: list = []
        self.unavailable: dict[str, str] = {}
        self._load_estimator_metrics()
        self._load_inception()
        self._load_mtcnn()
        self._load_clip()

    def _load_estimator_metrics(self) -> None:
        if self.config.estimator is None:
            reason = "no attribute estimator configured (EvalConfig.estimator; see evaluation.train_estimator)"
            self.unavailable.update({"fd_estimator": reason, "est_acc": reason, "est_acc_balanced": reason})
            return
        from evaluation.estimator import AttributeEstimator
        from evaluation.metrics.accuracy import EstimatorAccuracy
        from evaluation.metrics.fid import FrechetDistance

        self.estimator = AttributeEstimator.load(self.config.estimator, self.device)
        self.metrics += [FrechetDistance.estimator(self.estimator, self.device), EstimatorAccuracy(self.estimator)]

    def _load_inception(self) -> None:
        from evaluation.metrics.fid import FrechetDistance, find_inception

        weights, reason = find_inception(self.config.inception_weights)
        if weights is None:
            self.unavailable["fid"] = reason
            return
        try:
            self.metrics.insert(0, FrechetDistance.inception(weights, self.device))
        except Exception as err:  # a torch-fidelity / weights-file failure makes the metric unavailable, not the run
            self.unavailable["fid"] = f"Inception could not be loaded from {weights}: {type(err).__name__}: {err}"

    def _load_mtcnn(self) -> None:
        if not self.config.mtcnn:
            self.unavailable["mtcnn"] = "disabled in the evaluation config (mtcnn=False)"
            return
        from evaluation.metrics.mtcnn import FaceConfidence

        self.metrics.append(FaceConfidence(self.config.mtcnn_size, self.device))

    def _load_clip(self) -> None:
        if self.config.clip_model is None:
            self.unavailable["clip_score"] = "no CLIP model configured (EvalConfig.clip_model: a Hub id or local dir)"
            return
        from evaluation.metrics.clip import CaptionAgreement

        try:
            self.metrics.append(CaptionAgreement(self.config.clip_model, self.device, self.config.hub_download))
        except (OSError, ValueError) as err:
            first = first_line(err)
            hint = "" if self.config.hub_download else " (Hub downloads are off: give a local directory)"
            self.unavailable["clip_score"] = f"CLIP model {self.config.clip_model!r} could not be loaded{hint}: {first}"

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.metrics]

    @torch.no_grad()
    def update(self, images, levels, captions: Sequence[str] | None = None, real_images=None) -> ScoreState:
        """Score one set of generated images (uint8 N,H,W,3) against the levels (N,5) they were asked for.

        `captions` feed the CLIP score; `real_images` (uint8, same count) are the real half of FID/FD.
        Works through the set in chunks of `config.batch_size`; returns a mergeable partial state.
        """
        fake = _as_nchw_uint8(images, "generated images")
        levels = torch.as_tensor(np.array(levels, dtype=np.int64))  # a copy: Ray hands actors read-only arrays
        check_levels(levels)
        n = len(fake)
        if levels.shape != (n, len(ATTRIBUTES)):
            raise EvalError(f"{n} images but levels of shape {tuple(levels.shape)}: pass one row of 5 levels per image")
        if captions is not None and len(captions) != n:
            raise EvalError(f"{n} images but {len(captions)} captions: pass one caption per image")
        real = None if real_images is None else _as_nchw_uint8(real_images, "real images")
        if real is not None and len(real) != n:
            raise EvalError(f"{n} generated but {len(real)} real images: FID pairs one real image with each")
        for metric in self.metrics:
            metric.reset()
        bs = self.config.batch_size
        for i in range(0, n, bs):
            batch = EvalBatch(
                images=fake[i : i + bs].to(self.device),
                levels=levels[i : i + bs],
                captions=None if captions is None else list(captions[i : i + bs]),
                real=None if real is None else real[i : i + bs].to(self.device),
            )
            for metric in self.metrics:
                metric.update(batch)
        return ScoreState({m.name: m.state() for m in self.metrics})

    @staticmethod
    def merge(states: Sequence[ScoreState]) -> ScoreState:
        if not states:
            raise ValueError("nothing to merge: no partial states")
        merged = states[0]
        for s in states[1:]:
            merged = merged.merge(s)
        return merged

    def compute(self, state: ScoreState) -> MetricResult:
        result = MetricResult(unavailable=dict(self.unavailable))
        for metric in self.metrics:
            outcome = metric.compute(state.parts[metric.name])
            result.values.update(outcome.values)
            result.counts.update(outcome.counts)
            result.unavailable.update(outcome.unavailable)
            result.tables.update(outcome.tables)
        return result

    def score(self, images, levels, captions=None, real_images=None) -> MetricResult:
        return self.compute(self.update(images, levels, captions, real_images))
