"""Quasi-superpixels without SAM: scikit-image's Felzenszwalb or SLIC at three granularities (CPU only).

For users without a GPU and for the offline demo. :class:`CpuSuperpixelGenerator` segments the image three times,
fine → coarse, and takes each granularity as one level of the SAM source's hierarchy (SPEC §7.3 step 2):

* level 0 (subpart) = the fine partition, level 1 (part) = the medium one, level 2 (whole) = the coarse one;
* every level is a partition of the image, each segment one mask. Segments that would feed SAMS noise are merged
  into a neighbour (:func:`merge_segments`): those under ``min_size`` pixels, and thin ones (more than
  ``max_boundary_fraction`` of their pixels on their border). The thin ones are mostly the 1–2 pixel strips that
  Felzenszwalb's Gaussian pre-smoothing (``sigma``) leaves along every sharp edge: without the merge they were
  more than half of the demo's level-2 segments;
* then the hierarchy filter (SPEC §7.3 step 9, :func:`~tag2mask.superpixels.hierarchy.hierarchy_filter`) with
  ``recall_thresh`` (None keeps every mask), so the output is laid out like the SAM source's: whole masks first,
  then the accepted parts, then the accepted subparts. As the wholes tile the image, a part survives only when it
  straddles at least four wholes with under ``recall_thresh`` of its area in each, which is rare: the output is
  essentially the level-2 partition. SAMS paints higher levels over lower ones (SPEC §8 step 7), so without the
  filter the seeds follow the level-2 partition as well.

Masks carry no SAM scores: ``predicted_iou``, ``stability_score`` and ``point_coords`` are NaN, ``crop_box`` is
the whole image. Everything is deterministic (neither method has random state; merges break ties by label).

Granularity and image size (defaults in :data:`DEFAULTS`, tuned on the synthetic demo dataset with
``benchmarks/cpu_superpixels.py``). The values hold for an image of :data:`REFERENCE_AREA` pixels (96×128, the
demo size) and are adapted to an image of area A with ``f = sqrt(A / REFERENCE_AREA)``:

* ``felzenszwalb``: ``scales`` are Felzenszwalb's ``scale`` (its ``k``; intensities in [0, 1]) per level, and
  ``min_size`` its minimum segment size (also the merge threshold); both are multiplied by ``f``. With
  ``k ∝ sqrt(A)`` one scene gives about as many segments at every resolution (checked on skimage's sample photos
  resized to 96–384 px a side), where a fixed ``k`` gives 6–8× more at 4× the side. Defaults:
  ``scales=(5, 15, 40)``, ``sigma=0.5``, ``min_size=20``: on the demo images about 150 / 80 / 27 segments per
  level, oracle mIoU 99.9 % at every level. Natural photos are busier: at VOC size (375 px short side) the defaults
  give 120–240 level-2 segments on skimage's sample photos; ``scales=(20, 60, 160), min_size=50`` gives 16–60.
* ``slic``: ``scales`` are SLIC's ``n_segments`` per level (a count, already resolution-independent), capped at
  ``A / (2 · min_size)`` so that small images do not get pixel-sized superpixels; ``min_size`` (the merge
  threshold) is multiplied by ``f``. Defaults: ``scales=(200, 100, 50)``, ``compactness=10``, ``sigma=0``,
  ``min_size=20``: about 175 / 95 / 42 segments on the demo images (oracle mIoU 99.8 / 99.4 / 98.0 %), 30–42
  level-2 segments on the sample photos at VOC size.

The merge threshold is ``max(2, round(min_size · f))`` pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tag2mask.hashing import config_hash

from .container import Superpixels
from .hierarchy import hierarchy_filter

METHODS: tuple[str, ...] = ("felzenszwalb", "slic")
#: The image area (pixels) at which the ``scales`` / ``min_size`` values hold as given (96×128, the demo size).
REFERENCE_AREA: int = 96 * 128
#: Bumped whenever the segmentation for given parameters changes (part of :attr:`CpuSuperpixelGenerator.params`,
#: so cached superpixels of an older version get another cache key).
VERSION: int = 1

#: Segments with more than this fraction of their pixels on their border are merged (see :func:`merge_segments`).
THIN_BOUNDARY_FRACTION: float = 0.8

DEFAULTS: dict[str, dict[str, Any]] = {
    "felzenszwalb": {"scales": [5.0, 15.0, 40.0], "sigma": 0.5, "min_size": 20,
                     "max_boundary_fraction": THIN_BOUNDARY_FRACTION},
    "slic": {"scales": [200.0, 100.0, 50.0], "compactness": 10.0, "sigma": 0.0, "min_size": 20,
             "max_boundary_fraction": THIN_BOUNDARY_FRACTION},
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
    if out["max_boundary_fraction"] is not None:
        out["max_boundary_fraction"] = float(out["max_boundary_fraction"])
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
    filter); ``params``: ``sigma``, ``min_size``, ``max_boundary_fraction`` and, for SLIC, ``compactness``
    (defaults: :data:`DEFAULTS`). Float images are taken to be RGB in [0, 1].
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
        """A stable hash of the resolved parameters (tag2mask.hashing.config_hash)."""
        return config_hash(self.params)

    def segment(self, image: np.ndarray) -> list[np.ndarray]:
        """The three partitions of ``image``, fine → coarse: H×W int64 label maps with labels 0..n-1 (numbered in
        raster order of each segment's first pixel); no segment is under the merge threshold or thin (see
        :func:`merge_segments`)."""
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
            out.append(merge_segments(labels, img, min_size, p["max_boundary_fraction"]))
        return out

    def generate(self, image: np.ndarray) -> Superpixels:
        """Quasi-superpixels of one H×W×3 uint8 RGB image: levels 2, 1, 0 from the coarse, medium and fine
        partitions, hierarchy-filtered (whole masks first, then accepted parts, then accepted subparts)."""
        fine, medium, coarse = self.segment(image)
        stack, levels = level_masks(coarse, medium, fine, self.params["recall_thresh"])
        return Superpixels.from_masks(stack, levels, preset=self.preset, config_hash=self.config_hash)


def level_masks(coarse: np.ndarray, medium: np.ndarray, fine: np.ndarray,
                recall_thresh: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The masks of three partitions (H×W labels 0..n-1) as levels 2, 1, 0, hierarchy-filtered with
    ``recall_thresh`` (None: all kept). Returns (S×H×W bool, S int64 levels) in the filter's output order: the
    coarse segments, then the accepted medium ones, then the accepted fine ones, each in label order.

    Equal to ``hierarchy_filter`` on the stack of all the masks, without building the masks it would reject for
    sure: a part or subpart whose recall in one whole is already ``>= recall_thresh`` (from the label maps'
    contingency table, the same float64 division of the same integers) can only be rejected, since the container
    only grows, and a rejected mask never joins it; the filter then runs on the wholes and the rest."""
    parts: list[np.ndarray] = []
    for labels in (medium, fine):
        ids = np.arange(int(labels.max()) + 1)
        if recall_thresh is not None:
            m = int(coarse.max()) + 1
            table = np.bincount((labels * m + coarse).reshape(-1), minlength=ids.size * m).reshape(ids.size, m)
            ids = ids[table.max(axis=1) / table.sum(axis=1) < recall_thresh]
        parts.append(ids)
    wholes = np.arange(int(coarse.max()) + 1)
    stack = np.concatenate([
        coarse[None] == wholes[:, None, None],
        medium[None] == parts[0][:, None, None],
        fine[None] == parts[1][:, None, None],
    ])
    levels = np.repeat(np.array([2, 1, 0], np.int64), [wholes.size, parts[0].size, parts[1].size])
    if recall_thresh is not None:
        keep = hierarchy_filter(stack, levels, recall_thresh)
        stack, levels = stack[keep], levels[keep]
    return stack, levels


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


def boundary_fraction(labels: np.ndarray) -> np.ndarray:
    """Per segment of an H×W label map (labels 0..n-1), the fraction of its pixels that have a 4-neighbour in
    another segment: 1 for a strip one or two pixels wide, ``(4s - 4) / s²`` for an s×s square."""
    edge = np.zeros(labels.shape, bool)
    d = labels[:, 1:] != labels[:, :-1]
    edge[:, 1:] |= d
    edge[:, :-1] |= d
    d = labels[1:] != labels[:-1]
    edge[1:] |= d
    edge[:-1] |= d
    n = int(labels.max()) + 1
    return np.bincount(labels.reshape(-1), weights=edge.reshape(-1), minlength=n) / np.bincount(
        labels.reshape(-1), minlength=n
    )


def merge_segments(labels: np.ndarray, image: np.ndarray | None, min_size: int,
                   max_boundary_fraction: float | None = THIN_BOUNDARY_FRACTION) -> np.ndarray:
    """Merge the segments that would feed SAMS noise into a 4-neighbour, until none is left (or one segment
    covers the image). Deterministic. Returns H×W int64 labels 0..n-1 in raster order of first pixels.

    Merged: segments of fewer than ``min_size`` pixels, and thin ones: more than ``max_boundary_fraction`` of their
    pixels on their border (:func:`boundary_fraction`; None: none is thin). The thin ones are mostly the one- or
    two-pixel strips that Felzenszwalb's Gaussian pre-smoothing leaves along sharp edges. Each goes to the
    neighbour whose mean colour in ``image`` (H×W×C, the unsmoothed image) is nearest to its own — a strip along
    an edge to the side its pixels came from; ties, or no ``image``, go to the neighbour with the longest shared
    border, then to the lower label. Each round merges every such segment whose chosen neighbour is not to be
    merged itself (no chains), or, when all of them point at each other, only the smallest (then lowest label).
    """
    lab = relabel_in_raster_order(labels)
    h, w = lab.shape
    pixels = None if image is None else np.asarray(image, np.float64).reshape(h * w, -1)
    while True:
        n = int(lab.max()) + 1
        if n == 1:
            return lab
        flat = lab.reshape(-1)
        sizes = np.bincount(flat, minlength=n)
        bad = sizes < min_size
        if max_boundary_fraction is not None:
            bad |= boundary_fraction(lab) > max_boundary_fraction
        if not bad.any():
            return lab
        a = np.concatenate([lab[:, :-1].reshape(-1), lab[:-1, :].reshape(-1)])
        b = np.concatenate([lab[:, 1:].reshape(-1), lab[1:, :].reshape(-1)])
        cut = a != b
        a, b = np.concatenate([a[cut], b[cut]]), np.concatenate([b[cut], a[cut]])  # both directions
        pairs, border = np.unique(a * n + b, return_counts=True)
        src, dst = pairs // n, pairs % n
        keep = bad[src]
        src, dst, border = src[keep], dst[keep], border[keep]
        if pixels is None:
            dist = np.zeros(src.size)
        else:
            means = np.stack([np.bincount(flat, weights=pixels[:, c], minlength=n) for c in range(pixels.shape[1])],
                             axis=1) / sizes[:, None]
            dist = np.sqrt(((means[src] - means[dst]) ** 2).sum(axis=1))
        # per bad segment: the nearest colour, then the longest border, then the lowest label
        order = np.lexsort((dst, -border, dist, src))
        src, dst = src[order], dst[order]
        first = np.ones(src.size, bool)
        first[1:] = src[1:] != src[:-1]
        target = np.arange(n)
        target[src[first]] = dst[first]
        movers = src[first]  # every bad segment has a neighbour (n > 1)
        safe = movers[~bad[target[movers]]]
        if safe.size == 0:
            safe = movers[[np.lexsort((movers, sizes[movers]))[0]]]
        mapping = np.arange(n)
        mapping[safe] = target[safe]
        lab = relabel_in_raster_order(mapping[lab])
