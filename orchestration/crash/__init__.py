"""The crash-point harness (`python -m orchestration.crash_points`): harness (commands, faults, resumes, the
check), variants (a tracking-server outage, a Ray node killed), cli."""
