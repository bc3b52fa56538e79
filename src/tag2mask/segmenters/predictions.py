"""The stage-II prediction file: per-image class probabilities, background channel first.

One ``<image_id>.npz`` per image (written by ``tag2mask predict``, read by ``tag2mask refine``), with

* ``prob`` — ``(1+P)×H×W`` float16 probabilities at the image's own size; channel 0 is the background and
  channel ``j ≥ 1`` holds class ``fg_cls[j−1]``;
* ``fg_cls`` — ``P`` int64 foreground class indices (0-based in the dataset's class list).

This is the layout the reference's refinement loaders produce (SPEC §11.2): by default only the classes that win
the per-pixel argmax somewhere are kept (:func:`present_classes`), and their probabilities are *not*
renormalised, so the background channel and the kept classes need not sum to one. The label map that goes with
a prediction is the argmax over the kept channels (:func:`prediction_labels`), identical to the argmax over all
classes. No pickle: ``numpy.load`` runs with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tag2mask.errors import DataError
from tag2mask.io import save_npz


def present_classes(prob: np.ndarray) -> np.ndarray:
    """The foreground classes (0-based) that win the per-pixel argmax of ``K×H×W`` ``prob`` (bg first) somewhere.

    Ties go to the first maximum (lowest channel), as ``argmax`` does.
    """
    winners = np.unique(np.argmax(prob, axis=0))
    return (winners[winners > 0] - 1).astype(np.int64)


def keep_classes(prob: np.ndarray, fg_cls: np.ndarray) -> np.ndarray:
    """The ``(1+P)×H×W`` stack ``[bg, prob[fg_cls[0]+1], …]`` of a full ``K×H×W`` probability map (no renormalising)."""
    rows = np.concatenate([[0], np.asarray(fg_cls, np.int64) + 1])
    return prob[rows]


def prediction_labels(prob: np.ndarray, fg_cls: np.ndarray) -> np.ndarray:
    """``H×W`` uint8 label map of a ``(1+P)×H×W`` prediction: argmax (first maximum wins), row ``k`` → ``fg_cls[k−1]+1``."""
    lut = np.concatenate([[0], np.asarray(fg_cls, np.int64) + 1]).astype(np.uint8)
    return lut[np.argmax(prob, axis=0)]


def save_prediction(path: str | os.PathLike[str], prob: np.ndarray, fg_cls: np.ndarray) -> None:
    """Write one prediction file atomically (``prob`` stored as float16)."""
    prob = np.asarray(prob)
    fg_cls = np.asarray(fg_cls, np.int64).reshape(-1)
    if prob.ndim != 3 or prob.shape[0] != 1 + len(fg_cls):
        raise ValueError(f"prob must be (1+P)xHxW for {len(fg_cls)} classes, got shape {prob.shape}")
    save_npz(path, prob=prob.astype(np.float16), fg_cls=fg_cls)


def load_prediction(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(prob float32 (1+P)×H×W, fg_cls int64 P)`` of one prediction file; :class:`DataError` when malformed."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            prob = data["prob"].astype(np.float32)
            fg_cls = data["fg_cls"].astype(np.int64).reshape(-1)
    except FileNotFoundError:
        raise DataError(f"prediction file {path} does not exist") from None
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"{path}: not a tag2mask prediction file (needs arrays 'prob' and 'fg_cls'): {e}") from None
    if prob.ndim != 3 or prob.shape[0] != 1 + len(fg_cls):
        raise DataError(f"{path}: 'prob' has shape {prob.shape} but 'fg_cls' lists {len(fg_cls)} classes")
    return prob, fg_cls
