"""What each kind of Ray work asks for, checked against the cluster's nodes before anything starts.

    grid trial   {cpu: cpus_per_trial, gpu: gpus_per_trial (default 1 when the cluster has GPUs)}; cpus_per_trial
                 defaults to 1 on CPUs and to the GPU nodes' CPUs per GPU on a GPU cluster: a GPU trial's
                 DataLoader runs that many CPUs less one as worker processes (`loader_workers`)
    lone task    the final run, the estimator's training and the tasks that sample a saved model (references,
                 final evaluation, CFG sweep, sampler phase): one GPU and a trial's CPUs on a GPU cluster; on a CPU-only
                 cluster every CPU of the largest node (it runs alone, so it may use them all)
    eval actor   {cpu: 0, gpu: gpus_per_eval_actor}

Every request must fit ONE alive node (a task cannot span nodes), and the actors' GPU fractions plus one
GPU trial (or the data-parallel final run's GPUs) must fit the cluster, or the sweep would hang waiting; a plan that does not fit is a one-line
SweepError naming the fix. The plan is read from `ray.nodes()` at the start of every phase, so nodes
that join or leave a cluster between phases are seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestration.config import SweepConfig
from orchestration.errors import SweepError


@dataclass(frozen=True)
class ResourcePlan:
    grid: dict[str, float]
    lone: dict[str, float]
    nodes: tuple[dict[str, float], ...]  # per alive node: {"cpu": n, "gpu": n}

    def describe(self) -> str:
        def fmt(r):
            return f"{r['cpu']:g} CPU" + (f" + {r['gpu']:g} GPU" if r.get("gpu") else "")
        nodes = ", ".join(fmt(n) for n in self.nodes)
        return f"Ray: {len(self.nodes)} node(s) [{nodes}]; each trial {fmt(self.grid)}, the final run and " \
               f"sampling tasks {fmt(self.lone)}"


def alive_nodes() -> tuple[dict[str, float], ...]:
    import ray

    out = []
    for node in ray.nodes():
        if node.get("Alive") or node.get("alive"):
            res = node.get("Resources", {})
            out.append({"cpu": float(res.get("CPU", 0)), "gpu": float(res.get("GPU", 0))})
    return tuple(out)


def _fits(request: dict[str, float], node: dict[str, float]) -> bool:
    return request.get("cpu", 0) <= node["cpu"] + 1e-9 and request.get("gpu", 0) <= node["gpu"] + 1e-9


def _trial_cpus(cfg: SweepConfig, nodes: tuple[dict[str, float], ...], gpus: float) -> float:
    """cpus_per_trial, or by default 1 on CPUs and a GPU trial's share of its node's CPUs (the leanest GPU node's
    CPUs per GPU times the trial's GPUs, so a trial fits any GPU node)."""
    if cfg.cpus_per_trial is not None:
        return float(cfg.cpus_per_trial)
    gpu_nodes = [n for n in nodes if n["gpu"] > 0]
    if gpus <= 0 or not gpu_nodes:
        return 1.0
    return float(max(1, math.floor(min(n["cpu"] / n["gpu"] for n in gpu_nodes) * gpus + 1e-9)))


def loader_workers(resources: dict[str, float]) -> int:
    """DataLoader worker processes for training on `resources` (Ray's {"CPU": n, "GPU": m} of a task): on a GPU,
    every CPU but the training loop's own (at least one), so loading keeps up with the GPU; on CPUs none, since
    the trial's CPUs already compute."""
    if resources.get("GPU", 0) <= 0:
        return 0
    return max(1, int(resources.get("CPU", 1)) - 1)


def plan_resources(cfg: SweepConfig, nodes: tuple[dict[str, float], ...] | None = None) -> ResourcePlan:
    """The requests of this sweep on this cluster, validated (SweepError when a request fits no node)."""
    nodes = alive_nodes() if nodes is None else nodes
    if not nodes:
        raise SweepError("the Ray cluster has no alive node: start one (`ray start --head`) or drop --address")
    cluster_gpus = sum(n["gpu"] for n in nodes)
    gpus = cfg.gpus_per_trial if cfg.gpus_per_trial is not None else (1.0 if cluster_gpus > 0 else 0.0)
    grid = {"cpu": _trial_cpus(cfg, nodes, gpus), "gpu": float(gpus)}
    lone = dict(grid) if gpus > 0 else {"cpu": max(1.0, max(n["cpu"] for n in nodes)), "gpu": 0.0}
    biggest_cpu = max(n["cpu"] for n in nodes)
    biggest_gpu = max(n["gpu"] for n in nodes)
    if not any(_fits(grid, n) for n in nodes):
        raise SweepError(f"a trial asks for {grid['cpu']:g} CPU and {grid['gpu']:g} GPU but no node has that much "
                         f"(largest: {biggest_cpu:g} CPU, {biggest_gpu:g} GPU): lower --gpus-per-trial / cpus_per_trial "
                         "or add a larger node")
    actor = cfg.gpus_per_eval_actor
    if actor > 0:
        if actor > biggest_gpu + 1e-9:
            raise SweepError(f"an evaluation actor asks for {actor:g} GPU but no node has one: pass "
                             "--gpus-per-eval-actor 0 (score on CPU) or add a GPU node")
        need = cfg.eval_actors * actor + grid["gpu"]
        if need > cluster_gpus + 1e-9:
            raise SweepError(f"{cfg.eval_actors} evaluation actor(s) x {actor:g} GPU plus one trial's {grid['gpu']:g} "
                             f"GPU need {need:g} GPUs but the cluster has {cluster_gpus:g}: lower --gpus-per-eval-actor "
                             "or --eval-actors (trials would wait forever)")
    return ResourcePlan(grid=grid, lone=lone, nodes=tuple(nodes))


def final_worker_resources(cfg: SweepConfig, plan: ResourcePlan) -> dict[str, float]:
    """What each of the --final-workers data-parallel workers asks Ray for: one GPU (and a trial's CPUs) on a GPU
    cluster; on CPUs the lone work's CPUs shared out (at least 1 each). Workers may sit on different nodes; the
    cluster must hold all of them at once (they train in lockstep), or SweepError."""
    n = cfg.final_workers
    if plan.lone.get("gpu"):
        gpus = sum(int(node["gpu"]) for node in plan.nodes)
        if gpus < n:
            raise SweepError(f"--final-workers {n} needs {n} GPUs (one each) but the cluster has {gpus}: lower "
                             "--final-workers or add GPU nodes")
        actors = _eval_actor_gpus(cfg)
        if n + actors > gpus + 1e-9:
            raise SweepError(f"--final-workers {n} (one GPU each) and {cfg.eval_actors} evaluation actor(s) x "
                             f"{cfg.gpus_per_eval_actor:g} GPU need {n + actors:g} GPUs but the cluster has {gpus}: "
                             "lower --final-workers or --gpus-per-eval-actor (the workers would wait forever)")
        return {"CPU": plan.grid["cpu"], "GPU": 1.0}
    per = max(1.0, float(int(plan.lone["cpu"] // n)))
    fit = sum(int(node["cpu"] // per) for node in plan.nodes)
    if fit < n:
        raise SweepError(f"--final-workers {n} x {per:g} CPU do not fit the cluster's nodes ({fit} would): lower "
                         "--final-workers or add nodes")
    return {"CPU": per}


def _eval_actor_gpus(cfg: SweepConfig) -> float:
    """Whole GPUs the evaluation actors occupy: Ray packs floor(1 / fraction) of them on one GPU."""
    actor = cfg.gpus_per_eval_actor
    if actor <= 0:
        return 0.0
    if actor >= 1:
        return cfg.eval_actors * float(math.ceil(actor - 1e-9))
    return float(math.ceil(cfg.eval_actors / math.floor(1 / actor + 1e-9)))


__all__ = ["loader_workers", "ResourcePlan", "plan_resources", "alive_nodes", "final_worker_resources"]
