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
    jobs: int = setting(1, "try this many points at once (each a sweep with a Ray runtime of its own)", minimum=1)


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


def code_version() -> str:
    """The committed trees of the code a sweep runs (+dirty when any of it differs from the commit): a point tried
    on other code is tried again."""
    import subprocess

    from orchestration.crash.harness import ROOT

    parts = ("orchestration", "models", "evaluation", "data", "infra")
    git = ["git", "-C", str(ROOT)]
    try:
        trees = subprocess.run([*git, "rev-parse", *(f"HEAD:{d}" for d in parts)], capture_output=True, text=True,
                               check=True).stdout.split()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", *parts], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return "-".join(t[:8] for t in trees) + ("+dirty" if dirty else "")


class Ledger:
    """`points-<variant>.tsv` in the work folder: one line per point tried (spec, violations, seconds, code version), so that
    a long run (--all: hours) stopped and started again with the same --work goes on where it stopped."""

    def __init__(self, path: Path, version: str):
        self.path, self.version = path, version
        rows = [ln.split("\t") for ln in path.read_text().splitlines()] if path.is_file() else []
        self.tried = {spec: int(bad) for spec, bad, _, v in rows if v == self.version}
        self.stale = sum(1 for *_, v in rows if v != self.version)

    def add(self, spec: str, result: CrashResult) -> None:
        with open(self.path, "a") as out:
            out.write(f"{spec}\t{len(result.violations)}\t{result.seconds:.0f}\t{self.version}\n")
        self.tried[spec] = len(result.violations)


def try_points(todo: list[tuple[str, str]], attempt: Callable[[str, Path], CrashResult], keep: Path, jobs: int,
               ledger: Ledger) -> tuple[int, int]:
    """Each point not in the ledger yet, `jobs` at a time: its line printed, its folder cleared unless it broke an
    invariant. Returns (points tried, of them with a violated invariant), the ledger's earlier ones included."""
    from concurrent.futures import ThreadPoolExecutor

    left = [(spec, what) for spec, what in todo if spec not in ledger.tried]
    if len(left) < len(todo):
        print(f"{len(todo) - len(left)} point(s) tried before on this code ({ledger.path}): not again", flush=True)
    if ledger.stale:
        print(f"{ledger.stale} line(s) of {ledger.path} are from other code: those points are tried again", flush=True)

    def one(spec: str) -> CrashResult:
        return attempt(spec, keep / f"point-{spec.replace('/', '_').replace('@', '-at-').replace(':', '-')}")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [(spec, what, pool.submit(one, spec)) for spec, what in left]
        for i, (spec, what, future) in enumerate(futures, 1):
            result = future.result()
            ledger.add(spec, result)
            report(f"[{i}/{len(left)}] {spec} ({what})", result)
    wanted = {spec for spec, _ in todo}
    return len(wanted), sum(1 for spec, bad in ledger.tried.items() if spec in wanted and bad)


def report(head: str, result: CrashResult) -> None:
    verdict = "ok" if not result.violations else f"{len(result.violations)} violation(s)"
    print(f"{head}: {verdict}, {max(len(result.codes) - 1, 0)} resume(s) ({result.seconds:.0f} s)", flush=True)
    for line in [*(k for k in result.killed if k.startswith("[harness]")), *result.violations]:
        print(f"    {line}", flush=True)  # why a held driver was resumed, then what broke
    if not result.violations:
        for path in result.logs[0].parent.iterdir():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.suffix != ".log":
                path.unlink()


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
    # the sweeps it starts (two at a time with --jobs 2) share the cores: OpenMP threads that spin less
    # (docs/measurements.md, "Threads beside other processes")
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    started = time.time()
    keep = Path(cfg.work) if cfg.work else Path(tempfile.mkdtemp(prefix="condface-crash-"))
    keep.mkdir(parents=True, exist_ok=True)
    print(f"crash points: work folder {keep}", flush=True)
    data = toy_data()
    writes = [] if cfg.at or cfg.node_kill else clean_writes(cfg, keep, data, started)
    variant = "outage" if cfg.outage else "node-kill" if cfg.node_kill else "kill"
    ledger = Ledger(keep / f"points-{variant}.tsv", code_version())
    tried, bad = try_points(points(cfg, writes), runner(cfg, data), keep, cfg.jobs, ledger)
    print(f"\ncrash points tried: {tried}; with a violated invariant: {bad}; wall time "
          f"{time.time() - started:.0f} s (work folder {keep}; every point's line: {ledger.path})", flush=True)
    if bad:
        sys.exit(1)
