"""Ray evaluation actors: each holds a `Scorer` (metric models loaded once) and scores shards of a batch.

    pool = EvaluatorPool(config, num_actors=2, gpus_per_actor=0.25)
    result = pool.score(images, levels, captions, real_images)      # == Scorer(config).score(...)

A batch is cut into one contiguous shard per actor; each actor returns the partial (sum) state of
its shard; the states are merged by addition and one actor computes the result, so the pool's
answer equals the in-process computation up to float summation order. `update` / `compute` expose
the two halves for callers that stream many batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import ray

from evaluation.config import EvalConfig

if TYPE_CHECKING:  # the metric models are the actors' to import: a driver that only holds a pool stays light
    from evaluation.scorer import MetricResult, ScoreState


class ScorerActor:
    def __init__(self, config: EvalConfig, num_threads: int | None = None):
        import torch

        from evaluation.scorer import Scorer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.scorer = Scorer(config)

    def update(self, images, levels, captions, real_images) -> ScoreState:
        return self.scorer.update(images, levels, captions, real_images)

    def compute(self, state: ScoreState) -> MetricResult:
        return self.scorer.compute(state)

    def metric_names(self) -> list[str]:
        return self.scorer.metric_names


class EvaluatorPool:
    """N Ray actors sharing the scoring work; needs a running Ray (ray.init or a cluster address)."""

    def __init__(self, config: EvalConfig, num_actors: int = 1, gpus_per_actor: float = 0.0,
                 cpus_per_actor: float | None = None, threads_per_actor: int | None = 1):
        if num_actors < 1:
            raise ValueError(f"an evaluator pool needs at least 1 actor, got {num_actors}")
        if gpus_per_actor > 0 and config.device == "cpu":
            raise ValueError("gpus_per_actor > 0 but the evaluation device is 'cpu': use device 'auto' or 'cuda'")
        if not ray.is_initialized():
            ray.init()
        # cpus_per_actor None = Ray's actor default: needs a CPU to be placed but reserves none while alive,
        # so evaluation actors never block the trials that call them.
        options = {"num_gpus": gpus_per_actor} | ({} if cpus_per_actor is None else {"num_cpus": cpus_per_actor})
        # an actor whose node dies is started again on a live one and the call retried: scoring keeps no state
        # between calls (update returns it, compute takes it), so a retry computes the same thing
        options |= {"max_restarts": -1, "max_task_retries": -1}
        remote = ray.remote(**options)(ScorerActor)
        self.config = config
        self.actors = [remote.remote(config, threads_per_actor) for _ in range(num_actors)]
        ray.get([a.metric_names.remote() for a in self.actors])  # surface load errors here, not at first use

    def update(self, images, levels, captions: Sequence[str] | None = None, real_images=None) -> ScoreState:
        n = len(images)
        bounds = np.linspace(0, n, min(len(self.actors), max(n, 1)) + 1).astype(int)
        futures = []
        for actor, lo, hi in zip(self.actors, bounds[:-1], bounds[1:]):
            futures.append(actor.update.remote(
                images[lo:hi], levels[lo:hi],
                None if captions is None else list(captions[lo:hi]),
                None if real_images is None else real_images[lo:hi],
            ))
        from evaluation.scorer import Scorer

        return Scorer.merge(ray.get(futures))

    def compute(self, state: ScoreState) -> MetricResult:
        return ray.get(self.actors[0].compute.remote(state))

    def score(self, images, levels, captions: Sequence[str] | None = None, real_images=None) -> MetricResult:
        return self.compute(self.update(images, levels, captions, real_images))

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
