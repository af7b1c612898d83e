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

Two more faults, at the same points, through CONDFACE_FAULT_HOLD_AT (the driver stops at the point and says so; the
harness makes the fault, then lets it go on into it):

    python -m orchestration.crash_points --outage --sample 3 --seed 1 [--outage-s 10]
        the sweep records through an `mlflow server` (SQLite store) the harness starts on 127.0.0.1; at the point
        the server is stopped, and started again on the same store and port --outage-s after the driver went on.
        The sweep must finish in its first command, through the retry path (orchestration/tracking/retry.py):
        no resume, every invariant kept (no create applied twice).
    python -m orchestration.crash_points --node-kill --all-phases | --at ddpm/grid,10@ddpm/grid
        per point a local cluster (infra/local_cluster.py: Ray head + worker node, PostgreSQL, MLflow with auth)
        runs the one-family smoke sweep (ddpm, 2 epochs); the worker node's raylet is SIGKILLed when the driver
        reaches the phase (or its k-th write there). Tune retries the trials that ran there; where Ray cannot
        recover and the driver exits, it is resumed (--max-resumes). Finished = exit 0 within those resumes with
        every invariant kept; the resumes are counted in each point's line.

It prints a line per point and, at the end, the points tried and how many violated an invariant (target 0). Each
point's line also goes to `points-<variant>.tsv` in the work folder: a long run stopped and started again with the
same `--work` tries only the points it lacks (on the same code; points of other code are tried again). `--jobs 2`
tries two points at once, each with a Ray runtime of its own.

    python -m orchestration.crash_points --all --seed 0 --jobs 2 --work ~/crash-all   (again: goes on)
"""

from __future__ import annotations

from orchestration.crash.cli import CrashConfig, main
from orchestration.crash.harness import CrashResult, count_writes, crash_sweep, fault_sweep, toy_data

__all__ = ["crash_sweep", "count_writes", "fault_sweep", "CrashConfig", "CrashResult", "toy_data"]

if __name__ == "__main__":
    main()
