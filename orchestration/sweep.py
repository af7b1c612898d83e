"""`python -m orchestration.sweep`: the study's grid as a Ray Tune sweep, the final run, the CFG sweep, MLflow.

With no flags it runs the embedded default (preset `cpu-demo`, see orchestration.config) for real
on the synthetic faces: estimator, 16-trial DDPM grid, final run, CFG sweep, MLflow record, summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import time
from typing import Any

from data.catalogue import default_tracking_uri
from data.cli import Parser, add_fields, first_line
from orchestration.config import DEFAULT_PRESET, PRESETS, SweepConfig, resolve
from orchestration.errors import SweepError

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
# MLflow's own HTTP retries back off silently for ~4 min per call and re-send creates blindly; the Tracker's retries
# (orchestration.tracking.retry) do it all: they say that the server is unreachable, bound the wait
# (CONDFACE_MLFLOW_OUTAGE_S) and look for what a create made before sending it again
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
# Tune's default reporter prints a wide table every few seconds; the sweep prints its own per-epoch lines.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
# CheckpointConfig(num_to_keep) makes Tune snapshot its state at every checkpoint: wanted (exact resume), not a warning.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per user setting of SweepConfig (its help, type and choices come from the
    field), plus the flags that are not settings (preset, resume, dry run, dashboard)."""
    # exit_on_error=False: a bad value raises ArgumentError, which main() turns into its one-line error
    p = Parser(
        prog="python -m orchestration.sweep", exit_on_error=False,
        description="Run the study's hyperparameter grid (or an Optuna search) as a Ray Tune sweep, retrain the "
                    "best configuration, sweep the guidance scale, and record everything in MLflow.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                   help="study = the study's settings for a GPU cluster; cpu-demo = the embedded 2-core CPU default; "
                        "smoke = a one-minute check")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="SWEEP",
                   help="continue an unfinished sweep: the only one of this experiment, or the one named (its "
                        "directory under --storage-path, or that directory's name); finished phases are skipped")
    p.add_argument("--dry-run", action="store_true", help="print the trial table and exit")
    p.add_argument("--no-dashboard", action="store_true",
                   help="do not start the Ray dashboard with the local Ray runtime")
    add_fields(p, SweepConfig)
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings' flags as parsed (None: not given), without the run-control flags of their own."""
    names = {f.name for f in dataclasses.fields(SweepConfig)} - {"preset", "resume", "dry_run"}
    return {k: v for k, v in vars(args).items() if k in names}


def explicit_settings(args: argparse.Namespace) -> set[str]:
    """The settings the command line named (what --resume must either honour or say it ignores)."""
    return {k for k, v in _settings(args).items() if v is not None}


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    return resolve(args.preset, resume=bool(args.resume), dry_run=args.dry_run, **_settings(args))


# --------------------------------------------------------------------------------------------------
# Checks that run before anything starts, so a bad flag costs seconds and leaves nothing half-written
# --------------------------------------------------------------------------------------------------
def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """A host:port (or ray://host:port) must accept a TCP connection; `auto` is left to Ray."""
    if address is None or address == "auto" or address == "local":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address!r} is not host:port, ray://host:port or auto: e.g. --address 10.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise SweepError(f"cannot reach the Ray cluster at {address} ({err.strerror or err}): start it with "
                         "`ray start --head` there, or drop --address to run a local Ray runtime") from None


def check_storage(path: str) -> None:
    """A local (or mounted shared) directory we can write (a file:// URI names one; remote URIs are refused by
    the config, orchestration.config.storage_dir)."""
    from orchestration.config import storage_dir
    from orchestration.tracking.checks import check_writable_dir

    directory = storage_dir(path)
    if directory.exists() and not directory.is_dir():
        raise SweepError(f"--storage-path {path} is a file, not a directory: pass a directory (a shared filesystem "
                         "on clusters)")
    check_writable_dir(directory, what=f"--storage-path {path}",
                       fix="pass a writable directory (a shared filesystem on clusters)")


def main(argv: list[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(argv)
    except argparse.ArgumentError as err:
        sys.exit(f"error: {err} (see --help)")
    try:
        cfg = config_from_args(args)
        from orchestration.tracking.credentials import take_credentials

        cfg = dataclasses.replace(cfg, tracking_uri=take_credentials(cfg.tracking_uri))
        if cfg.dry_run:
            from orchestration.grid import trial_table

            print(trial_table(cfg))
            return
        from orchestration.tracking.checks import check_tracking_uri

        check_storage(cfg.storage_path)
        check_tracking_uri(cfg.tracking_uri or default_tracking_uri())
        check_address(cfg.address)
        from orchestration.driver import run_sweep

        started = time.time()
        run_sweep(cfg, dashboard=not args.no_dashboard,
                  resume_from=args.resume if isinstance(args.resume, str) else None,
                  explicit=explicit_settings(args))
        print(f"total wall time: {time.time() - started:.0f} s")
    except SweepError as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit("interrupted: continue this sweep with the same command and --resume")
    except Exception as err:  # the other layers' one-line user errors, also when raised inside a Ray task
        from orchestration.evaluate import user_error

        cause = getattr(err, "cause", None)
        for candidate in (err, cause, err.__cause__):
            if user_error(candidate):
                sys.exit(f"error: {first_line(candidate)}")
        raise


if __name__ == "__main__":
    main()
