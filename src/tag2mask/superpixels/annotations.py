"""Quasi-superpixels made by other tools: SAM-style annotations in, :class:`Superpixels` out (no SAM run).

Accepted per image (see :func:`read_sam_annotations`; nothing is ever unpickled):

* a JSON file holding a list of annotation dicts, or ``{"annotations": [...]}`` — what segment_anything's
  ``SamAutomaticMaskGenerator.generate`` returns and ``scripts/amg.py --convert-to-rle`` writes;
* the folder that ``scripts/amg.py`` writes without ``--convert-to-rle``: one binary PNG per mask (``0.png``,
  ``1.png``, …; nonzero = inside) and ``metadata.csv`` (header ``id,area,bbox_x0,…,crop_box_h``, one row per
  mask; an extra ``level`` column is read when present).

An annotation dict has:

* ``segmentation`` (required): COCO RLE ``{"size": [H, W], "counts": ...}`` with ``counts`` either a compressed
  string (pycocotools / SAM ``coco_rle``) or a list of run lengths (SAM ``uncompressed_rle``: column-major runs
  starting with a run of zeros), or an H×W binary array (SAM ``binary_mask``). The size must equal the image's.
* ``level`` (optional): 0 subpart, 1 part, 2 whole. **When no annotation of an image has a level, all its masks
  are taken as level 2 (whole)**; levels given for some annotations only are an error.
* ``predicted_iou``, ``stability_score`` (optional; NaN when missing), ``point_coords`` (optional, ``[[x, y]]``
  as SAM writes it or ``[x, y]``; NaN when missing), ``crop_box`` (optional, XYWH; the whole image when missing).
* ``bbox`` and ``area`` are ignored: both are recomputed from the mask.

Masks are kept in the given order (SAMS paints in that order, SPEC §8) and are not filtered: no thresholds, no
NMS, no hierarchy filter — the annotations are taken as the final quasi-superpixels.

RLE strings are decoded here (vectorised, the pycocotools string format) rather than by pycocotools, whose C
decoder trusts the run lengths: a malformed string from another tool must give a DataError, not a crash.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tag2mask.errors import DataError

from .container import Superpixels

LEVEL_WHEN_MISSING = 2
"""The level of every mask of an image whose annotations carry no ``level`` (whole)."""

AMG_CSV = "metadata.csv"


def find_sam_annotations(import_dir: str | os.PathLike[str], image_id: str) -> Path | None:
    """Where the annotations of ``image_id`` are under ``import_dir``: ``<dir>/<id>.json``, else the amg.py
    folder ``<dir>/<id>/`` (with ``metadata.csv``); None when neither exists."""
    base = Path(import_dir)
    json_path = base / f"{image_id}.json"
    if json_path.is_file():
        return json_path
    folder = base / image_id
    if (folder / AMG_CSV).is_file():
        return folder
    return None


def read_sam_annotations(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The annotation dicts of one image from a JSON file or an amg.py PNG folder (see the module docstring).
    DataError naming the file when it cannot be read or has the wrong shape."""
    path = Path(path)
    if path.is_dir():
        return _read_amg_folder(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read SAM annotations ({e})") from None
    if isinstance(obj, Mapping):
        if "annotations" not in obj:
            raise DataError(f"{path}: expected a list of annotations or {{'annotations': [...]}}, got an object "
                            f"with keys {sorted(obj)[:8]}")
        obj = obj["annotations"]
    if not isinstance(obj, list) or not all(isinstance(a, Mapping) for a in obj):
        raise DataError(f"{path}: expected a list of annotation objects")
    return [dict(a) for a in obj]


def _read_amg_folder(folder: Path) -> list[dict[str, Any]]:
    from PIL import Image

    csv_path = folder / AMG_CSV
    try:
        with open(csv_path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{csv_path}: cannot read ({e})") from None
    anns: list[dict[str, Any]] = []
    for n, row in enumerate(rows):
        where = f"{csv_path} row {n + 2}"
        try:
            ann: dict[str, Any] = {
                "predicted_iou": _float_or_nan(row.get("predicted_iou")),
                "stability_score": _float_or_nan(row.get("stability_score")),
                "point_coords": [[_float_or_nan(row.get("point_input_x")), _float_or_nan(row.get("point_input_y"))]],
            }
            crop = [row.get(f"crop_box_{k}") for k in ("x0", "y0", "w", "h")]
            if all(v not in (None, "") for v in crop):
                ann["crop_box"] = [int(float(v)) for v in crop]  # type: ignore[arg-type]
            if row.get("level") not in (None, ""):
                ann["level"] = int(row["level"])
            png = folder / f"{int(row['id'])}.png"
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: bad value ({e})") from None
        try:
            with Image.open(png) as im:
                ann["segmentation"] = np.asarray(im.convert("L")) > 0
        except (OSError, ValueError) as e:
            raise DataError(f"{png}: cannot read mask PNG ({e})") from None
        anns.append(ann)
    return anns


def _float_or_nan(v: Any) -> float:
    if v is None or v == "":
        return math.nan
    return float(v)


# ---------------------------------------------------------------------------------------------------------------
# RLE
# ---------------------------------------------------------------------------------------------------------------


def rle_string_to_counts(s: str | bytes) -> np.ndarray:
    """pycocotools' compressed RLE string -> int64 run lengths (``rleFrString``, vectorised). ValueError when
    the string is not a valid encoding."""
    raw = s.encode("ascii") if isinstance(s, str) else bytes(s)
    c = np.frombuffer(raw, np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    if (c < 0).any() or (c > 63).any():
        raise ValueError("character outside the RLE alphabet")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("truncated")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    k = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # digit position within its number
    if k.max() > 11:  # more than 60 bits
        raise ValueError("run length too large")
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    negative = (c[ends] & 0x10) != 0
    x = np.where(negative, x - (np.int64(1) << (5 * (k[ends] + 1))), x)
    # the running sums below must not wrap around in int64 (a crafted string could make them): checked in floats
    if x.size and (np.abs(np.cumsum(x[1::2].astype(np.float64))).max(initial=0.0) > 2.0**62
                   or np.abs(np.cumsum(x[2::2].astype(np.float64))).max(initial=0.0) > 2.0**62):
        raise ValueError("run length too large")
    counts = x.copy()  # runs from the third on are stored as differences to the run two before
    counts[3::2] = np.cumsum(x[1::2])[1:]
    counts[4::2] = np.cumsum(x[2::2])[1:]
    return counts


def counts_to_mask(counts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Column-major run lengths (zeros first) -> H×W bool. ValueError unless they are ≥ 0 and cover H·W."""
    h, w = size
    counts = np.asarray(counts)
    if counts.ndim != 1 or (counts.size and not np.issubdtype(counts.dtype, np.integer)):
        raise ValueError("run lengths must be a list of integers")
    counts = counts.astype(np.int64)
    if (counts < 0).any():
        raise ValueError("negative run length")
    if (counts > h * w).any():  # bounded before summing: a sum of huge runs would overflow int64
        raise ValueError(f"a run length is larger than H·W = {h * w}")
    if int(counts.sum()) != h * w:
        raise ValueError(f"run lengths sum to {int(counts.sum())}, not H·W = {h * w}")
    values = (np.arange(counts.size) % 2).astype(bool)
    return np.repeat(values, counts).reshape(w, h).T


def decode_segmentation(seg: Any, size: tuple[int, int]) -> np.ndarray:
    """One annotation's ``segmentation`` (COCO RLE, compressed or not, or a binary H×W array) as H×W bool.
    ValueError on a malformed value or a size other than ``size`` (H, W)."""
    h, w = size
    if isinstance(seg, Mapping):
        if "counts" not in seg or "size" not in seg:
            raise ValueError("an RLE needs 'size' and 'counts'")
        rle_size = tuple(int(v) for v in seg["size"])
        if rle_size != (h, w):
            raise ValueError(f"mask size {list(rle_size)} (H, W) differs from the image size {[h, w]}")
        counts = seg["counts"]
        if isinstance(counts, (str, bytes)):
            counts = rle_string_to_counts(counts)
        return counts_to_mask(np.asarray(counts), (h, w))
    if isinstance(seg, (np.ndarray, list)):
        arr = np.asarray(seg)
        if arr.ndim != 2 or arr.dtype == object:
            raise ValueError("segmentation must be an RLE dict or an H×W binary mask (polygons are not accepted)")
        if arr.shape != (h, w):
            raise ValueError(f"mask size {list(arr.shape)} (H, W) differs from the image size {[h, w]}")
        return arr != 0
    raise ValueError(f"unsupported segmentation of type {type(seg).__name__}")


# ---------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------


def superpixels_from_sam_annotations(
    anns: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    size: tuple[int, int],
    *,
    where: str | os.PathLike[str] | None = None,
    preset: str | None = "import",
    config_hash: str | None = None,
) -> Superpixels:
    """One image's SAM-style annotations (a list, or ``{"annotations": [...]}``) as :class:`Superpixels` of an
    image of ``size`` (H, W), masks in the given order.

    Missing ``level`` on every annotation: all masks are level 2 (whole). DataError (naming ``where`` and the
    annotation) on a malformed annotation, a mask of another size than the image, or levels given for some
    annotations only.
    """
    src = str(where) if where is not None else "annotations"
    if isinstance(anns, Mapping):
        if "annotations" not in anns:
            raise DataError(f"{src}: expected a list of annotations or {{'annotations': [...]}}")
        anns = anns["annotations"]
    if not isinstance(anns, (list, tuple)):
        raise DataError(f"{src}: expected a list of annotations, got {type(anns).__name__}")
    h, w = int(size[0]), int(size[1])
    n = len(anns)
    masks = np.zeros((n, h, w), bool)
    levels = np.full(n, LEVEL_WHEN_MISSING, np.int64)
    predicted_iou = np.full(n, np.nan, np.float32)
    stability = np.full(n, np.nan, np.float32)
    points = np.full((n, 2), np.nan, np.float64)
    crop_box = np.tile(np.array([0, 0, w, h], np.int64), (n, 1))
    has_level = [isinstance(a, Mapping) and a.get("level") is not None for a in anns]
    with_level = any(has_level)
    if with_level and not all(has_level):
        missing = has_level.index(False)
        raise DataError(f"{src}: {sum(has_level)} of {n} annotations have a 'level' (annotation {missing} has "
                        "none); give it for all or for none (none: all masks are taken as level 2, whole)")
    for i, ann in enumerate(anns):
        try:
            if not isinstance(ann, Mapping):
                raise ValueError("not an object")
            if "segmentation" not in ann:
                raise ValueError("no 'segmentation'")
            masks[i] = decode_segmentation(ann["segmentation"], (h, w))
            if with_level:
                lv = ann["level"]
                if isinstance(lv, bool) or float(lv) not in (0.0, 1.0, 2.0):
                    raise ValueError(f"level must be 0, 1 or 2, got {lv!r}")
                levels[i] = int(lv)
            if ann.get("predicted_iou") is not None:
                predicted_iou[i] = float(ann["predicted_iou"])
            if ann.get("stability_score") is not None:
                stability[i] = float(ann["stability_score"])
            if ann.get("point_coords") is not None:
                pt = np.asarray(ann["point_coords"], np.float64)
                if pt.ndim == 2 and pt.shape[0] >= 1:
                    pt = pt[0]  # SAM writes [[x, y]]
                if pt.shape != (2,):
                    raise ValueError(f"point_coords must be [[x, y]] or [x, y], got {ann['point_coords']!r}")
                points[i] = pt
            if ann.get("crop_box") is not None:
                box = np.asarray(ann["crop_box"], np.float64)
                if box.shape != (4,) or not np.all(box == np.round(box)):
                    raise ValueError(f"crop_box must be 4 integers (XYWH), got {ann['crop_box']!r}")
                crop_box[i] = box.astype(np.int64)
        except (ValueError, TypeError, KeyError, OverflowError) as e:
            raise DataError(f"{src}: annotation {i}: {e}") from None
    return Superpixels.from_masks(
        masks,
        levels,
        predicted_iou=predicted_iou,
        stability_score=stability,
        point_coords=points,
        crop_box=crop_box,
        preset=preset,
        config_hash=config_hash,
    )


def annotations_have_levels(anns: Sequence[Mapping[str, Any]]) -> bool:
    """True when the annotations carry levels (False: they will all be taken as level 2)."""
    return any(isinstance(a, Mapping) and a.get("level") is not None for a in anns)
