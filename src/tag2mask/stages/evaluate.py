"""The ``evaluate`` stage: a folder of label PNGs (seeds or predictions) against a split's ground truth (SPEC §9).

Every report carries its protocol: split, label source, number of images, ignore handling, and which
hyper-parameters were chosen with ground truth, and on which split (SPEC §13 items 7–9) — the reference picked
several of its values that way, and a number is only comparable when that is said.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tag2mask.config import Config
from tag2mask.errors import DataError, Tag2MaskError
from tag2mask.metrics import ConfusionMatrix, Protocol, evaluation_report, report_markdown
from tag2mask.io import read_label_png, write_json, write_text
from tag2mask.seeding import argmax_seed
from tag2mask.stages.common import open_split, progress

# The reference's values that its authors chose with ground truth (SPEC §8 table, §13 items 7-8).
_REFERENCE_GT_CHOICES: dict[str, dict[str, tuple[Any, str]]] = {
    "voc": {
        "seeds.coarse.bg_power": (0.6, "the reference's value, found by GT mIoU searches on VOC train_aug (SPEC §8)"),
        "seeds.fine.bg_power": (0.7, "the reference's value, found by GT mIoU searches on VOC train_aug (SPEC §8)"),
    },
    "coco": {
        "train.cls.checkpoint": (6150, "the reference's checkpoint, picked by GT validation on COCO train_1250"),
        "train.seg.checkpoint": (45000, "the reference's checkpoint, picked by GT validation on COCO train_1250"),
        "seeds.coarse.bg_power": (0.4, "fixed here; the reference picks it among 0.3/0.4/0.5 by GT mIoU on COCO train"),
    },
}


def _value(config: Config, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def gt_tuned_choices(config: Config) -> list[str]:
    """The config values that were chosen with ground truth (by the reference), as protocol lines."""
    out = []
    for key, (value, why) in _REFERENCE_GT_CHOICES.get(config.data.dataset, {}).items():
        if _value(config, key) == value:
            out.append(f"{key}={value}: {why}")
    return out


def run_evaluate(
    config: Config,
    pred_dir: Path,
    split: str,
    *,
    tuned_on_gt: list[str] | None = None,
    notes: list[str] | None = None,
    limit: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``pred_dir/<id>.png`` against the ground truth of ``split``; returns the report (a dict)."""
    dataset = open_split(config, split)
    if not dataset.has_masks:
        raise Tag2MaskError(f"split {split!r} of {config.data.root} has no ground-truth masks to evaluate against")
    ids = dataset.ids[:limit] if limit else dataset.ids
    num_classes = dataset.num_classes + 1
    conf = ConfusionMatrix(num_classes, ignore_index=config.evaluate.ignore_index)
    per_image: dict[str, float | None] = {}
    for image_id in progress(ids, len(ids), f"evaluate {split}", show_progress):
        path = Path(pred_dir) / f"{image_id}.png"
        if not path.is_file():
            raise DataError(f"prediction {path} is missing (every image of {split} needs one)")
        pred, gt = read_label_png(path), dataset.load_mask(image_id)
        if pred.shape != gt.shape:
            raise DataError(f"{path}: prediction is {pred.shape}, the ground truth is {gt.shape}")
        one = ConfusionMatrix(num_classes, ignore_index=config.evaluate.ignore_index).update(pred, gt)
        conf.merge(one)
        value = one.miou()  # over the classes of this image's ground truth (SPEC §9), as for the split
        per_image[image_id] = None if np.isnan(value) else round(float(value), 6)
    protocol = Protocol(
        split=split,
        label_source=f"{config.data.dataset}: image labels from {config.data.label_source}",
        num_images=len(ids),
        ignore_index=config.evaluate.ignore_index,
        tuned_on_gt=list(tuned_on_gt if tuned_on_gt is not None else gt_tuned_choices(config)),
        notes=[f"predictions: {pred_dir}", *(notes or [])],
    )
    report = evaluation_report(conf, ["background", *dataset.class_names], protocol)
    report["per_image_miou"] = per_image  # the run report picks its best, median and worst examples from these
    return report


def write_report(report: dict[str, Any], stem: Path) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md``."""
    json_path, md_path = Path(f"{stem}.json"), Path(f"{stem}.md")
    write_json(json_path, report)
    write_text(md_path, report_markdown(report))
    return json_path, md_path


def miou_percent(report: dict[str, Any]) -> float:
    """The report's mIoU in percent."""
    value = report["miou"]
    return float("nan") if value is None else 100.0 * float(value)


def all_background_miou(config: Config, split: str, limit: int | None = None) -> float:
    """mIoU (%) of predicting background everywhere: the floor any seed must beat."""
    dataset = open_split(config, split)
    ids = dataset.ids[:limit] if limit else dataset.ids
    conf = ConfusionMatrix(dataset.num_classes + 1, ignore_index=config.evaluate.ignore_index)
    for image_id in ids:
        gt = dataset.load_mask(image_id)
        conf.update(np.zeros_like(gt), gt)
    return 100.0 * float(conf.miou())


def argmax_sweep(config: Config, cams_dir: Path, split: str, limit: int | None = None,
                 clip_es: bool = False) -> dict[float, float]:
    """mIoU (0..1) of plain argmax seeds of the CAMs in ``cams_dir`` for every ``evaluate.argmax_bg_powers``.

    The best power is chosen with ground truth: label the result so (SPEC §13 items 7–8). An image without a CAM
    file (no positive label) counts as an all-background seed. ``clip_es``: training-free CAMs, whose argmax seeds
    are CLIP-ES's (its float16 maps at the image size, α = the power; CONTEXT §2.5).
    """
    from tag2mask.cam.clip_es import clip_es_highres
    from tag2mask.stages.cams import load_cam_file

    dataset = open_split(config, split)
    ids = dataset.ids[:limit] if limit else dataset.ids

    def cams():
        for image_id in ids:
            path = Path(cams_dir) / f"{image_id}.npz"
            if path.is_file():
                z = load_cam_file(path)
                size = tuple(int(v) for v in z["size"])
                yield (clip_es_highres(z["cam"], size) if clip_es else z["cam"]), z["fg_cls"], size
            else:
                yield np.zeros((0, 1, 1), np.float32), np.zeros(0, np.int64), dataset.load_mask(image_id).shape

    gts = (dataset.load_mask(i) for i in ids)
    return sweep_bg_power(cams(), gts, list(config.evaluate.argmax_bg_powers), dataset.num_classes + 1,
                          config.evaluate.ignore_index, normalise=not clip_es)


def sweep_bg_power(
    cams_iter: Iterable[tuple[Any, Any, tuple[int, int]]],
    gts_iter: Iterable[np.ndarray | torch.Tensor],
    powers: Sequence[float],
    num_classes: int,
    ignore_index: int = 255,
    normalise: bool = True,
) -> dict[float, float]:
    """mIoU of plain argmax seeds for each background exponent (SPEC §9 CAM evaluation; §13 items 7–8).
    ``normalise=False``: the maps are scores already (CLIP-ES's float16 maps at the image size).

    ``cams_iter`` yields ``(cam P×h×w, fg_cls, (H, W))`` and ``gts_iter`` the matching ``H×W`` ground truths (same
    order and length); both are consumed once, every power is evaluated per image
    (:func:`tag2mask.seeding.argmax_seed`). Returns ``{power: mIoU}`` in the order of ``powers``.

    Picking the best power from this result is **tuning on ground truth**: record it in
    :attr:`Protocol.tuned_on_gt`, e.g. ``"bg_power chosen among 1,2 by GT mIoU on train"``. No file IO.
    """
    ps = [float(p) for p in powers]
    if not ps:
        raise ValueError("powers is empty")
    if len(set(ps)) != len(ps):
        raise ValueError(f"powers has duplicates: {ps}")
    cms = {p: ConfusionMatrix(num_classes, ignore_index) for p in ps}
    for (cam, fg_cls, size), gt in zip(cams_iter, gts_iter, strict=True):
        gt_arr = gt.detach().cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
        if tuple(gt_arr.shape) != tuple(size):
            raise ValueError(f"ground truth is {gt_arr.shape} but the seed size is {tuple(size)}")
        for p in ps:
            cms[p].update(argmax_seed(cam, fg_cls, size, p, normalise=normalise), gt_arr)
    return {p: cms[p].miou() for p in ps}
