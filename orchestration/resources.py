"""What each kind of Ray work asks for, checked against the cluster's nodes before anything starts.

    grid trial   {cpu: cpus_per_trial, gpu: gpus_per_trial (default 1 when the cluster has GPUs)}
    lone task    the final run and the tasks that sample a saved model (references, final evaluation,
                 CFG sweep, sampler phase): one GPU and a trial's CPUs on a GPU cluster; on a CPU-only
                 cluster every CPU of the largest node (it runs alone, so it may use them all)
    eval actor   {cpu: 0, gpu: gpus_per_eval_actor}

Every request must fit ONE alive node (a task cannot span nodes), and the actors' GPU fractions plus one
GPU trial must fit the cluster, or the sweep would hang waiting; a plan that does not fit is a one-line
SweepError naming the fix. The plan is read from `ray.nodes()` at the start of every phase, so nodes
that join or leave a cluster between phases are seen.
"""

from __future__ import annotations

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


def plan_resources(cfg: SweepConfig, nodes: tuple[dict[str, float], ...] | None = None) -> ResourcePlan:
    """The requests of this sweep on this cluster, validated (SweepError when a request fits no node)."""
    nodes = alive_nodes() if nodes is None else nodes
    if not nodes:
        raise SweepError("the Ray cluster has no alive node: start one (`ray start --head`) or drop --address")
    cluster_gpus = sum(n["gpu"] for n in nodes)
    gpus = cfg.gpus_per_trial if cfg.gpus_per_trial is not None else (1.0 if cluster_gpus > 0 else 0.0)
    grid = {"cpu": float(cfg.cpus_per_trial), "gpu": float(gpus)}
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
        return {"CPU": plan.grid["cpu"], "GPU": 1.0}
    per = max(1.0, float(int(plan.lone["cpu"] // n)))
    fit = sum(int(node["cpu"] // per) for node in plan.nodes)
    if fit < n:
        raise SweepError(f"--final-workers {n} x {per:g} CPU do not fit the cluster's nodes ({fit} would): lower "
                         "--final-workers or add nodes")
    return {"CPU": per}


__all__ = ["ResourcePlan", "plan_resources", "alive_nodes", "final_worker_resources"]
