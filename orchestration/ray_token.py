"""The token of the sweep's own local Ray runtime, readable by its user only.

Ray 2.60 turns token authentication on for a local runtime and, the first time, writes the token to
~/.ray/auth_token with the process's umask: often mode 644, so any user of the machine could read it and run code
through that runtime's dashboard. The sweep writes the file first, mode 600 from its first byte (a token Ray
accepts: 64 hex digits, as Ray generates), and names the fix for an existing one that others can read.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def private_local_token(home: Path | None = None) -> Path | None:
    """Make sure the token a local runtime will use is private; None when the user configured the token (or turned
    authentication off) themselves."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled" or os.environ.get("RAY_AUTH_TOKEN") \
            or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return None
    path = (home or Path.home()) / ".ray" / "auth_token"  # where Ray reads and writes it by default
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            print(f"warning: the Ray token {path} is readable by other users (mode {mode:o}): chmod 600 {path}",
                  flush=True)
        return path
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return path
