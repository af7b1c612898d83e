"""Metric classes, one job each; all accumulate mergeable sum states (see base.py)."""
