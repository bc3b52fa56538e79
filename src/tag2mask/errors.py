"""Errors that tag2mask raises on purpose, so the CLI can print one clear line instead of a traceback."""

from __future__ import annotations

import sys


class Tag2MaskError(Exception):
    """Base class of every error meant for the user: the message alone must say what to do."""


class ConfigError(Tag2MaskError, ValueError):
    """A config key, value or override is wrong."""


class DataError(Tag2MaskError, ValueError):
    """An input file (image, mask, list, CSV, annotation) is missing, unreadable or inconsistent."""


class MissingWeightsError(Tag2MaskError, FileNotFoundError):
    """A model weight file was not found; the message names the file, where it was looked for and how to get it."""


class NotBuiltError(Tag2MaskError):
    """A pipeline stage that this version does not implement yet."""


# -- one line for a failure that is not a Tag2MaskError ----------------------------------------------------------


def distributed_failure_message(e: BaseException) -> str | None:
    """One line naming this rank when ``e`` is a failed or timed-out collective under torchrun, else None."""
    dist_module = sys.modules.get("torch.distributed")
    if dist_module is None or not dist_module.is_available() or not dist_module.is_initialized():
        return None
    text = str(e)
    dist_error = getattr(dist_module, "DistError", ())
    if not (isinstance(e, dist_error) or (isinstance(e, RuntimeError) and any(
            k in text.lower() for k in ("timed out", "timeout", "connection closed", "connection reset")))):
        return None
    rank, world = dist_module.get_rank(), dist_module.get_world_size()
    first = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
    return (f"rank {rank} of {world}: a collective failed ({first}); another rank stopped (its own error is above) "
            "or hangs longer than runtime.process_group_timeout allows. Finished work is kept: fix that rank's "
            "problem and run the same command again")


def system_error_message(e: BaseException) -> str:
    """One line for an operating-system failure: what happened, to which path, and what to do."""
    import errno

    if isinstance(e, MemoryError):
        return ("out of memory: a very large image or batch? Lower the batch size, use a smaller image, or run on a "
                "machine with more memory")
    path = getattr(e, "filename", None)
    where = f" ({path})" if path else ""
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return (f"no space left on the device{where}: free some space, or point the run (--run-dir) or the cache "
                "(TAG2MASK_CACHE) at a disk with room; the same command then resumes")
    if code == errno.EROFS:
        return f"read-only file system{where}: choose a writable folder for the run (--run-dir) or TAG2MASK_CACHE"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}: make the folder writable for you, or choose another one"
    if code == errno.ENOENT:
        return f"no such file or folder{where}"
    return f"{type(e).__name__}: {e.strerror or e}{where}" if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
