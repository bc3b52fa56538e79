"""Atom decomposition of a stack of overlapping masks (used by the hierarchy filter, SPEC §7.3 step 9, and
stored with every :class:`~tag2mask.superpixels.Superpixels` for SAMS seeding, SPEC §8).

An *atom* is a maximal set of pixels covered by exactly the same set of masks. With S masks over an H×W image:

* ``atoms``       H×W int32, the atom id of every pixel;
* ``membership``  A×S bool, ``membership[a, s]`` is True when mask ``s`` covers atom ``a``;
* ``area``        A int64, pixels per atom (sums to H·W).

Atoms are numbered in the lexicographic order of their membership bytes, so the empty set (pixels covered by no
mask), when it occurs, is atom 0. Every atom has at least one pixel.

The computation is vectorised: each pixel's membership bit-vector is packed into ``ceil(S/8)`` bytes, pixels are
grouped into raster-order runs of identical bytes, and the runs' byte strings are deduplicated with ``np.unique``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Atoms:
    """The atom decomposition of S masks over an H×W image (see the module docstring)."""

    atoms: np.ndarray  # H×W int32
    membership: np.ndarray  # A×S bool
    area: np.ndarray  # A int64


def as_bool_masks(masks: Any) -> np.ndarray:
    """An S×H×W mask stack (numpy array or torch tensor, any dtype; nonzero = inside) as a numpy bool array."""
    if hasattr(masks, "detach"):  # a torch tensor
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be S×H×W, got shape {masks.shape}")
    return masks if masks.dtype == np.bool_ else masks != 0


def pixel_codes(masks: np.ndarray) -> np.ndarray:
    """Pack each pixel's membership: (S, P) bool -> (ceil(S/8), P) uint8 where bit ``j`` of byte ``b`` of pixel
    ``p`` is set when mask ``8b + j`` covers ``p``.

    Eight pixels are handled at once by viewing a bool row as uint64 words: a bool byte is 0 or 1, so shifting a
    word left by ``j < 8`` moves each pixel's bit to position ``j`` of that pixel's own byte.
    """
    n_masks, n_pix = masks.shape
    n_bytes = (n_masks + 7) // 8
    body = n_pix - n_pix % 8
    codes = np.zeros((n_bytes, n_pix), np.uint8)
    words = codes[:, :body].view(np.uint64) if body else None
    shifted = np.empty(body // 8, np.uint64)
    for i in range(n_masks):
        row = np.ascontiguousarray(masks[i])
        b, j = divmod(i, 8)
        if body:
            np.left_shift(row[:body].view(np.uint64), np.uint64(j), out=shifted)
            np.bitwise_or(words[b], shifted, out=words[b])
        if body < n_pix:
            codes[b, body:] |= row[body:].view(np.uint8) << np.uint8(j)
    return codes


def compute_atoms(masks: Any, with_map: bool = True) -> Atoms:
    """The atom decomposition of an S×H×W mask stack (numpy or torch). With ``with_map=False`` the H×W
    ``atoms`` map is skipped (an empty 0×0 array is returned in its place)."""
    m = as_bool_masks(masks)
    n_masks, h, w = m.shape
    n_pix = h * w
    if n_pix == 0:
        return Atoms(np.zeros((h, w), np.int32), np.zeros((0, n_masks), bool), np.zeros(0, np.int64))
    if n_masks == 0:
        atoms = np.zeros((h, w), np.int32) if with_map else np.zeros((0, 0), np.int32)
        return Atoms(atoms, np.zeros((1, 0), bool), np.array([n_pix], np.int64))

    codes = pixel_codes(m.reshape(n_masks, n_pix))  # (n_bytes, P)
    n_bytes = codes.shape[0]

    # Raster-order runs of identical codes: a run starts where any byte differs from the previous pixel's.
    run_start = np.zeros(n_pix, bool)
    run_start[0] = True
    for b in range(n_bytes):
        run_start[1:] |= codes[b, 1:] != codes[b, :-1]
    starts = np.flatnonzero(run_start)
    run_codes = np.ascontiguousarray(codes[:, starts].T)  # (R, n_bytes)
    run_len = np.diff(np.append(starts, n_pix))

    keys = run_codes.view(np.dtype((np.void, n_bytes))).ravel()
    _, first, run_atom = np.unique(keys, return_index=True, return_inverse=True)
    run_atom = run_atom.reshape(-1)
    area = np.bincount(run_atom, weights=run_len, minlength=len(first)).astype(np.int64)
    membership = np.unpackbits(run_codes[first], axis=1, count=n_masks, bitorder="little").astype(bool)

    if with_map:
        atoms = run_atom.astype(np.int32)[np.cumsum(run_start) - 1].reshape(h, w)
    else:
        atoms = np.zeros((0, 0), np.int32)
    return Atoms(atoms, membership, area)
