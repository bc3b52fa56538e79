"""The PASCAL VOC colour palette and palette-PNG IO for label maps (0 bg, c+1 class c, 255 ignore)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tag2mask.io import atomic_write


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
