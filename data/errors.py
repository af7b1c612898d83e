"""The one exception type of the data layer: a one-line message naming the problem and the fix."""


class DataError(Exception):
    """Bad or missing input data. str(err) is a single line: what is wrong, where, and how to fix it."""
