"""The synthetic demo dataset: coloured shapes on textured backgrounds, written as a folder dataset.

Five classes, each with its own shape *and* colour family: ``circle`` (reds), ``square`` (blues, rotated),
``triangle`` (greens, rotated), ``ring`` (yellow-orange) and ``cross`` (magentas, rotated). Every instance has
a slightly jittered colour, a shading gradient and per-pixel noise; the background is a smooth random colour
field with fine noise. Each image holds 1–3 objects from 1–2 classes (never none); objects may overlap, later
ones drawn on top, and the mask follows the drawing. A layout in which some tagged class ends up with fewer
than :data:`MIN_VISIBLE` visible pixels is redrawn, so every tag appears in its mask and no other class does.

:func:`make_synthetic_dataset` writes the layout of :mod:`tag2mask.data.folder` (``images/*.png``,
``masks/*.png``, ``train.csv``, ``val.csv``, ``classes.txt``) plus ``synthetic.json`` (the generator
arguments; written last, it marks a complete dataset). Same arguments => byte-identical files: train and val
draw from ``numpy.random.default_rng([seed, 0])`` and ``default_rng([seed, 1])``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from tag2mask.data.folder import FolderDataset
from tag2mask.errors import DataError
from tag2mask.io import atomic_write, read_json, write_json, write_label_png, write_text

log = logging.getLogger(__name__)

SYNTHETIC_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross")
#: Base RGB colour of each class; instances jitter around it.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (205, 45, 40),    # circle: red
    (45, 80, 210),    # square: blue
    (40, 170, 60),    # triangle: green
    (235, 185, 30),   # ring: yellow-orange
    (175, 50, 185),   # cross: magenta
)
MARKER = "synthetic.json"
GENERATOR_VERSION = 1
MIN_VISIBLE = 40


def _smooth_field(rng: np.random.Generator, h: int, w: int, grid: tuple[int, int]) -> np.ndarray:
    """An ``h×w×3`` field bilinearly interpolated from a coarse random grid, values in [-1, 1]."""
    gh, gw = grid
    g = rng.uniform(-1.0, 1.0, size=(gh, gw, 3))
    ys = np.linspace(0.0, gh - 1.0, h)
    xs = np.linspace(0.0, gw - 1.0, w)
    y0 = np.minimum(ys.astype(int), gh - 2)
    x0 = np.minimum(xs.astype(int), gw - 2)
    ty = (ys - y0)[:, None, None]
    tx = (xs - x0)[None, :, None]
    top = g[y0][:, x0] * (1 - tx) + g[y0][:, x0 + 1] * tx
    bottom = g[y0 + 1][:, x0] * (1 - tx) + g[y0 + 1][:, x0 + 1] * tx
    return top * (1 - ty) + bottom * ty


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted, smoothly varying background with fine texture, float ``h×w×3`` in 0..255."""
    grey = rng.uniform(95.0, 150.0)
    tint = rng.uniform(-12.0, 12.0, size=3)
    field = _smooth_field(rng, h, w, (4, 5)) * 30.0
    texture = rng.normal(0.0, 5.0, size=(h, w, 1))
    return grey + tint + field + texture


def _shape_mask(cls: int, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, theta: float) -> np.ndarray:
    """Boolean mask of the shape of class ``cls`` centred at (cy, cx), radius ``r``, rotated by ``theta``."""
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    name = SYNTHETIC_CLASSES[cls]
    if name == "circle":
        return u * u + v * v <= r * r
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if name == "triangle":
        R = 1.2 * r  # circumradius; equilateral, apex towards -v
        s3 = np.sqrt(3.0) / 2.0
        return (v <= R / 2) & (-s3 * u - 0.5 * v <= R / 2) & (s3 * u - 0.5 * v <= R / 2)
    if name == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if name == "cross":
        arm = 0.3 * r
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    raise AssertionError(name)


def _draw_image(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """One ``(image uint8 h×w×3, mask uint8 h×w, sorted class tuple)``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy += 0.5
    xx += 0.5
    side = float(min(h, w))
    n_cls = len(SYNTHETIC_CLASSES)
    while True:
        k = int(rng.integers(1, 3))
        chosen = [int(c) for c in rng.choice(n_cls, size=k, replace=False)]
        n_obj = int(rng.integers(k, 4))
        objs = chosen + [chosen[int(rng.integers(0, k))] for _ in range(n_obj - k)]
        objs = [objs[i] for i in rng.permutation(n_obj)]
        img = _background(rng, h, w)
        mask = np.zeros((h, w), dtype=np.uint8)
        for c in objs:
            r = rng.uniform(0.14, 0.26) * side
            cy = rng.uniform(0.8 * r, h - 0.8 * r)
            cx = rng.uniform(0.8 * r, w - 0.8 * r)
            theta = rng.uniform(0.0, np.pi / 2)
            region = _shape_mask(c, yy, xx, cy, cx, r, theta)
            colour = np.asarray(CLASS_COLOURS[c], dtype=np.float64) + rng.uniform(-18.0, 18.0, size=3)
            gdir = rng.uniform(0.0, 2 * np.pi)
            shade = ((xx - cx) * np.cos(gdir) + (yy - cy) * np.sin(gdir)) / max(r, 1.0) * 12.0
            texture = rng.normal(0.0, 7.0, size=(h, w, 1))
            obj = colour + shade[:, :, None] + texture
            img[region] = obj[region]
            mask[region] = c + 1
        counts = np.bincount(mask.reshape(-1), minlength=n_cls + 1)
        if all(counts[c + 1] >= MIN_VISIBLE for c in chosen):
            return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask, tuple(sorted(chosen))


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def make_synthetic_dataset(
    out_dir: str | Path,
    *,
    n_train: int = 48,
    n_val: int = 16,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
) -> Path:
    """Write the synthetic folder dataset to ``out_dir`` and return its path.

    ``size`` is ``(height, width)``. Deterministic: the same arguments give byte-identical files.
    """
    h, w = int(size[0]), int(size[1])
    if h < 16 or w < 16:
        raise DataError(f"synthetic image size must be at least 16x16, got {size}")
    if n_train < 0 or n_val < 0:
        raise DataError(f"n_train and n_val must be >= 0, got {n_train}, {n_val}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    write_text(out / "classes.txt", "# tag2mask synthetic demo classes\n" + "\n".join(SYNTHETIC_CLASSES) + "\n")
    for split_idx, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        rng = np.random.default_rng([int(seed), split_idx])
        rows = ["image,tags"]
        for i in range(n):
            image, mask, labels = _draw_image(rng, h, w)
            stem = f"{split}_{i:04d}"
            with atomic_write(out / "images" / f"{stem}.png", "wb") as f:
                f.write(_png_bytes(image))
            write_label_png(out / "masks" / f"{stem}.png", mask)
            rows.append(f"{stem}.png," + ";".join(SYNTHETIC_CLASSES[c] for c in labels))
        write_text(out / f"{split}.csv", "\n".join(rows) + "\n")
    write_json(
        out / MARKER,
        {"generator": "tag2mask.data.synthetic", "version": GENERATOR_VERSION, "n_train": n_train,
         "n_val": n_val, "size": [h, w], "seed": int(seed), "classes": list(SYNTHETIC_CLASSES)},
    )
    return out


def is_synthetic_dataset(root: str | Path) -> bool:
    """True when ``root`` holds a complete synthetic dataset (its ``synthetic.json`` marker is readable)."""
    marker = Path(root) / MARKER
    if not marker.is_file():
        return False
    try:
        return read_json(marker).get("generator") == "tag2mask.data.synthetic"
    except (OSError, ValueError, AttributeError):
        return False


class SyntheticDataset(FolderDataset):
    """The synthetic demo dataset; generated at ``root`` with default arguments if it is not there yet."""

    OPTIONS = ()
    KIND = "synthetic"

    def __init__(self, root: str | Path, split: str, *, on_error: str = "raise") -> None:
        root = Path(root)
        if not is_synthetic_dataset(root):
            log.info("no synthetic dataset in %s; generating one (default arguments)", root)
            make_synthetic_dataset(root)
        super().__init__(root, split, on_error=on_error)
