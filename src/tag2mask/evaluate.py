"""Seed / segmentation evaluation: confusion matrix, per-class IoU and mIoU (SPEC §9, §13 item 19, Appendix C).

* Confusion matrix rows = ground truth, columns = prediction. Pixels whose ground truth is outside
  ``[0, num_classes)`` (255 = ignore) or equal to ``ignore_index`` are not counted (SPEC §9).
* Predictions outside ``[0, num_classes)`` (e.g. an ignore value 255 in a prediction) never index the matrix
  (the reference's ``bincount`` would mis-index there, SPEC §13 item 19): such a pixel counts as a *miss* of its
  ground-truth class — a false negative, kept in :attr:`ConfusionMatrix.missed` — and as nobody's false positive
  (it is in no column of :attr:`ConfusionMatrix.matrix`). Seeds never contain such values, so for them the
  result is the reference's.
* ``IoU_c = TP / (TP + FP + FN)``; NaN for a class absent from both ground truth and prediction, 0 for a class
  that is only predicted (Appendix C).
* ``mIoU`` = mean of ``IoU_c`` over the classes present in the ground truth (``condition_positive > 0``),
  background included (SPEC §9).

Pure functions on arrays (numpy or torch); no file IO. Accumulate over a split with
``cm = ConfusionMatrix(21); for pred, gt in ...: cm.update(pred, gt)``; then ``miou(cm)``.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

__all__ = ["ConfusionMatrix", "confusion_matrix", "iou_per_class", "miou"]

ArrayLike = Union[np.ndarray, torch.Tensor]


def _to_int_array(x: ArrayLike) -> np.ndarray:
    """A flat int64 numpy array of label values (torch tensors are moved to the CPU)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"label maps must hold integers, got dtype {arr.dtype}")
    return arr.reshape(-1).astype(np.int64, copy=False)


class ConfusionMatrix:
    """Accumulating confusion matrix (SPEC §9), rows = ground truth, columns = prediction.

    Attributes:
        num_classes: ``K`` (21 for VOC, 81 for COCO: background included).
        ignore_index: ground-truth value that is never counted (255); any ground truth outside ``[0, K)`` is
            ignored as well.
        matrix: ``K×K`` int64 counts of (gt, pred) pixel pairs with both in ``[0, K)``.
        missed: ``K`` int64, per ground-truth class, the pixels whose prediction was outside ``[0, K)`` (false
            negatives of that class that appear in no column, SPEC §13 item 19).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.missed = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, pred: ArrayLike, gt: ArrayLike) -> ConfusionMatrix:
        """Add one image (``pred`` and ``gt`` of the same shape); returns ``self``."""
        p, g = _to_int_array(pred), _to_int_array(gt)
        if p.shape != g.shape:
            raise ValueError(f"prediction has {p.size} pixels, ground truth {g.size}")
        k = self.num_classes
        valid_gt = (g >= 0) & (g < k) & (g != self.ignore_index)
        valid_pred = (p >= 0) & (p < k)
        both = valid_gt & valid_pred
        self.matrix += np.bincount(g[both] * k + p[both], minlength=k * k).reshape(k, k)
        self.missed += np.bincount(g[valid_gt & ~valid_pred], minlength=k)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix of the same class count (e.g. from another worker); returns ``self``."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix
        self.missed += other.missed
        return self

    @property
    def true_positive(self) -> np.ndarray:
        return np.diagonal(self.matrix).copy()

    @property
    def condition_positive(self) -> np.ndarray:
        """Ground-truth pixels per class (``TP + FN``), the out-of-range-prediction misses included."""
        return self.matrix.sum(axis=1) + self.missed

    @property
    def predicted_positive(self) -> np.ndarray:
        """Predicted pixels per class (``TP + FP``)."""
        return self.matrix.sum(axis=0)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, pixels={int(self.condition_positive.sum())}, "
            f"missed={int(self.missed.sum())})"
        )


def confusion_matrix(pred: ArrayLike, gt: ArrayLike, num_classes: int, ignore_index: int = 255) -> ConfusionMatrix:
    """Confusion matrix of one prediction against its ground truth (rows = gt); see :class:`ConfusionMatrix`."""
    return ConfusionMatrix(num_classes, ignore_index).update(pred, gt)


def _counts(conf: Union[ConfusionMatrix, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(TP, condition positive, predicted positive)`` of a :class:`ConfusionMatrix` or a plain ``K×K`` array."""
    if isinstance(conf, ConfusionMatrix):
        return conf.true_positive, conf.condition_positive, conf.predicted_positive
    m = np.asarray(conf)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be K×K, got shape {m.shape}")
    return np.diagonal(m).copy(), m.sum(axis=1), m.sum(axis=0)


def iou_per_class(conf: Union[ConfusionMatrix, np.ndarray]) -> np.ndarray:
    """``K`` float64 ``TP / (TP + FP + FN)``: NaN for a class absent from gt and prediction, 0 if only predicted.

    ``conf`` is a :class:`ConfusionMatrix` or a plain ``K×K`` array (rows = gt; then no out-of-range misses).
    """
    tp, cp, pp = _counts(conf)
    denom = (cp + pp - tp).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1.0), np.nan)


def miou(conf: Union[ConfusionMatrix, np.ndarray]) -> float:
    """Mean IoU over the classes present in the ground truth (``condition_positive > 0``), bg included (SPEC §9).

    NaN when the ground truth holds no counted pixel at all.
    """
    _, cp, _ = _counts(conf)
    present = cp > 0
    if not present.any():
        return float("nan")
    return float(iou_per_class(conf)[present].mean())
