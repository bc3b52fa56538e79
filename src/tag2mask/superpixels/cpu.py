"""Quasi-superpixels without SAM: scikit-image's Felzenszwalb or SLIC at three granularities (CPU only).

For users without a GPU and for the offline demo. :class:`CpuSuperpixelGenerator` segments the image three times,
fine → coarse, and takes each granularity as one level of the SAM source's hierarchy (SPEC §7.3 step 2):

* level 0 (subpart) = the fine partition, level 1 (part) = the medium one, level 2 (whole) = the coarse one;
* every level is a partition of the image: each segment is one mask, segments smaller than ``min_size`` pixels
  are merged into the neighbour they share the longest border with (4-connectivity), so SAMS is not fed noise;
* then the hierarchy filter (SPEC §7.3 step 9, :func:`~tag2mask.superpixels.hierarchy.hierarchy_filter`) with
  ``recall_thresh`` (None keeps every mask), so the output is laid out like the SAM source's: whole masks first,
  then the accepted parts, then the accepted subparts. Since the wholes tile the image, a part survives only when
  it straddles at least four wholes with under ``recall_thresh`` of its area in each; SAMS paints higher levels
  over lower ones (SPEC §8 step 7), so the seeds follow the level-2 partition.

Masks carry no SAM scores: ``predicted_iou``, ``stability_score`` and ``point_coords`` are NaN, ``crop_box`` is
the whole image. Everything is deterministic (no random state in either method).

Granularity and image size (defaults in :data:`DEFAULTS`, tuned on the synthetic demo dataset, see
``benchmarks/cpu_superpixels.py``). The numbers are given for an image of :data:`REFERENCE_AREA` pixels (96×128,
the demo size) and adapted to an image of area A with ``f = sqrt(A / REFERENCE_AREA)``:

* ``felzenszwalb``: ``scales`` are Felzenszwalb's ``scale`` (its ``k``; intensities in [0, 1]) per level and
  ``min_size`` its minimum segment size; both are multiplied by ``f``. With ``k ∝ sqrt(A)`` the number of segments
  of one scene stays about constant across resolutions (checked on skimage's sample photos resized to 96–384 px a
  side), whereas a fixed ``k`` gives ~10× more segments at 4× the side. Defaults: ``scales=(10, 30, 80)``,
  ``sigma=0.5``, ``min_size=20``: on the demo images about 125 / 50 / 23 segments per level.
* ``slic``: ``scales`` are SLIC's ``n_segments`` per level (a count, so already resolution-independent), capped
  at ``A / (2 · min_size)`` so that small images do not get pixel-sized superpixels; ``min_size`` is multiplied by
  ``f``. Defaults: ``scales=(200, 100, 50)``, ``compactness=10``, ``sigma=0``, ``min_size=20``.

The merge step uses ``max(2, round(min_size · f))`` pixels as the threshold, for both methods.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tag2mask.config import config_hash

from .container import Superpixels
from .hierarchy import hierarchy_filter

METHODS: tuple[str, ...] = ("felzenszwalb", "slic")
#: The image area (pixels) at which the ``scales`` / ``min_size`` values hold as given (96×128, the demo size).
REFERENCE_AREA: int = 96 * 128
#: Bumped whenever the segmentation for given parameters changes (part of :attr:`CpuSuperpixelGenerator.params`,
#: so cached superpixels of an older version get another cache key).
VERSION: int = 1

DEFAULTS: dict[str, dict[str, Any]] = {
    "felzenszwalb": {"scales": [10.0, 30.0, 80.0], "sigma": 0.5, "min_size": 20},
    "slic": {"scales": [200.0, 100.0, 50.0], "compactness": 10.0, "sigma": 0.0, "min_size": 20},
}


def cpu_params(method: str = "felzenszwalb", scales: Any = None, *, recall_thresh: float | None = 0.3,
               **params: Any) -> dict[str, Any]:
    """The resolved, JSON-able parameters of a CPU generator (``DEFAULTS[method]`` with the given values)."""
    if method not in DEFAULTS:
        raise ValueError(f"unknown CPU superpixel method {method!r}; choose one of {list(METHODS)}")
    unknown = sorted(set(params) - set(DEFAULTS[method]) - {"scales"})
    if unknown:
        raise ValueError(f"unknown {method} parameter(s) {unknown}; known: {sorted(DEFAULTS[method])}")
    out: dict[str, Any] = {**DEFAULTS[method], **params}
    if scales is not None:
        out["scales"] = scales
    out["scales"] = [float(s) for s in out["scales"]]
    if len(out["scales"]) != 3 or not all(s > 0 for s in out["scales"]):
        raise ValueError(f"scales needs 3 positive values (fine, medium, coarse), got {out['scales']!r}")
    out["min_size"] = int(out["min_size"])
    out["sigma"] = float(out["sigma"])
    if "compactness" in out:
        out["compactness"] = float(out["compactness"])
    out["method"] = method
    out["recall_thresh"] = None if recall_thresh is None else float(recall_thresh)
    out["reference_area"] = REFERENCE_AREA
    out["version"] = VERSION
    return out


class CpuSuperpixelGenerator:
    """Three-level quasi-superpixels from Felzenszwalb or SLIC partitions (see the module docstring).

    ``method``: ``"felzenszwalb"`` or ``"slic"``; ``scales``: per level, fine → coarse (Felzenszwalb ``scale`` or
    SLIC ``n_segments`` at :data:`REFERENCE_AREA`); ``recall_thresh``: the hierarchy filter's threshold (None: no
    filter); ``params``: ``sigma``, ``min_size`` and, for SLIC, ``compactness``.
    """

    def __init__(self, method: str = "felzenszwalb", scales: Any = None, *, recall_thresh: float | None = 0.3,
                 **params: Any) -> None:
        self.params = cpu_params(method, scales, recall_thresh=recall_thresh, **params)
        self.method = method
        self.preset = method  # stored in each Superpixels, as the SAM generator stores its pattern name
        try:
            import skimage.segmentation  # noqa: F401
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ImportError(f"superpixels.source={method} needs scikit-image: pip install scikit-image") from e

    @property
    def config_hash(self) -> str:
        """A stable hash of the resolved parameters (tag2mask.config.config_hash)."""
        return config_hash(self.params)

    def segment(self, image: np.ndarray) -> list[np.ndarray]:
        """The three partitions of ``image``, fine → coarse: H×W int64 label maps with labels 0..n-1 (numbered in
        raster order of each segment's first pixel), every segment at least the merge threshold in size."""
        from skimage.segmentation import felzenszwalb, slic

        img = _as_rgb_float(image)
        h, w = img.shape[:2]
        p = self.params
        f = math.sqrt(h * w / REFERENCE_AREA)
        min_size = max(2, round(p["min_size"] * f))
        out = []
        for scale in p["scales"]:
            if self.method == "felzenszwalb":
                labels = felzenszwalb(img, scale=scale * f, sigma=p["sigma"], min_size=min_size, channel_axis=-1)
            else:
                n = max(1, min(round(scale), (h * w) // (2 * min_size)))
                labels = slic(img, n_segments=n, compactness=p["compactness"], sigma=p["sigma"], start_label=0,
                              enforce_connectivity=True, channel_axis=-1)
            out.append(merge_small_segments(labels, min_size))
        return out

    def generate(self, image: np.ndarray) -> Superpixels:
        """Quasi-superpixels of one H×W×3 uint8 RGB image: levels 2, 1, 0 from the coarse, medium and fine
        partitions, hierarchy-filtered (whole masks first, then accepted parts, then accepted subparts)."""
        fine, medium, coarse = self.segment(image)
        masks, levels = [], []
        for level, labels in ((2, coarse), (1, medium), (0, fine)):
            n = int(labels.max()) + 1
            masks.append(labels[None] == np.arange(n)[:, None, None])
            levels.append(np.full(n, level, np.int64))
        stack, lv = np.concatenate(masks), np.concatenate(levels)
        thresh = self.params["recall_thresh"]
        if thresh is not None:
            keep = hierarchy_filter(stack, lv, thresh)
            stack, lv = stack[keep], lv[keep]
        return Superpixels.from_masks(stack, lv, preset=self.preset, config_hash=self.config_hash)


def _as_rgb_float(image: np.ndarray) -> np.ndarray:
    """H×W×3 float64 in [0, 1] (uint8 / 0..1 floats; a grey H×W image is repeated into three channels)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    return img.astype(np.float64)


def relabel_in_raster_order(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..n-1 in raster order of each segment's first pixel (int64)."""
    flat = np.asarray(labels).reshape(-1)
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse].reshape(np.shape(labels))


def merge_small_segments(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Merge every segment smaller than ``min_size`` pixels into the 4-neighbour segment it shares the longest
    border with (ties: the lower label), until none is left (or one segment covers the image). Deterministic.

    Each round merges all small segments whose chosen neighbour is not small itself (no chains), or, when every
    small segment points at another small one, only the smallest (ties: the lower label). Returns H×W int64 labels
    0..n-1 in raster order."""
    lab = relabel_in_raster_order(labels)
    while True:
        n = int(lab.max()) + 1
        sizes = np.bincount(lab.reshape(-1), minlength=n)
        small = sizes < min_size
        if n == 1 or not small.any():
            return lab
        a = np.concatenate([lab[:, :-1].reshape(-1), lab[:-1, :].reshape(-1)])
        b = np.concatenate([lab[:, 1:].reshape(-1), lab[1:, :].reshape(-1)])
        cut = a != b
        a, b = np.concatenate([a[cut], b[cut]]), np.concatenate([b[cut], a[cut]])  # both directions
        pairs, border = np.unique(a * n + b, return_counts=True)
        src, dst = pairs // n, pairs % n
        # per source segment, the neighbour with the longest border (ties -> lower label: pairs are sorted)
        order = np.lexsort((dst, -border, src))
        src, dst = src[order], dst[order]
        first = np.ones(src.size, bool)
        first[1:] = src[1:] != src[:-1]
        target = np.arange(n)
        target[src[first]] = dst[first]
        movers = np.flatnonzero(small & (target != np.arange(n)))
        if movers.size == 0:  # pragma: no cover - a small segment always has a neighbour when n > 1
            return lab
        safe = movers[~small[target[movers]]]
        if safe.size == 0:
            safe = movers[[np.lexsort((movers, sizes[movers]))[0]]]
        mapping = np.arange(n)
        mapping[safe] = target[safe]
        lab = relabel_in_raster_order(mapping[lab])
