"""Small file helpers shared by every stage: atomic writes, JSON, npz, label PNGs (palette PNGs of label ids).

Every file tag2mask writes goes through :func:`atomic_write` (write to a temporary file in the same folder,
then ``os.replace``), so a run killed at any moment never leaves a half-written file behind. Written files get
the mode the user's umask gives any new file (``0o666 & ~umask``, so usually ``0644``), not the private mode of
the temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image


_UMASK_LOCK = threading.Lock()


def new_file_mode() -> int:
    """The permission bits a new file gets under the current umask (``open`` would create it so)."""
    with _UMASK_LOCK:  # the umask can only be read by setting it; put it straight back
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on clean exit it replaces ``path`` in one step.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp creates 0600; the result is a normal, shareable file
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_stamp(path: str | os.PathLike[str]) -> list[Any]:
    """``[name, size, mtime in ns]`` of a file (``[name, None, None]`` when it cannot be read): what changes when
    the file is replaced or edited, read without opening it."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return [path.name, None, None]
    return [path.name, st.st_size, st.st_mtime_ns]


def stamp_digest(obj: Any) -> str:
    """A short stable digest (16 hex digits of SHA-256) of any JSON-able value, e.g. a list of file stamps."""
    text = json.dumps(obj, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, 16 hex digits (for small files whose content, not date, matters)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_npz(path: str | os.PathLike[str], compressed: bool = True, **arrays: np.ndarray) -> None:
    """Save arrays to ``.npz`` atomically (never pickled: object arrays are refused)."""
    for k, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {k!r} has dtype object; tag2mask never pickles")
    with atomic_write(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` file (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# -- label PNGs: 0 background, c+1 class c, 255 ignore; the VOC palette makes them viewable ---------------------


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard VOC palette: ``n``×3 uint8, colour ``i`` from the bits of ``i`` (255 is light beige)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def write_label_png(path: str | os.PathLike[str], label: np.ndarray) -> None:
    """Write an H×W uint8 label map as a palette PNG (viewable; the pixel values are the label ids), atomically."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be H×W, got shape {label.shape}")
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError("label ids must lie in 0..255")
        label = label.astype(np.uint8)
    label = np.ascontiguousarray(label)
    img = Image.frombuffer("P", (label.shape[1], label.shape[0]), label.tobytes(), "raw", "P", 0, 1)
    img.putpalette(voc_palette().reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with atomic_write(Path(path), "wb") as f:
        f.write(buf.getvalue())


def read_label_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label PNG as H×W uint8 ids. Palette PNGs give their indices; grey PNGs their values."""
    with Image.open(path) as img:
        if img.mode in ("P", "L"):
            return np.array(img, dtype=np.uint8)
        if img.mode in ("I", "I;16", "I;16B", "I;16L"):
            wide = np.array(img)
            if wide.size and (wide.min() < 0 or wide.max() > 255):
                bad = sorted({int(v) for v in np.unique(wide) if not 0 <= v <= 255})[:5]
                raise ValueError(f"{path}: a 16/32-bit label PNG holds values {bad} outside 0..255 (label ids are "
                                 "0..255: save the mask as an 8-bit palette or greyscale PNG)")
            return wide.astype(np.uint8)
        raise ValueError(f"{path}: label PNGs must be palette or greyscale images, got mode {img.mode}")
