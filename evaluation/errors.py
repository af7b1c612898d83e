"""The one exception type of the evaluation layer: a one-line message naming the problem and the fix."""


class EvalError(Exception):
    """Bad evaluation input or a missing model file. str(err) is one line: what is wrong and how to fix it."""
