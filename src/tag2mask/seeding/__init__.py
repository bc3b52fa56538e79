"""Seeds from CAMs: SAMS on quasi-superpixels and plain argmax seeds (SPEC §3, §8, §9, §11.2).

* :func:`sams_seed` — the SAMS seed of one image (the reference rule by default, options of SPEC §8). The
  superpixels are either an ``S×H×W`` bool mask stack with ``levels`` or a
  :class:`tag2mask.superpixels.Superpixels` (whose stored atoms are used without decoding its masks).
* :func:`sams_scores` — its per-superpixel intermediates (scores, labels, confidences, paint order).
* :func:`precompute_superpixels` / :class:`SeedingIndex` (:meth:`SeedingIndex.from_superpixels`) — the masks'
  atom index (:mod:`tag2mask.superpixels.index`), computed once per image and reused for every CAM and
  hyper-parameter.
* :func:`sams_refine` — SAMS refinement of a segmentation network's probabilities (SPEC §11.2).
* :func:`argmax_seed` (:mod:`tag2mask.seeding.argmax`) — resize, clamp, min-max, background power, argmax
  (SPEC §3, §9).
"""

from __future__ import annotations

from tag2mask.seeding.argmax import argmax_seed
from tag2mask.seeding.sams import BgMethod, Gather, NormFirst, SamsScores, Uncovered, sams_refine, sams_scores, sams_seed
from tag2mask.superpixels.index import SeedingIndex, precompute_superpixels

__all__ = [
    "BgMethod",
    "Gather",
    "NormFirst",
    "SamsScores",
    "SeedingIndex",
    "Uncovered",
    "argmax_seed",
    "precompute_superpixels",
    "sams_refine",
    "sams_scores",
    "sams_seed",
]
