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

from tag2mask.metrics import (
    ConfusionMatrix,
    Protocol,
    confusion_matrix,
    evaluation_report,
    iou_per_class,
    miou,
    report_markdown,
)
from tag2mask.stages.evaluate import sweep_bg_power
from tag2mask.seeding import argmax_seed

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


# ---------------------------------------------------------------------------------------------------------------
# methods, protocol and report


def test_methods_match_the_functions_on_the_reference_case() -> None:
    z, meta = _ref()
    cm = ConfusionMatrix(meta["class_num"], meta["ignore_label"])
    for k in range(meta["n_images"]):
        cm.update(z[f"pred_{k}"], z[f"gt_{k}"])
    np.testing.assert_allclose(cm.iou(), z["cls_IoU"], rtol=1e-12, equal_nan=True)
    assert cm.miou() == pytest.approx(meta["mIoU"], rel=1e-12)
    assert cm.pixel_accuracy() == pytest.approx(np.trace(z["conf_matrix"]) / z["conf_matrix"].sum())


def test_iou_miou_pixel_accuracy_by_hand() -> None:
    gt = np.array([0, 0, 0, 2, 2, 2, 255, 2])
    pred = np.array([0, 0, 1, 2, 2, 0, 1, 255])  # class 1 only predicted, class 3 nowhere, one ignore prediction
    cm = confusion_matrix(pred, gt, 4)
    iou = cm.iou()
    assert iou[0] == pytest.approx(2 / 4)  # TP 2, FN 1 (pred 1), FP 1 (gt 2)
    assert iou[1] == 0.0
    assert iou[2] == pytest.approx(2 / 4)  # TP 2, FN 2 (pred 0 and the ignore prediction)
    assert np.isnan(iou[3])
    assert cm.miou() == pytest.approx(0.5)  # classes 0 and 2 are in the gt
    assert cm.pixel_accuracy() == pytest.approx(4 / 7)  # the ignore prediction is a wrong pixel
    assert np.isnan(ConfusionMatrix(3).pixel_accuracy())


def test_per_class_table() -> None:
    gt = np.array([0, 0, 0, 2, 2, 2, 255, 2])
    pred = np.array([0, 0, 1, 2, 2, 0, 1, 255])
    rows = confusion_matrix(pred, gt, 4).per_class_table(["background", "cat", "dog", "cow"])
    assert [r["class"] for r in rows] == ["background", "cat", "dog", "cow"]
    assert rows[0] == {"id": 0, "class": "background", "iou": pytest.approx(0.5), "gt_pixels": 3,
                       "pred_pixels": 3, "pred_ignore_pixels": 0, "in_mean": True}
    assert rows[1]["iou"] == 0.0 and rows[1]["gt_pixels"] == 0 and rows[1]["pred_pixels"] == 1
    assert rows[1]["in_mean"] is False
    assert rows[2]["gt_pixels"] == 4 and rows[2]["pred_pixels"] == 2 and rows[2]["pred_ignore_pixels"] == 1
    assert rows[3]["iou"] is None and rows[3]["in_mean"] is False
    with pytest.raises(ValueError, match="class names"):
        confusion_matrix(pred, gt, 4).per_class_table(["a", "b"])


def test_protocol_describe() -> None:
    clean = Protocol("VOC train_aug", "SAMS seeds", 10582, 255)
    text = clean.describe()
    assert "VOC train_aug" in text and "SAMS seeds" in text and "10582" in text and "255" in text
    assert "no hyper-parameter was chosen with ground truth" in text
    assert clean.tuned_on_gt == [] and clean.notes == []
    assert Protocol("a", "b", 1).tuned_on_gt is not clean.tuned_on_gt  # no shared mutable default
    tuned = Protocol(
        "COCO train", "SAMS seeds (coarse)", 82081, 255,
        tuned_on_gt=["seeds.coarse.bg_power chosen among 0.3,0.4,0.5 by GT mIoU on train"],
        notes=["checkpoint 6150"],
    )
    text = tuned.describe()
    assert "no hyper-parameter was chosen" not in text
    assert "tuned on ground truth" in text
    assert "seeds.coarse.bg_power chosen among 0.3,0.4,0.5 by GT mIoU on train" in text
    assert "checkpoint 6150" in text


def test_evaluation_report_is_json_and_markdown() -> None:
    gt = np.array([0, 0, 0, 2, 2, 2, 255, 2])
    pred = np.array([0, 0, 1, 2, 2, 0, 1, 255])
    cm = confusion_matrix(pred, gt, 4)
    proto = Protocol("toy", "argmax seeds", 1, tuned_on_gt=["bg_power chosen among 1,2 by GT mIoU on toy"])
    report = evaluation_report(cm, ["background", "cat", "dog", "cow"], proto)
    back = json.loads(json.dumps(report, allow_nan=False))  # strict JSON: NaN written as null
    assert back["miou"] == pytest.approx(0.5)
    assert back["pixel_accuracy"] == pytest.approx(4 / 7)
    assert back["confusion_matrix"] == cm.matrix.tolist()
    assert back["missed"] == [0, 0, 1, 0] and back["pred_ignore_pixels"] == 1
    assert back["classes_in_gt"] == 2 and back["pixels"] == 7
    assert back["per_class"][3]["iou"] is None
    assert back["protocol"]["split"] == "toy" and back["protocol"]["num_images"] == 1
    assert back["protocol"]["tuned_on_gt"] == ["bg_power chosen among 1,2 by GT mIoU on toy"]
    assert "tuned on ground truth" in back["protocol"]["description"]
    assert any("SPEC §13 item 19" in n and "255" in n for n in back["notes"])  # the prediction-ignore masking
    md = report_markdown(report)
    assert "| id | class | IoU (%) | GT pixels | predicted pixels | in mIoU |" in md
    assert "| 2 | dog | 50.00 | 4 | 2 | yes |" in md
    assert "| 3 | cow | n/a | 0 | 0 | no |" in md
    assert "**mIoU: 50.00**" in md
    assert "bg_power chosen among 1,2 by GT mIoU on toy" in md
    # an empty evaluation is still valid JSON
    empty = evaluation_report(ConfusionMatrix(2), ["bg", "fg"], Protocol("none", "nothing", 0))
    assert json.loads(json.dumps(empty, allow_nan=False))["miou"] is None
    assert "n/a" in report_markdown(empty)
    with pytest.raises(ValueError, match="ignores"):
        evaluation_report(cm, ["a", "b", "c", "d"], Protocol("toy", "x", 1, ignore_index=0))


def test_sweep_bg_power_matches_one_matrix_per_power() -> None:
    gen = torch.Generator().manual_seed(0)
    items = []
    for k in range(3):
        h, w = 12 + k, 16
        cam = torch.rand(2, 3, 4, generator=gen).numpy()
        fg = [k, k + 3]
        gt = torch.randint(0, 7, (h, w), generator=gen).numpy().astype(np.uint8)
        gt[0, 0] = 255
        items.append((cam, fg, (h, w), gt))
    powers = [0.5, 1.0, 2.0]
    out = sweep_bg_power(((c, f, s) for c, f, s, _ in items), (g for *_, g in items), powers, 7)
    assert list(out) == powers
    for p in powers:
        cm = ConfusionMatrix(7)
        for cam, fg, size, gt in items:
            cm.update(argmax_seed(cam, fg, size, p), gt)
        assert out[p] == pytest.approx(cm.miou(), rel=1e-12)
    assert len(set(out.values())) > 1  # the exponent matters on this data
    with pytest.raises(ValueError):  # iterators of different lengths
        sweep_bg_power(((c, f, s) for c, f, s, _ in items), (g for *_, g in items[:2]), powers, 7)
    with pytest.raises(ValueError, match="ground truth"):
        sweep_bg_power([(items[0][0], items[0][1], (5, 5))], [items[0][3]], powers, 7)
    with pytest.raises(ValueError, match="empty"):
        sweep_bg_power([], [], [], 7)
