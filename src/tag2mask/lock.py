"""One owner per folder: an advisory ``fcntl.flock`` on ``<folder>/.lock`` held for the life of the process.

A command that writes into a run directory (or a quasi-superpixel cache folder) takes the folder's lock first; a
second command on the same folder stops at once with one line naming the process that holds it. The operating
system releases a lock when its process ends, however it ends (kill -9 included), so a stale lock is simply taken
over. Workers that are meant to share a folder (``--shard i/n``) take it *shared*: they may run together, but not
beside an exclusive owner. Under ``torchrun`` the lead rank owns the folder for all ranks.

On systems without ``fcntl`` (Windows) locking is skipped.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Iterator
from pathlib import Path

from tag2mask.errors import Tag2MaskError

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # folder -> open descriptor (kept open: closing it would release the lock)


def lock_folder(folder: str | os.PathLike[str], what: str = "folder", *, shared: bool = False) -> None:
    """Take ``folder``'s lock for this process (a no-op if it already holds it).

    Raises:
        Tag2MaskError: another process holds it: "<what> <folder> in use by PID n since <time>".
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        return
    folder = Path(folder).resolve()
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        holder = _read_holder(fd)
        os.close(fd)
        raise Tag2MaskError(f"{what} {folder} in use by {holder}: wait for that command to finish (or stop it), "
                            "or use another folder") from None
    if not shared:  # the owner writes who it is; shared workers leave the first owner's line
        os.ftruncate(fd, 0)
        now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        os.write(fd, f"PID {os.getpid()} since {now}\n".encode())
    _held[folder] = fd


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def holding(folder: str | os.PathLike[str], what: str = "folder", *, shared: bool = False,
            rank: int = 0) -> Iterator[None]:
    """Hold ``folder``'s lock for the block: taken if this process does not hold it yet, and then released at the
    end. An exclusive lock is taken by rank 0 only (under torchrun the lead owns the folder for every rank); a
    shared one by every worker."""
    if (rank != 0 and not shared) or is_locked_by_me(folder):
        yield
        return
    lock_folder(folder, what, shared=shared)
    try:
        yield
    finally:
        release(folder)


def release(folder: str | os.PathLike[str]) -> None:
    """Release this process's lock on ``folder`` (if it holds one)."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)


def release_all() -> None:
    """Release every lock this process holds (tests; a process ending releases them anyway)."""
    while _held:
        _folder, fd = _held.popitem()
        os.close(fd)


def is_locked_by_me(folder: str | os.PathLike[str]) -> bool:
    return Path(folder).resolve() in _held
