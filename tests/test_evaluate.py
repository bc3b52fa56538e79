"""Confusion matrix, per-class IoU and mIoU (SPEC §9, §13 item 19, Appendix C).

`tests/data/miou_00.npz` / `.json` were computed by the authors' evaluation code (copied from the project's shared
reference cases).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tag2mask.evaluate import ConfusionMatrix, confusion_matrix, iou_per_class, miou

DATA = Path(__file__).parent / "data"


def _ref() -> tuple[dict[str, np.ndarray], dict]:
    with np.load(DATA / "miou_00.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((DATA / "miou_00.json").read_text())


def test_reference_case_accumulated_over_images() -> None:
    z, meta = _ref()
    cm = ConfusionMatrix(meta["class_num"], meta["ignore_label"])
    for k in range(meta["n_images"]):
        assert cm.update(z[f"pred_{k}"], z[f"gt_{k}"]) is cm
    np.testing.assert_array_equal(cm.matrix, z["conf_matrix"])
    assert (cm.missed == 0).all()
    np.testing.assert_allclose(iou_per_class(cm), z["cls_IoU"], rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(cm.condition_positive > 0, z["valid"])
    assert miou(cm) == pytest.approx(meta["mIoU"], rel=1e-12)
    # the plain K×K matrix gives the same numbers
    np.testing.assert_allclose(iou_per_class(cm.matrix), z["cls_IoU"], rtol=1e-12, equal_nan=True)
    assert miou(z["conf_matrix"]) == pytest.approx(meta["mIoU"], rel=1e-12)


def test_reference_case_per_image_and_merge() -> None:
    z, meta = _ref()
    parts = [confusion_matrix(z[f"pred_{k}"], z[f"gt_{k}"], 21) for k in range(meta["n_images"])]
    for cm, expect in zip(parts, meta["per_image_mIoU"]):
        assert miou(cm) == pytest.approx(expect, rel=1e-12)
    total = ConfusionMatrix(21)
    for cm in parts:
        total.merge(cm)
    np.testing.assert_array_equal(total.matrix, z["conf_matrix"])


def test_torch_inputs() -> None:
    z, _ = _ref()
    a = confusion_matrix(torch.from_numpy(z["pred_0"]), torch.from_numpy(z["gt_0"]), 21)
    b = confusion_matrix(z["pred_0"], z["gt_0"], 21)
    np.testing.assert_array_equal(a.matrix, b.matrix)


def test_prediction_outside_class_range_is_a_miss_in_no_column() -> None:
    gt = np.array([0, 0, 1, 1, 1, 255], np.uint8)
    pred = np.array([0, 255, 1, 1, 255, 1], np.uint8)
    cm = confusion_matrix(pred, gt, 2)
    np.testing.assert_array_equal(cm.matrix, [[1, 0], [0, 2]])  # the 255 predictions index nothing
    np.testing.assert_array_equal(cm.missed, [1, 1])
    np.testing.assert_array_equal(cm.condition_positive, [2, 3])
    np.testing.assert_array_equal(cm.predicted_positive, [1, 2])
    np.testing.assert_allclose(iou_per_class(cm), [1 / 2, 2 / 3])  # FN counted, no FP anywhere
    assert miou(cm) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # negative predictions (signed inputs) too
    cm2 = confusion_matrix(np.array([-1, 0]), np.array([0, 0]), 2)
    np.testing.assert_array_equal(cm2.matrix, [[1, 0], [0, 0]])
    np.testing.assert_array_equal(cm2.missed, [1, 0])


def test_ground_truth_ignore_and_out_of_range_are_not_counted() -> None:
    gt = np.array([255, 7, 0, 2], np.int64)
    pred = np.array([1, 1, 0, 2])
    cm = confusion_matrix(pred, gt, 3)
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 0], [0, 0, 0], [0, 0, 1]])
    # an ignore index inside the class range is honoured as well
    cm0 = confusion_matrix(np.array([0, 1]), np.array([0, 1]), 3, ignore_index=0)
    np.testing.assert_array_equal(cm0.matrix.sum(), 1)


def test_absent_class_is_nan_and_predicted_only_class_is_zero_and_excluded() -> None:
    gt = np.array([[0, 0], [2, 2]])
    pred = np.array([[0, 1], [2, 2]])  # class 1 only predicted, class 3 nowhere
    cm = confusion_matrix(pred, gt, 4)
    iou = iou_per_class(cm)
    assert iou[0] == pytest.approx(0.5) and iou[1] == 0.0 and iou[2] == 1.0 and np.isnan(iou[3])
    assert miou(cm) == pytest.approx((0.5 + 1.0) / 2)  # classes present in the gt: 0 and 2


def test_empty_and_invalid() -> None:
    cm = ConfusionMatrix(3)
    assert np.isnan(iou_per_class(cm)).all()
    assert np.isnan(miou(cm))
    cm.update(np.array([0]), np.array([255]))
    assert np.isnan(miou(cm))
    with pytest.raises(ValueError):
        cm.update(np.zeros(3, np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(ValueError):
        cm.update(np.zeros(3, np.float32), np.zeros(3, np.uint8))
    with pytest.raises(ValueError):
        cm.merge(ConfusionMatrix(4))
    with pytest.raises(ValueError):
        iou_per_class(np.zeros((2, 3)))
