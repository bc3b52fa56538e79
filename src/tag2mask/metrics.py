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
``cm = ConfusionMatrix(21); for pred, gt in ...: cm.update(pred, gt)``; then ``miou(cm)`` (or ``cm.miou()``).

Reporting (SPEC §9, §13 items 7–9):

* :class:`Protocol` records how a number was obtained — split, label source, image count, ignore handling — and
  every hyper-parameter chosen with ground truth (``tuned_on_gt``), so that a GT-tuned number is never presented as
  a clean one.
* :func:`evaluation_report` → a JSON-able dict (protocol, mIoU, pixel accuracy, per-class rows, confusion matrix);
  :func:`report_markdown` renders it as Markdown.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "ConfusionMatrix",
    "Protocol",
    "confusion_matrix",
    "evaluation_report",
    "iou_per_class",
    "miou",
    "report_markdown",
]

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

    def iou(self) -> np.ndarray:
        """``K`` float64 per-class IoU: NaN if absent from gt and prediction, 0 if only predicted (Appendix C)."""
        return iou_per_class(self)

    def miou(self) -> float:
        """Mean IoU over the classes present in the ground truth, background included (SPEC §9); NaN if none."""
        return miou(self)

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted ground-truth pixels (prediction-ignore pixels count as wrong); NaN if none."""
        total = int(self.condition_positive.sum())
        if total == 0:
            return float("nan")
        return float(self.true_positive.sum()) / total

    def per_class_table(self, class_names: Sequence[str]) -> list[dict[str, Any]]:
        """One JSON-able row per class: ``{"id", "class", "iou", "gt_pixels", "pred_pixels", "pred_ignore_pixels",
        "in_mean"}``.

        ``iou`` is ``None`` for a class absent from both ground truth and prediction (NaN in :meth:`iou`);
        ``gt_pixels`` counts the class's ground-truth pixels (prediction-ignore misses included),
        ``pred_pixels`` the pixels predicted as the class (on counted ground truth), ``pred_ignore_pixels`` its
        ground-truth pixels whose prediction was outside ``[0, K)``; ``in_mean`` says whether the class enters the
        mIoU (present in the ground truth, SPEC §9).
        """
        names = list(class_names)
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        iou = self.iou()
        cp, pp = self.condition_positive, self.predicted_positive
        return [
            {
                "id": k,
                "class": str(names[k]),
                "iou": _json_float(iou[k]),
                "gt_pixels": int(cp[k]),
                "pred_pixels": int(pp[k]),
                "pred_ignore_pixels": int(self.missed[k]),
                "in_mean": bool(cp[k] > 0),
            }
            for k in range(self.num_classes)
        ]

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


# ----------------------------------------------------------------------------------------------------------------
# reporting (SPEC §9, §13 items 7–9 and 19)


def _json_float(x: float) -> Optional[float]:
    """``float(x)``, or ``None`` for NaN (strict JSON has no NaN)."""
    v = float(x)
    return None if math.isnan(v) else v


PRED_IGNORE_NOTE = (
    "prediction values outside [0, num_classes) (e.g. 255 = ignore) are masked explicitly: such a pixel counts as a "
    "miss (false negative) of its ground-truth class and as no class's false positive (SPEC §13 item 19)"
)


@dataclass
class Protocol:
    """How an evaluation was run (SPEC §9), and what was tuned on ground truth (SPEC §13 items 7–9).

    Attributes:
        split: the evaluated split, e.g. ``"VOC train_aug"``.
        label_source: where the predictions come from, e.g. ``"SAMS seeds (VOC fine, p=0.7)"``.
        num_images: images accumulated into the confusion matrix.
        ignore_index: ground-truth value that is not counted (255).
        tuned_on_gt: every choice made by looking at ground truth, one line each, e.g.
            ``"seeds.fine.bg_power chosen among 0.3,0.4,0.5 by GT mIoU on train"``; empty = none.
        notes: free-form extra lines.
    """

    split: str
    label_source: str
    num_images: int
    ignore_index: int = 255
    tuned_on_gt: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """A few human-readable lines: split, label source, image count, ignore handling, GT tuning."""
        lines = [
            f"split: {self.split}",
            f"labels: {self.label_source}",
            f"images: {self.num_images}",
            f"ignore: ground-truth pixels equal to {self.ignore_index} or outside the class range are not counted; "
            "predictions outside the class range count as misses of their ground-truth class",
        ]
        if self.tuned_on_gt:
            lines.append("tuned on ground truth (not a clean held-out number):")
            lines.extend(f"  - {item}" for item in self.tuned_on_gt)
        else:
            lines.append("no hyper-parameter was chosen with ground truth")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def evaluation_report(conf: ConfusionMatrix, class_names: Sequence[str], protocol: Protocol) -> dict[str, Any]:
    """A JSON-able evaluation report (SPEC §9): protocol, mIoU, pixel accuracy, per-class rows, confusion matrix.

    Keys: ``protocol`` (the :class:`Protocol` fields plus its ``description``), ``num_classes``, ``miou``,
    ``pixel_accuracy``, ``classes_in_gt``, ``pixels`` (counted ground-truth pixels), ``pred_ignore_pixels``,
    ``per_class`` (:meth:`ConfusionMatrix.per_class_table`), ``confusion_matrix`` (rows = gt, columns =
    prediction), ``missed`` (per gt class, predictions outside the class range) and ``notes`` (how the numbers
    are computed, the prediction-ignore masking included). NaN values are written as ``None``.
    """
    if conf.ignore_index != protocol.ignore_index:
        raise ValueError(
            f"the confusion matrix ignores {conf.ignore_index} but the protocol says {protocol.ignore_index}"
        )
    table = conf.per_class_table(class_names)
    proto = asdict(protocol)
    proto["description"] = protocol.describe()
    return {
        "protocol": proto,
        "num_classes": conf.num_classes,
        "miou": _json_float(conf.miou()),
        "pixel_accuracy": _json_float(conf.pixel_accuracy()),
        "classes_in_gt": int((conf.condition_positive > 0).sum()),
        "pixels": int(conf.condition_positive.sum()),
        "pred_ignore_pixels": int(conf.missed.sum()),
        "per_class": table,
        "confusion_matrix": conf.matrix.tolist(),
        "missed": conf.missed.tolist(),
        "notes": [
            "IoU_c = TP / (TP + FP + FN); mIoU = mean over the classes present in the ground truth, "
            "background included (SPEC §9)",
            PRED_IGNORE_NOTE,
        ],
    }


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100.0 * x:.2f}"


def report_markdown(report: dict[str, Any]) -> str:
    """Markdown rendering of :func:`evaluation_report`: protocol lines, headline numbers, per-class table."""
    proto = report["protocol"]
    lines = ["## Evaluation", ""]
    for line in proto["description"].splitlines():  # "  - item" lines (GT-tuned choices) become a nested list
        lines.append(f"  - {line.strip()[2:]}" if line.startswith("  - ") else f"- {line}")
    lines += [
        "",
        f"**mIoU: {_pct(report['miou'])}** (over {report['classes_in_gt']} classes present in the ground truth)  ",
        f"pixel accuracy: {_pct(report['pixel_accuracy'])} ({report['pixels']} pixels, "
        f"{report['pred_ignore_pixels']} with an ignore prediction)",
        "",
        "| id | class | IoU (%) | GT pixels | predicted pixels | in mIoU |",
        "|---:|---|---:|---:|---:|:---:|",
    ]
    for row in report["per_class"]:
        name = str(row["class"]).replace("|", "\\|")
        in_mean = "yes" if row["in_mean"] else "no"
        lines.append(
            f"| {row['id']} | {name} | {_pct(row['iou'])} | {row['gt_pixels']} | {row['pred_pixels']} | {in_mean} |"
        )
    notes = report.get("notes", [])
    if notes:
        lines += ["", "Notes:", ""]
        lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines).rstrip() + "\n"
