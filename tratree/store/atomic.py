"""Atomic file writes: a temp file beside the target, renamed over it only on success."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tratree import interrupts
from tratree.errors import UserError


class OutputError(UserError, OSError):
    """An output that cannot be written (a directory in the way, no permission, a full or read-only
    disk); the message is one line naming the path."""


# errors of the disk itself, whichever write in the block meets them
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temp file next to ``path``; on clean exit fsync and rename it to ``path``.

    On any exception the temp file is removed and ``path`` is left as it was, so a
    reader never sees a half-written output. OutputError when the output cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: cannot write: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OutputError(f"{path}: cannot write: {err.strerror}") from None
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        interrupts.check()  # never commit an output after a Ctrl-C, even one a library swallowed
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if err.errno in _DISK_ERRORS or isinstance(err, IsADirectoryError):
            raise OutputError(f"{path}: cannot write: {err.strerror}") from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir_beside(path: Path) -> Path:
    """A new hidden directory beside ``path``, with the mode the umask gives new directories (not
    mkdtemp's 0700), so a store shared by a group (a lab's NFS, Jobs under another uid) can read
    what is renamed from it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


@contextlib.contextmanager
def directory_written(target: Path) -> Iterator[Path]:
    """A temp directory beside ``target`` to fill; on clean exit it replaces ``target`` whole, on any
    exception it is removed and ``target`` is left as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(target)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def follow_umask(folder: Path) -> None:
    """Give every file under ``folder`` the mode the umask gives new files (safetensors writes 0600)."""
    mode = 0o666 & ~_umask()
    for f in folder.rglob("*"):
        if f.is_file():
            f.chmod(mode)
