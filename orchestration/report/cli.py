"""The command line of `python -m orchestration.report`: its flags, and one-line errors with exit status 1.

Its input checks (store missing or unreachable, --out not writable) answer before MLflow or Ray is loaded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from data.catalogue import default_tracking_uri
from data.cli import Parser
from orchestration.errors import SweepError


def build_parser() -> Parser:
    p = Parser(prog="python -m orchestration.report",
               description="The study's tables and figures regenerated from one sweep's MLflow record (read only).")
    p.add_argument("--tracking-uri", help="the sweep's MLflow store (default: sqlite:///<cwd>/mlruns.db)")
    p.add_argument("--experiment", required=True, help="the MLflow experiment, e.g. condface-ddpm-cpu-demo")
    p.add_argument("--run", help="the sweep's parent run id (default: the experiment's latest sweep)")
    p.add_argument("--out", type=Path, help="output folder (default: ./reports/<parent run name>)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a wrong server answers at once, not in minutes
    from orchestration.report.build import write_report
    from orchestration.tracking.credentials import take_credentials

    try:
        uri = take_credentials(args.tracking_uri) or default_tracking_uri()
        out, report = write_report(uri, args.experiment, args.run, args.out)
    except SweepError as err:
        sys.exit(f"error: {err}")
    print(f"report: {out / 'report.html'}  (Markdown: {out / 'report.md'}, {len(report.tables)} tables)")
    for m in report.missing:
        print(f"  lacks: {m}")
