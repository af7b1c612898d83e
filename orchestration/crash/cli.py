"""`python -m orchestration.crash_points`: its settings, the points they name, and the loop over them."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data.cli import Parser, add_fields, field_problems, items, setting
from orchestration.crash.harness import CrashResult, count_writes, crash_sweep, read_writes, toy_data

# the phases (and points inside the final one) of the node-kill variant's sweep: ddpm, smoke preset
NODE_KILL_PHASES = ("references/real", "ddpm/reference", "ddpm/grid", "ddpm/final", "ddpm/final:trained",
                    "ddpm/final:registered", "ddpm/cfg", "sweep/closing")


@dataclass(frozen=True)
class CrashConfig:
    all: bool = setting(False, "try every write point of the sweep (counted by a clean run first), in the order "
                               "--seed shuffles them")
    sample: int = setting(0, "try this many write points, drawn with --seed", minimum=0)
    seed: int = setting(0, "the seed of --sample")
    at: tuple[str, ...] = setting((), "try these points (k = the k-th write; k@<phase> = the k-th after the phase "
                                      "starts, e.g. 3@ddpm/final; with --node-kill also <phase>), one sweep each",
                                  parse=items(str, "crash point"))
    outage: bool = setting(False, "instead of killing the driver, stop the tracking server (an `mlflow server` "
                                  "the harness starts) at the point for --outage-s: the sweep must finish "
                                  "without a resume")
    outage_s: float = setting(10.0, "how long the tracking server stays down (--outage)", above=0)
    node_kill: bool = setting(False, "instead, on a local cluster (infra/local_cluster.py, started per point), "
                                     "kill the Ray worker node at the point: a phase's start or k@<phase>")
    all_phases: bool = setting(False, "with --node-kill: every phase of its sweep in turn")
    work: str = setting("", "the folder of the sweeps (default: a temporary one): a point's logs are kept, its "
                            "store and results only where it broke an invariant")
    timeout_s: float = setting(900.0, "give up on a sweep command after this long", above=0)
    max_resumes: int = setting(3, "resume a killed sweep at most this often", minimum=1)


def points(cfg: CrashConfig, writes: list[tuple[int, str, str]]) -> list[tuple[str, str]]:
    """(point spec, what it is) for each point to try."""
    if cfg.node_kill and cfg.all_phases:
        return [(p, f"phase {p}") for p in NODE_KILL_PHASES]
    described = {str(k): f"{method} in {point}" for k, method, point in writes}
    if cfg.at:
        return [(p, described.get(p, p)) for p in cfg.at]
    ks = [k for k, _, _ in writes]
    n = len(ks) if cfg.all else min(cfg.sample, len(ks))
    ks = random.Random(cfg.seed).sample(ks, n)  # in a seeded order: a run cut short is a fair sample
    return [(str(k), described[str(k)]) for k in ks]


def problems(cfg: CrashConfig) -> list[str]:
    found = field_problems(cfg)
    if cfg.outage and cfg.node_kill:
        found.append("--outage and --node-kill are two variants: one at a time")
    if cfg.node_kill and not (cfg.at or cfg.all_phases):
        found.append("say which points of --node-kill: --all-phases or --at <phase>[,k@<phase>...]")
    if cfg.all_phases and not cfg.node_kill:
        found.append("--all-phases goes with --node-kill")
    if not (cfg.all or cfg.sample or cfg.at or cfg.all_phases):
        found.append("say which points: --all, --sample N (with --seed) or --at k[,k@phase...]")
    return found


def clean_writes(cfg: CrashConfig, keep: Path, data: str, started: float) -> list[tuple[int, str, str]]:
    """The sweep's MLflow writes: counted by a clean run (or by one before, in --work)."""
    counted = keep / "clean" / "writes.tsv"
    if cfg.work and counted.is_file() and (keep / "clean" / "passed").is_file():
        writes = read_writes(counted)
        print(f"the sweep makes {len(writes)} MLflow writes (counted before: {counted})", flush=True)
        return writes
    print("counting the sweep's MLflow writes with a clean run ...", flush=True)
    writes = count_writes(data, keep / "clean", cfg.timeout_s)
    (keep / "clean" / "passed").write_text("the clean run kept every invariant\n")
    print(f"the sweep makes {len(writes)} MLflow writes ({time.time() - started:.0f} s)", flush=True)
    return writes


def runner(cfg: CrashConfig, data: str) -> Callable[[str, Path], CrashResult]:
    """How one point is tried: the driver killed (and resumed), the tracking server down, or a node killed."""
    if cfg.outage:
        from orchestration.crash.variants import outage_sweep

        return lambda spec, work: outage_sweep(data, work, spec, cfg.outage_s, cfg.timeout_s)
    if cfg.node_kill:
        return lambda spec, work: on_a_fresh_cluster(cfg, data, spec, work)
    return lambda spec, work: crash_sweep(data, work, [spec], cfg.timeout_s, cfg.max_resumes)


def on_a_fresh_cluster(cfg: CrashConfig, data: str, spec: str, work: Path) -> CrashResult:
    """A point of --node-kill: a cluster of its own (it loses its worker node), started and stopped here."""
    from infra import local_cluster as lc
    from orchestration.crash.variants import node_kill_sweep

    directory = Path(tempfile.mkdtemp(prefix="condface-crash-cluster-"))
    try:
        cluster = lc.up(directory)
        return node_kill_sweep(cluster, data, work, spec, "crash-node-kill", timeout_s=cfg.timeout_s,
                               max_resumes=cfg.max_resumes)
    finally:
        lc.down(directory)
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = Parser(prog="python -m orchestration.crash_points", exit_on_error=False,
               description="Kill the two-family smoke sweep at its MLflow writes (or stop its tracking server, "
                           "or kill a Ray node), resume it, check its record.")
    add_fields(p, CrashConfig)
    try:
        args = p.parse_args(argv)
    except argparse.ArgumentError as err:
        sys.exit(f"error: {err} (see --help)")
    cfg = CrashConfig(**{k: v for k, v in vars(args).items() if v is not None})
    if problems(cfg):
        sys.exit(f"error: {problems(cfg)[0]}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.time()
    keep = Path(cfg.work) if cfg.work else Path(tempfile.mkdtemp(prefix="condface-crash-"))
    print(f"crash points: work folder {keep}", flush=True)
    data = toy_data()
    writes = [] if cfg.at or cfg.node_kill else clean_writes(cfg, keep, data, started)
    todo, attempt, bad = points(cfg, writes), runner(cfg, data), 0
    for i, (spec, what) in enumerate(todo, 1):
        result = attempt(spec, keep / f"point-{spec.replace('/', '_').replace('@', '-at-').replace(':', '-')}")
        bad += bool(result.violations)
        verdict = "ok" if not result.violations else f"{len(result.violations)} violation(s)"
        resumes = max(len(result.codes) - 1, 0)
        print(f"[{i}/{len(todo)}] {spec} ({what}): {verdict}, {resumes} resume(s) ({result.seconds:.0f} s)",
              flush=True)
        for line in [*(k for k in result.killed if k.startswith("[harness]")), *result.violations]:
            print(f"    {line}", flush=True)  # why a held driver was resumed, then what broke
        if not result.violations:
            for path in result.logs[0].parent.iterdir():
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.suffix != ".log":
                    path.unlink()
    print(f"\ncrash points tried: {len(todo)}; with a violated invariant: {bad}; wall time "
          f"{time.time() - started:.0f} s (work folder {keep})", flush=True)
    if bad:
        sys.exit(1)
