"""What every metric here shares: a torchmetrics state that is a sum, so partial states merge by addition.

A metric sees one `EvalBatch` at a time (generated images as uint8, the conditions asked for, and the
paired real images when there are any) and never the model that made them. `state()` snapshots the
torchmetrics state tensors on the CPU; partial states from several processes or batches are merged by
adding them (every state used here is declared with dist_reduce_fx="sum"); `load()` puts a merged
state back into the metric so its own `compute()` does the math.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # torchmetrics only where a metric runs: a process that merges or receives states does without
    from torchmetrics import Metric

State = dict[str, torch.Tensor]


@dataclass
class EvalBatch:
    images: torch.Tensor  # uint8 (B, 3, H, W), generated
    levels: torch.Tensor  # int64 (B, 5), the levels asked for
    captions: list[str] | None = None
    real: torch.Tensor | None = None  # uint8 (B', 3, H', W'), the real half of FID


@dataclass
class Outcome:
    values: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    tables: dict[str, dict[str, list]] = field(default_factory=dict)  # e.g. est_confusion: attribute -> 6x6 counts


def snapshot(metric: Metric, prefix: str = "") -> State:
    return {prefix + k: v.detach().cpu().clone() for k, v in metric.metric_state.items()}


def restore(metric: Metric, state: State, prefix: str = "") -> None:
    """Reset `metric` and load a (merged) state into it."""
    from torchmetrics.utilities.data import dim_zero_sum

    metric.reset()
    for name in metric.metric_state:
        if metric._reductions[name] is not dim_zero_sum:
            raise TypeError(f"{type(metric).__name__}.{name} is not a sum state and cannot be merged by addition")
        current = getattr(metric, name)
        setattr(metric, name, state[prefix + name].to(device=current.device, dtype=current.dtype))


def compute_loaded(metric: Metric) -> torch.Tensor:
    """`metric.compute()` on a state loaded by `restore` (torchmetrics would warn that update was never called)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*compute.*called before the ..update.. method")
        return metric.compute()


def add_states(a: State, b: State) -> State:
    if a.keys() != b.keys():
        raise ValueError(f"cannot merge metric states with different keys: {sorted(a)} vs {sorted(b)}")
    return {k: a[k] + b[k] for k in a}
