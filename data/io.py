"""Atomic writes and the inter-process lock: the one idiom every layer uses for files others may read.

* `atomic_write_bytes` / `atomic_write_text`: the content goes to a temporary file in the same
  folder (so the rename never crosses filesystems), is flushed to disk, and `os.replace`s the target.
  A reader sees the old file or the new one, never half of one; a crash leaves at most a hidden
  `.<name>.*.tmp` file beside it.
* `atomic_dir(path)`: yields a new, empty temporary sibling folder to fill; when the block ends
  without an error it takes the place of `path` (an existing `path` is moved aside first and removed
  after, because a folder cannot be renamed over a non-empty one); on an error it is removed and
  `path` is left as it was.
* `file_lock(path)`: an exclusive `fcntl.flock` on the lock file `path` (created if missing, never
  deleted: removing a lock file while another process waits on it would let a third take a second
  lock). Released when the block ends or the process dies. POSIX only.

Typical build-once cache:

    with file_lock(out.parent / f".{out.name}.lock"):
        if not done(out):
            with atomic_dir(out) as tmp:
                build_into(tmp)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file in the same folder + os.replace); returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_write_bytes`); returns `path`."""
    return atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of `path` to fill; on success it replaces `path`, on error it is removed.

    Processes that may write the same `path` at the same time should hold a `file_lock` around it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old / path.name, path)  # put the previous one back
            os.rmdir(old)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | Path, wait_message: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the lock file `path` for the block (other processes calling this wait).

    wait_message: printed to stderr once if the lock is held by someone else when we ask for it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait_message:
                print(wait_message, file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


__all__ = ["atomic_dir", "atomic_write_bytes", "atomic_write_text", "file_lock"]
