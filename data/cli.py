"""What every command line of the project shares: one-line errors."""

from __future__ import annotations

import argparse
import sys


def first_line(err: BaseException | str) -> str:
    """The first line of an error's message, or its type's name when it has none: what a one-line error shows."""
    text = str(err).strip()
    if text:
        return text.splitlines()[0]
    return type(err).__name__ if isinstance(err, BaseException) else ""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line `error: ...` (and exit status 2) instead of the usage block."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)
