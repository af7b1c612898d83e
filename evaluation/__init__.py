"""Evaluation: the attribute estimator, the metrics (paired FID or its estimator stand-in, MTCNN, CLIP score,
estimator accuracy), reference rows and Ray evaluation actors.

Names are imported lazily, so `import evaluation` stays cheap (Ray and the metric models load on first use).
"""

from __future__ import annotations

import importlib

import models  # noqa: F401  (its __init__ sets the offline defaults before any module here imports transformers)

_EXPORTS = {
    "EvalConfig": "evaluation.config",
    "eval_preset": "evaluation.config",
    "FID_SAMPLES": "evaluation.config",
    "EvalError": "evaluation.errors",
    "PairedSet": "evaluation.conditions",
    "paired_conditions": "evaluation.conditions",
    "Scorer": "evaluation.scorer",
    "ScoreState": "evaluation.scorer",
    "MetricResult": "evaluation.scorer",
    "EvaluatorPool": "evaluation.actors",
    "AttributeEstimator": "evaluation.estimator",
    "ensure_estimator": "evaluation.estimator_cache",
    "estimator_preset": "evaluation.estimator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
