"""Where the sweep's MLflow credentials come from, so that none travels in a command line, a log line or a record.

MLflow itself reads MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (else ~/.mlflow/credentials). The sweep
adds two ways in, both ending in those two variables of its own process (and so never in a param, a tag or
`sweep.json`):

* CONDFACE_MLFLOW_CREDENTIALS=FILE: a file of mode 600 in MLflow's credentials format
  (`[mlflow]`, `mlflow_tracking_username = ...`, `mlflow_tracking_password = ...`). Only its path travels, e.g. in a
  Ray job's runtime_env; the variables already set win over it, as over MLflow's own file.
* `--tracking-uri http://user:password@host:5000`: accepted, moved into the variables, and the URI kept without
  them. A command line is visible to every user of the machine (`ps`), so the sweep says so.
"""

from __future__ import annotations

import configparser
import os
import stat
from pathlib import Path

from data.catalogue import redact_uri, split_credentials
from orchestration.errors import SweepError

CREDENTIALS_FILE_ENV = "CONDFACE_MLFLOW_CREDENTIALS"
USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def read_credentials_file(path: str | Path) -> tuple[str, str]:
    """(username, password) from a mode-600 file in MLflow's credentials format, or SweepError naming the fix."""
    path = Path(path)
    fix = f"write it as `[mlflow]` / `{USERNAME_ENV.lower()} = ...` / `{PASSWORD_ENV.lower()} = ...`, mode 600"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as err:
        raise SweepError(f"{CREDENTIALS_FILE_ENV}={path}: cannot read it ({err.strerror or err}): {fix}") from None
    if mode & 0o077:
        raise SweepError(f"{CREDENTIALS_FILE_ENV}={path} is readable by others (mode {mode:o}): chmod 600 {path}")
    parser = configparser.ConfigParser(interpolation=None)  # a password may hold %
    try:
        parser.read(path)
        section = parser["mlflow"]
        return section[USERNAME_ENV.lower()], section[PASSWORD_ENV.lower()]
    except (configparser.Error, KeyError) as err:
        raise SweepError(f"{CREDENTIALS_FILE_ENV}={path}: no {err} in it: {fix}") from None


def take_credentials(uri: str | None) -> str | None:
    """Put the MLflow credentials of the URI's user info, else of $CONDFACE_MLFLOW_CREDENTIALS, into this process's
    MLFLOW_TRACKING_USERNAME / _PASSWORD; return the URI without user info (what is logged, stored and printed)."""
    bare, username, password = split_credentials(uri) if uri else (uri, None, None)
    if password is not None:
        os.environ[USERNAME_ENV] = username or ""
        os.environ[PASSWORD_ENV] = password
        print(f"--tracking-uri {redact_uri(uri)}: the credentials were moved into {USERNAME_ENV} / {PASSWORD_ENV} "
              "(and are kept out of the record); a command line is visible to every user of this machine, so pass "
              f"them in those variables or in a mode-600 file named by {CREDENTIALS_FILE_ENV}", flush=True)
        return bare
    if os.environ.get(CREDENTIALS_FILE_ENV):
        file_user, file_password = read_credentials_file(os.environ[CREDENTIALS_FILE_ENV])
        os.environ.setdefault(USERNAME_ENV, file_user)
        os.environ.setdefault(PASSWORD_ENV, file_password)
    return uri
