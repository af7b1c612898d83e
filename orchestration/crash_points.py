"""`python -m orchestration.crash_points`: kill a sweep at its MLflow writes, resume it, check the record.

Each crash point runs the two-family smoke sweep (ddpm,sd-lora with the sampler phase, on the 16 px toy data the
tests use) as a command in its own process group, with CONDFACE_FAULT_KILL_AT_WRITE (orchestration.faults): the
driver SIGKILLs itself and its local Ray runtime just before that write, as a dying machine would; the harness
then kills what is left of the group and runs `--resume` until the sweep finishes, and checks the record's
invariants (orchestration.crash_record). A clean run first counts the writes (and is checked too). Each store
starts with an earlier sweep's `champion` version per family (the alias must move onto this sweep's).

    python -m orchestration.crash_points --all                  every write point (100s of sweeps: hours)
    python -m orchestration.crash_points --sample 10 --seed 0   a seeded sample of them
    python -m orchestration.crash_points --at 5@ddpm/final       a point: the k-th write, or after a phase starts

It prints a line per point and, at the end, the points tried and how many violated an invariant (target 0).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from data.cli import Parser, add_fields, field_problems, items, setting
from orchestration.crash_record import check_record
from orchestration.faults import KILL_AT_WRITE_ENV, WRITE_LOG_ENV

ROOT = Path(__file__).resolve().parent.parent
KILLED = -signal.SIGKILL


@dataclass(frozen=True)
class CrashConfig:
    all: bool = setting(False, "try every write point of the sweep (counted by a clean run first), in the order "
                               "--seed shuffles them")
    sample: int = setting(0, "try this many write points, drawn with --seed", minimum=0)
    seed: int = setting(0, "the seed of --sample")
    at: tuple[str, ...] = setting((), "try these points (k = the k-th write; k@<phase> = the k-th after the phase "
                                      "starts, e.g. 3@ddpm/final), one sweep each",
                                  parse=items(str, "crash point"))
    work: str = setting("", "the folder of the sweeps (default: a temporary one): a point's logs are kept, its "
                            "store and results only where it broke an invariant")
    timeout_s: float = setting(900.0, "give up on a sweep command after this long", above=0)
    max_resumes: int = setting(3, "resume a killed sweep at most this often", minimum=1)


@dataclass
class CrashResult:
    """One sweep killed at `kills` (one per command, the last command runs to its end)."""

    kills: list[str]
    killed: list[str]  # the harness's `[fault]` lines: where each kill landed
    violations: list[str]
    seconds: float
    logs: list[Path]


def toy_data() -> str:
    """The tests' 16 px toy cache (tests/conftest.py's `data`), in CONDFACE_HOME."""
    from data.synthetic import toy_cache

    return str(toy_cache(size=16, n_train=256, n_val=64, n_test=8, progress=False))


def sweep_command(data: str, work: Path, epochs: int = 1) -> list[str]:
    return [sys.executable, "-m", "orchestration.sweep", "--preset", "smoke", "--model", "ddpm,sd-lora", "--data",
            data, "--no-dashboard", "--tracking-uri", f"sqlite:///{work / 'mlruns.db'}", "--storage-path",
            str(work / "results"), "--sampler-phase", "--epochs", str(epochs)]


def run_command(args: list[str], log: Path, env: dict[str, str], timeout_s: float) -> int:
    """Run `args` in its own process group, output to `log`; afterwards (or at the timeout) SIGKILL whatever of
    the group is left (a killed driver's Ray processes). Returns the exit status (-9: killed)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if rc is None:
            proc.wait()
            out.write(f"\n[crash_points] timed out after {timeout_s:.0f} s\n")
            return 124
    return rc


def earlier_champions(uri: str) -> None:
    """A store with history: each family's registered model already has a version of an earlier sweep, with the
    alias `champion` (which this sweep must move onto its own)."""
    from mlflow.tracking import MlflowClient

    from data.catalogue import CHAMPION_ALIAS

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for family in ("ddpm", "sd-lora"):
        name = f"condface-{family}"
        client.create_registered_model(name)
        version = client.create_model_version(name, f"file:///earlier-sweep/{family}/model")
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)


def crash_sweep(data: str, work: Path, kills: list[str], timeout_s: float = 900.0, max_resumes: int = 3,
                env: dict[str, str] | None = None, epochs: int = 1) -> CrashResult:
    """One sweep in `work`: command i is killed at `kills[i]` (a CONDFACE_FAULT_KILL_AT_WRITE value), then
    resumed without a fault until it finishes (at most `max_resumes` times); then its record is checked."""
    started = time.time()
    shutil.rmtree(work, ignore_errors=True)  # a fresh store and storage path (a point tried before is tried again)
    work.mkdir(parents=True)
    base = {**(env or os.environ), "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "local"}
    base.pop(KILL_AT_WRITE_ENV, None)
    args, logs, killed, violations = sweep_command(data, work, epochs), [], [], []
    earlier_champions(f"sqlite:///{work / 'mlruns.db'}")
    plan = [*kills, *[None] * max_resumes]
    for i, kill in enumerate(plan):
        log = work / f"{i + 1}.log"
        logs.append(log)
        rc = run_command([*args, "--resume"] if i else args, log,
                         {**base, **({KILL_AT_WRITE_ENV: kill} if kill else {})}, timeout_s)
        text = log.read_text(errors="replace")
        fault = [ln for ln in text.splitlines() if ln.startswith("[fault] ")]
        killed += fault
        if rc == 0:
            if kill:
                violations.append(f"the sweep finished before the kill at {kill} (command {i + 1})")
            break
        if not (rc == KILLED and fault):
            tail = " | ".join(text.strip().splitlines()[-3:])[-600:]
            violations.append(f"command {i + 1} ({'killed at ' + kill if kill else 'resume'}) ended {rc}: {tail}")
            if kill is None:
                break
    else:
        violations.append(f"not finished after {max_resumes} resumes")
    try:
        violations += check_record(f"sqlite:///{work / 'mlruns.db'}", work / "results",
                                   logs[-1].read_text(errors="replace"))
    except Exception as err:  # a record too broken to read is a violation, not a harness crash
        violations.append(f"the record could not be read: {type(err).__name__}: {err}")
    return CrashResult(list(kills), killed, violations, time.time() - started, logs)


def count_writes(data: str, work: Path, timeout_s: float) -> list[tuple[int, str, str]]:
    """A clean run (checked like the others): its MLflow writes as (k, method, phase)."""
    writes = work / "writes.tsv"
    result = crash_sweep(data, work, [], timeout_s, 1, env={**os.environ, WRITE_LOG_ENV: str(writes)})
    if result.violations:
        raise SystemExit("error: the clean sweep already breaks the invariants:\n  " + "\n  ".join(result.violations)
                         + f"\n(logs in {work})")
    rows = [line.split("\t") for line in writes.read_text().splitlines()]
    return [(int(k), method, point) for k, method, point in rows]


def points(cfg: CrashConfig, writes: list[tuple[int, str, str]]) -> list[tuple[str, str]]:
    """(kill spec, what it is) for each point to try."""
    described = {str(k): f"{method} in {point}" for k, method, point in writes}
    if cfg.at:
        return [(p, described.get(p, p)) for p in cfg.at]
    ks = [k for k, _, _ in writes]
    n = len(ks) if cfg.all else min(cfg.sample, len(ks))
    ks = random.Random(cfg.seed).sample(ks, n)  # in a seeded order: a run cut short is a fair sample
    return [(str(k), described[str(k)]) for k in ks]


def main(argv: list[str] | None = None) -> None:
    p = Parser(prog="python -m orchestration.crash_points", exit_on_error=False,
               description="Kill the two-family smoke sweep at its MLflow writes, resume it, check its record.")
    add_fields(p, CrashConfig)
    try:
        args = p.parse_args(argv)
    except argparse.ArgumentError as err:
        sys.exit(f"error: {err} (see --help)")
    cfg = CrashConfig(**{k: v for k, v in vars(args).items() if v is not None})
    problems = field_problems(cfg) + ([] if cfg.all or cfg.sample or cfg.at else
                                      ["say which points: --all, --sample N (with --seed) or --at k[,k@phase...]"])
    if problems:
        sys.exit(f"error: {problems[0]}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.time()
    keep = Path(cfg.work) if cfg.work else Path(tempfile.mkdtemp(prefix="condface-crash-"))
    print(f"crash points: work folder {keep}", flush=True)
    data = toy_data()
    writes: list[tuple[int, str, str]] = []
    counted = keep / "clean" / "writes.tsv"
    if not cfg.at and cfg.work and counted.is_file() and (keep / "clean" / "passed").is_file():
        writes = [(int(k), m, p) for k, m, p in (ln.split("\t") for ln in counted.read_text().splitlines())]
        print(f"the sweep makes {len(writes)} MLflow writes (counted before: {counted})", flush=True)
    elif not cfg.at:
        print("counting the sweep's MLflow writes with a clean run ...", flush=True)
        writes = count_writes(data, keep / "clean", cfg.timeout_s)
        (keep / "clean" / "passed").write_text("the clean run kept every invariant\n")
        print(f"the sweep makes {len(writes)} MLflow writes ({time.time() - started:.0f} s)", flush=True)
    todo = points(cfg, writes)
    bad = 0
    for i, (spec, what) in enumerate(todo, 1):
        result = crash_sweep(data, keep / f"point-{spec.replace('/', '_').replace('@', '-at-')}", [spec],
                             cfg.timeout_s, cfg.max_resumes)
        bad += bool(result.violations)
        verdict = "ok" if not result.violations else f"{len(result.violations)} violation(s)"
        print(f"[{i}/{len(todo)}] write {spec} ({what}): {verdict} ({result.seconds:.0f} s)", flush=True)
        for v in result.violations:
            print(f"    {v}", flush=True)
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


__all__ = ["crash_sweep", "count_writes", "CrashConfig", "CrashResult", "toy_data"]

if __name__ == "__main__":
    main()
