"""What produced a sweep: code, libraries, data and seeds, as `condface.provenance.*` tags of its parent run.

    git_commit, git_dirty      the project's commit and whether tracked files differed from it ("unknown"
                               without git or outside a repository)
    python, torch, diffusers, peft, transformers, ray, mlflow   versions ("not installed" when absent)
    data_manifest_sha256       the sha256 of the data cache's manifest.json (its counts, size, source, checksums)
    data_source                the manifest's `source` (JSON), data_root the cache directory
    seed, seeds                the sweep's seed and what each derived seed is used for

A resumed sweep sets them again: the tags say what produced its last part (`condface.provenance.first_commit`
keeps the commit of the run that started it when that differs).
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "condface.provenance."
LIBRARIES = ("torch", "diffusers", "peft", "transformers", "ray", "mlflow")
UNKNOWN = "unknown"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict[str, str]:
    """{"git_commit": sha or "unknown", "git_dirty": "true" | "false" | "unknown"}."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"git_commit": UNKNOWN, "git_dirty": UNKNOWN}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": UNKNOWN if status is None else str(bool(status)).lower()}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def data_provenance(data_root: str | Path | None) -> dict[str, str]:
    if data_root is None:
        return {"data_manifest_sha256": UNKNOWN, "data_source": UNKNOWN}
    manifest = Path(data_root) / "manifest.json"
    try:
        raw = manifest.read_bytes()
        source = json.loads(raw).get("source", UNKNOWN)
    except (OSError, ValueError) as err:
        return {"data_root": str(data_root), "data_manifest_sha256": f"{UNKNOWN} ({err})", "data_source": UNKNOWN}
    return {"data_root": str(data_root), "data_manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "data_source": json.dumps(source, sort_keys=True) if not isinstance(source, str) else source}


def provenance(data_root: str | Path | None, seed: int) -> dict[str, str]:
    """Everything above as flat strings (without the tag prefix)."""
    return {
        **git_state(), **versions(), **data_provenance(data_root),
        "seed": str(seed),
        "seeds": f"training, grid sampling and per-epoch conditions {seed}; final samples and reference rows "
                 f"{seed + 1}; CFG sweep {seed + 2}; sampler phase {seed + 3}",
    }


def provenance_tags(data_root: str | Path | None, seed: int, earlier: dict[str, Any] | None = None) -> dict[str, str]:
    """The parent run's `condface.provenance.*` tags; `earlier` (the run's current tags) keeps the first commit."""
    tags = {PREFIX + k: v for k, v in provenance(data_root, seed).items()}
    before = (earlier or {}).get(PREFIX + "git_commit")
    if before and before != tags[PREFIX + "git_commit"]:
        tags[PREFIX + "first_commit"] = (earlier or {}).get(PREFIX + "first_commit", before)
    return tags


__all__ = ["provenance", "provenance_tags", "git_state", "versions", "PREFIX"]
