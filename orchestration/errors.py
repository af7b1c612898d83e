"""The one exception type of the orchestration layer: a one-line message naming the problem and the fix."""


class SweepError(Exception):
    """A bad flag, an unreachable cluster or store, an unwritable path. str(err) is one line: problem and fix."""
