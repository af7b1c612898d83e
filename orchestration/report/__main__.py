"""`python -m orchestration.report`: see orchestration.report."""

from orchestration.report.cli import main

main()
