"""One image's quasi-superpixels (SPEC §7.3 step 10, stored without pickle).

A :class:`Superpixels` holds S masks as COCO compressed RLE (pycocotools ``mask.encode`` on Fortran-ordered uint8)
with their per-mask fields, and the atom decomposition of the masks (:mod:`tag2mask.superpixels.atoms`) that
SAMS seeding (SPEC §8) consumes:

* ``levels`` S int64 (0 subpart, 1 part, 2 whole); ``predicted_iou``, ``stability_score`` S float32 (NaN when
  unknown); ``area`` S int64; ``bbox`` S×4 int64 XYWH in SAM's convention (``w = x_max - x_min``, inclusive
  maxima, ``[0, 0, 0, 0]`` for an empty mask); ``point_coords`` S×2 float64 (x, y; NaN when unknown);
  ``crop_box`` S×4 int64 XYWH (the whole image when unknown); ``size`` (H, W).
* ``atoms`` H×W int32, ``atom_membership`` A×S bool, ``atom_area`` A int64.

On disk, ``save(stem)`` writes ``stem.npz`` (the numeric arrays and the atoms) and ``stem.json`` (the RLE strings,
the size, the generator's preset and config hash), both atomically, never pickled.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from segment_anything.utils.amg import batched_mask_to_box

from tag2mask.errors import DataError
from tag2mask.io import load_npz, read_json, save_npz, write_json

from .atoms import as_bool_masks, compute_atoms
from .hierarchy import as_int_levels

FORMAT = "tag2mask.superpixels"
FORMAT_VERSION = 1

_ARRAY_FIELDS = (
    "levels",
    "predicted_iou",
    "stability_score",
    "area",
    "bbox",
    "point_coords",
    "crop_box",
    "atoms",
    "atom_membership",
    "atom_area",
)


def encode_masks(masks: np.ndarray) -> list[str]:
    """S×H×W bool -> COCO compressed RLE ``counts`` strings (pycocotools, Fortran-ordered uint8)."""
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    return [r["counts"].decode("ascii") for r in mask_utils.encode(fortran)]


def check_rle_strings(counts: list[str], size: tuple[int, int]) -> None:
    """ValueError unless every compressed RLE string is valid and covers exactly H·W pixels."""
    from .annotations import rle_string_to_counts

    h, w = size
    for c in counts:
        runs = rle_string_to_counts(c)
        if (runs < 0).any() or (runs > h * w).any() or int(runs.sum()) != h * w:
            raise ValueError(f"an RLE string does not cover exactly H·W = {h * w} pixels")


def decode_masks(counts: list[str], size: tuple[int, int]) -> np.ndarray:
    """COCO compressed RLE ``counts`` strings of masks of ``size`` (H, W) -> S×H×W bool."""
    h, w = size
    if not counts:
        return np.zeros((0, h, w), bool)
    check_rle_strings(counts, size)  # pycocotools' C decoder trusts its input: a run past H·W writes out of bounds
    rles = [{"size": [h, w], "counts": c.encode("ascii")} for c in counts]
    with warnings.catch_warnings():  # pycocotools' own numpy-2 "copy keyword" notice; harmless
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        decoded = mask_utils.decode(rles)  # H×W×S uint8
    return np.ascontiguousarray(decoded.transpose(2, 0, 1)).astype(bool)


def masks_to_xywh(masks: np.ndarray) -> np.ndarray:
    """S×4 int64 XYWH boxes in SAM's convention (upstream ``batched_mask_to_box``; empty mask -> zeros)."""
    if masks.shape[0] == 0:
        return np.zeros((0, 4), np.int64)
    xyxy = batched_mask_to_box(torch.from_numpy(masks)).numpy().astype(np.int64)
    xyxy[:, 2:] -= xyxy[:, :2]
    return xyxy


def _vector(values: Any, n: int, dtype: Any, width: int | None, fill: Any, name: str) -> np.ndarray:
    shape = (n,) if width is None else (n, width)
    if values is None:
        return np.full(shape, fill, dtype)
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    out = np.asarray(values).astype(dtype)
    if out.size != int(np.prod(shape)):
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}")
    return out.reshape(shape)


class Superpixels:
    """One image's quasi-superpixels: masks (COCO RLE), per-mask fields and their atom decomposition."""

    def __init__(
        self,
        rle_counts: list[str],
        size: tuple[int, int],
        *,
        levels: np.ndarray,
        predicted_iou: np.ndarray,
        stability_score: np.ndarray,
        area: np.ndarray,
        bbox: np.ndarray,
        point_coords: np.ndarray,
        crop_box: np.ndarray,
        atoms: np.ndarray,
        atom_membership: np.ndarray,
        atom_area: np.ndarray,
        preset: str | None = None,
        config_hash: str | None = None,
    ) -> None:
        """Low-level constructor (used by :meth:`from_masks` and :meth:`load`); checks shapes only."""
        n = len(rle_counts)
        h, w = int(size[0]), int(size[1])
        self.rle_counts: list[str] = list(rle_counts)
        self.size: tuple[int, int] = (h, w)
        self.levels = _vector(levels, n, np.int64, None, 0, "levels")
        self.predicted_iou = _vector(predicted_iou, n, np.float32, None, np.nan, "predicted_iou")
        self.stability_score = _vector(stability_score, n, np.float32, None, np.nan, "stability_score")
        self.area = _vector(area, n, np.int64, None, 0, "area")
        self.bbox = _vector(bbox, n, np.int64, 4, 0, "bbox")
        self.point_coords = _vector(point_coords, n, np.float64, 2, np.nan, "point_coords")
        self.crop_box = _vector(crop_box, n, np.int64, 4, 0, "crop_box")
        self.atoms = np.asarray(atoms, np.int32)
        self.atom_membership = np.asarray(atom_membership, bool)
        self.atom_area = np.asarray(atom_area, np.int64)
        n_atoms = self.atom_area.shape[0]
        if self.atoms.shape != (h, w) or self.atom_membership.shape != (n_atoms, n):
            raise ValueError(
                f"atoms {self.atoms.shape} / membership {self.atom_membership.shape} do not fit "
                f"{n} masks of size {(h, w)} with {n_atoms} atoms"
            )
        if self.atoms.size and (self.atoms.min() < 0 or self.atoms.max() >= n_atoms):
            raise ValueError(f"atom ids outside 0..{n_atoms - 1}")
        if n and (self.levels.min() < 0 or self.levels.max() > 2):
            raise ValueError("levels outside 0..2")
        if (self.atom_area < 0).any():
            raise ValueError("negative atom area")
        if not all(isinstance(c, str) for c in self.rle_counts):
            raise ValueError("RLE counts must be strings")
        self.preset = preset
        self.config_hash = config_hash
        self._masks: np.ndarray | None = None

    # ---------------------------------------------------------------------------------------------------------

    @classmethod
    def from_masks(
        cls,
        masks: Any,
        levels: Any,
        *,
        predicted_iou: Any = None,
        stability_score: Any = None,
        point_coords: Any = None,
        crop_box: Any = None,
        preset: str | None = None,
        config_hash: str | None = None,
    ) -> Superpixels:
        """Build from an S×H×W mask stack (numpy or torch) and S levels; ``area``, ``bbox`` and the atoms are
        computed from the masks. Missing scores / points are NaN; a missing ``crop_box`` is the whole image."""
        m = np.ascontiguousarray(as_bool_masks(masks))
        n, h, w = m.shape
        lv = as_int_levels(levels, n)
        decomposition = compute_atoms(m)
        area = decomposition.membership.T.astype(np.int64) @ decomposition.area
        if crop_box is None:
            crop_box = np.tile(np.array([0, 0, w, h], np.int64), (n, 1))
        return cls(
            encode_masks(m),
            (h, w),
            levels=lv,
            predicted_iou=predicted_iou,
            stability_score=stability_score,
            area=area,
            bbox=masks_to_xywh(m),
            point_coords=point_coords,
            crop_box=crop_box,
            atoms=decomposition.atoms,
            atom_membership=decomposition.membership,
            atom_area=decomposition.area,
            preset=preset,
            config_hash=config_hash,
        )

    def __len__(self) -> int:
        return len(self.rle_counts)

    def __repr__(self) -> str:
        return (
            f"Superpixels(n={len(self)}, size={self.size}, levels={np.bincount(self.levels, minlength=3).tolist()}, "
            f"atoms={len(self.atom_area)}, preset={self.preset!r})"
        )

    @property
    def masks(self) -> np.ndarray:
        """S×H×W bool, decoded from the RLEs on first access and cached."""
        if self._masks is None:
            self._masks = decode_masks(self.rle_counts, self.size)
        return self._masks

    @property
    def rles(self) -> list[dict[str, Any]]:
        """The masks as COCO compressed RLE dicts ``{"size": [H, W], "counts": str}``."""
        return [{"size": list(self.size), "counts": c} for c in self.rle_counts]

    # ---------------------------------------------------------------------------------------------------------

    def save(self, path_without_ext: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``<path>.npz`` (arrays + atoms) and ``<path>.json`` (RLEs, size, preset, config hash) atomically.
        Returns the two paths."""
        stem = str(path_without_ext)
        npz_path, json_path = Path(stem + ".npz"), Path(stem + ".json")
        save_npz(npz_path, size=np.asarray(self.size, np.int64), **{k: getattr(self, k) for k in _ARRAY_FIELDS})
        write_json(
            json_path,
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "size": list(self.size),
                "n_masks": len(self),
                "n_atoms": int(len(self.atom_area)),
                "preset": self.preset,
                "config_hash": self.config_hash,
                "rle_counts": self.rle_counts,
            },
        )
        return npz_path, json_path

    @classmethod
    def load(cls, path_without_ext: str | os.PathLike[str]) -> Superpixels:
        """Read what :meth:`save` wrote. DataError naming the files (and the fix) when they are unreadable."""
        stem = str(path_without_ext)
        try:
            return cls._load(stem)
        except DataError:
            raise
        except Exception as e:  # a truncated, corrupt or foreign file: any exception becomes one clear error
            raise DataError(f"{stem}.json / {stem}.npz: unreadable cached quasi-superpixels ({type(e).__name__}: "
                            f"{str(e)[:200]}); delete both files and run tag2mask superpixels again to remake "
                            "them") from None

    @classmethod
    def _load(cls, stem: str) -> Superpixels:
        meta = read_json(stem + ".json")
        if not isinstance(meta, dict):
            raise ValueError("the JSON file does not hold an object")
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{stem}.json is not a {FORMAT} v{FORMAT_VERSION} file")
        arrays = load_npz(stem + ".npz")
        size = tuple(int(v) for v in meta["size"])
        if tuple(arrays["size"].tolist()) != size or len(meta["rle_counts"]) != meta["n_masks"]:
            raise ValueError(f"{stem}.npz and {stem}.json do not belong together")
        check_rle_strings(meta["rle_counts"], size)  # type: ignore[arg-type]
        return cls(
            meta["rle_counts"],
            size,  # type: ignore[arg-type]
            preset=meta.get("preset"),
            config_hash=meta.get("config_hash"),
            **{k: arrays[k] for k in _ARRAY_FIELDS},
        )
