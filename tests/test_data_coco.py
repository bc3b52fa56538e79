"""COCO 2014 reader: instances JSON (polygon, RLE, uncompressed RLE, crowd, overlap rule) and mask PNGs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tag2mask.data import COCO_CLASSES, open_dataset
from tag2mask.data.coco import COCO_CATEGORY_IDS, RAW_GAP_IDS, png_id_encoding
from tag2mask.errors import DataError
from tag2mask.io import write_label_png

H, W = 20, 30
IMG1, IMG2, IMG3 = (f"COCO_train2014_{i:012d}" for i in (1, 2, 3))


@pytest.fixture(autouse=True)
def _cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAG2MASK_CACHE", str(tmp_path / "cache"))


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]


def _save_jpg(path: Path, h: int = H, w: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (120, 130, 140)).save(path)


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """Categories person(1), car(3), dog(18) -> contiguous 0, 1, 2 (label ids 1, 2, 3).

    Image 1: a big person polygon (x 2..20, y 2..16), a small car polygon inside it (x 8..14, y 6..12,
    listed first), a dog as compressed RLE (rows 17..19, cols 24..29), a crowd person as uncompressed RLE
    (rows 0..4, cols 24..29). Image 2: a dog polygon. Image 3: no annotation.
    """
    root = tmp_path / "coco"
    for stem in (IMG1, IMG2, IMG3):
        _save_jpg(root / "train2014" / f"{stem}.jpg")
    dog = np.zeros((H, W), dtype=np.uint8)
    dog[17:20, 24:30] = 1
    dog_rle = mask_utils.encode(np.asfortranarray(dog))
    dog_rle = {"size": [H, W], "counts": dog_rle["counts"].decode("ascii")}
    crowd_counts = [24 * H] + [5, 15] * 6  # column-major: 24 empty columns, then rows 0..4 of cols 24..29
    data = {
        "images": [
            {"id": 3, "file_name": f"{IMG3}.jpg", "height": H, "width": W},
            {"id": 1, "file_name": f"{IMG1}.jpg", "height": H, "width": W},
            {"id": 2, "file_name": f"{IMG2}.jpg", "height": H, "width": W},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 101, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 36.0,
             "segmentation": [_rect(8, 6, 14, 12)]},
            {"id": 102, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 252.0,
             "segmentation": [_rect(2, 2, 20, 16)]},
            {"id": 103, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 18.0, "segmentation": dog_rle},
            {"id": 104, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 30.0,
             "segmentation": {"size": [H, W], "counts": crowd_counts}},
            {"id": 201, "image_id": 2, "category_id": 18, "iscrowd": 0, "area": 100.0,
             "segmentation": [_rect(5, 5, 15, 15)]},
        ],
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(data))
    return root


# ---------------------------------------------------------------------------- instances
def test_instances_classes_labels_and_dropped(coco: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tag2mask"):
        ds = open_dataset("coco", coco, "train")
    assert ds.class_names == ("person", "car", "dog")  # sorted by category id 1, 3, 18
    assert ds.ids == [IMG1, IMG2]
    assert ds[0].labels == (0, 1, 2) and ds[1].labels == (2,)
    assert ds[0].mask_path is None and ds.has_masks
    assert ds[0].image_path == coco / "train2014" / f"{IMG1}.jpg"
    assert ds.dropped_unlabelled == 1 and ds.skipped == []
    assert "dropped 1 images without labels" in caplog.text


def test_instances_mask_overlap_rle_and_crowd(coco: Path) -> None:
    m = open_dataset("coco", coco, "train").load_mask(0)
    assert m.shape == (H, W) and m.dtype == np.uint8
    assert m[4, 4] == 1      # person polygon
    assert m[9, 11] == 2     # car inside the person: smaller instance on top although listed first
    assert m[18, 26] == 3    # dog from compressed RLE, exact region rows 17..19, cols 24..29
    assert (m[17:20, 24:30] == 3).all() and (m == 3).sum() == 18
    assert (m[0:5, 24:30] == 1).all()  # crowd person painted as its class (uncompressed RLE)
    assert m[10, 25] == 0 and m[19, 0] == 0
    assert sorted(np.unique(m).tolist()) == [0, 1, 2, 3]

    mi = open_dataset("coco", coco, "train", crowd="ignore").load_mask(IMG1)
    assert (mi[0:5, 24:30] == 255).all() and (mi == 255).sum() == 30
    assert mi[9, 11] == 2 and mi[4, 4] == 1


def test_larger_instance_listed_last_does_not_hide_smaller(coco: Path) -> None:
    # the car (small) inside the person (big): whatever the JSON order, the car stays visible
    p = coco / "annotations" / "instances_train2014.json"
    data = json.loads(p.read_text())
    data["annotations"] = list(reversed(data["annotations"]))
    p.write_text(json.dumps(data))
    m = open_dataset("coco", coco, "train").load_mask(IMG1)
    assert m[9, 11] == 2 and m[4, 4] == 1


def test_instances_bad_annotations(coco: Path) -> None:
    p = coco / "annotations" / "instances_train2014.json"
    data = json.loads(p.read_text())
    data["annotations"].append({"id": 999, "image_id": 2, "category_id": 12, "segmentation": [_rect(0, 0, 3, 3)]})
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_train2014\.json: annotation 999 has unknown category_id 12"):
        open_dataset("coco", coco, "train")
    ds = open_dataset("coco", coco, "train", on_error="skip")
    assert ds.skipped[0][0] == "annotation 999" and ds[1].labels == (2,)

    data["annotations"][-1] = {"id": 998, "image_id": 2, "category_id": 1, "segmentation": {"size": [H, W + 1],
                                                                                          "counts": "abc"}}
    p.write_text(json.dumps(data))
    ds = open_dataset("coco", coco, "train")
    with pytest.raises(DataError, match=r"annotation 998: RLE size \[20, 31\] differs from image size"):
        ds.load_mask(IMG2)


def test_instances_image_size_checked_against_header(coco: Path) -> None:
    _save_jpg(coco / "train2014" / f"{IMG2}.jpg", h=H + 2)
    ds = open_dataset("coco", coco, "train")
    with pytest.raises(DataError, match=rf"{IMG2}\.jpg.*mask size 30x20 differs from image size 30x22"):
        ds.load_mask(IMG2)
    ds.validate(on_error="skip")
    assert ds.ids == [IMG1]


def test_instances_missing_files(coco: Path, tmp_path: Path) -> None:
    (coco / "val2014").mkdir()
    with pytest.raises(DataError, match=r"instances_val2014\.json: COCO annotation file not found"):
        open_dataset("coco", coco, "val")
    with pytest.raises(DataError, match="COCO image folder not found: tried .*images/train2014"):
        open_dataset("coco", tmp_path, "train")
    with pytest.raises(DataError, match="COCO split must be one of train, val"):
        open_dataset("coco", coco, "test")


def test_images_subfolder_layout(coco: Path) -> None:
    (coco / "images").mkdir()
    (coco / "train2014").rename(coco / "images" / "train2014")
    ds = open_dataset("coco", coco, "train")
    assert ds[0].image_path == coco / "images" / "train2014" / f"{IMG1}.jpg"
    assert ds.load_image(0).shape == (H, W, 3)


def test_list_file_restricts_split(coco: Path, tmp_path: Path) -> None:
    lst = tmp_path / "train.txt"
    lst.write_text(f"{IMG2} 17\n")
    ds = open_dataset("coco", coco, "train", list_file=lst)
    assert ds.ids == [IMG2]


# ---------------------------------------------------------------------------- png mode
def _png_tree(root: Path, masks: dict[str, dict[tuple[int, int], int]]) -> None:
    for stem, pixels in masks.items():
        m = np.zeros((H, W), dtype=np.uint8)
        for (y, x), v in pixels.items():
            m[y:y + 2, x:x + 2] = v
        write_label_png(root / "SegmentationClass" / "train2014" / f"{stem}.png", m)
        _save_jpg(root / "train2014" / f"{stem}.jpg")


def test_png_id_encoding_rule() -> None:
    assert RAW_GAP_IDS == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert len(COCO_CATEGORY_IDS) == 80 and COCO_CLASSES[16] == "dog" and COCO_CATEGORY_IDS[16] == 18
    assert png_id_encoding({0, 1, 82, 255}, "m.png") == "raw"
    assert png_id_encoding({12, 3}, "m.png") == "contiguous"
    assert png_id_encoding({1, 18, 80}, "m.png") is None
    with pytest.raises(DataError, match=r"m\.png: mask mixes raw COCO ids \[85\] \(> 80\) with ids \[12\]"):
        png_id_encoding({12, 85}, "m.png")
    with pytest.raises(DataError, match=r"m\.png: mask holds ids \[91\] above 90"):
        png_id_encoding({91}, "m.png")


def test_png_mode_raw_and_contiguous_detection(tmp_path: Path) -> None:
    root = tmp_path / "cocopng"
    _png_tree(root, {
        "A": {(0, 0): 18, (5, 5): 82},    # raw: dog (18 -> class 16), refrigerator (82 -> class 72)
        "B": {(0, 0): 12, (5, 5): 1},     # contiguous: 12 is a raw gap -> stop sign (class 11), person
        "C": {(0, 0): 18},                # undecided: tie (1 raw, 1 contiguous) -> contiguous -> horse
        "E": {},                          # no foreground -> dropped
    })
    (root / "train2014" / "Z.jpg").write_bytes(b"")  # an image without mask is not listed
    ds = open_dataset("coco", root, "train", source="png")
    assert ds.class_names == COCO_CLASSES and ds.num_classes == 80
    assert ds.ids == ["A", "B", "C"] and ds.dropped_unlabelled == 1
    assert ds["A"].labels == (16, 72) and ds.class_names[72] == "refrigerator"
    assert ds["B"].labels == (0, 11) and ds.class_names[11] == "stop sign"
    assert ds["C"].labels == (17,) and ds.class_names[17] == "horse"
    assert [ds.encoding_of(i) for i in "ABC"] == ["raw", "contiguous", "contiguous"]
    ma = ds.load_mask("A")
    assert ma[0, 0] == 17 and ma[5, 5] == 73 and ma[10, 10] == 0  # mapped to contiguous label ids
    mb = ds.load_mask("B")
    assert mb[0, 0] == 12 and mb[5, 5] == 1

    # one more raw file: the undecided file now follows the (raw) majority -> dog
    _png_tree(root, {"D": {(0, 0): 85}})  # raw 85 = clock (class 74)
    ds2 = open_dataset("coco", root, "train", source="png")
    assert ds2["D"].labels == (74,) and ds2["C"].labels == (16,) and ds2.encoding_of("C") == "raw"
    assert ds2.load_mask("C")[0, 0] == 17

    # forcing an encoding overrides the majority; a file that contradicts it is an error
    ds3 = open_dataset("coco", root, "train", source="png", png_ids="raw", on_error="skip")
    assert ds3["C"].labels == (16,) and [k for k, _ in ds3.skipped] == ["B"]
    with pytest.raises(DataError, match=r"B\.png: mask ids \[1, 12\] are not raw COCO ids"):
        open_dataset("coco", root, "train", source="png", png_ids="raw")


def test_png_mode_bad_mask_and_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cocopng"
    _png_tree(root, {"A": {(0, 0): 3}, "F": {(0, 0): 12, (4, 4): 85}})
    with pytest.raises(DataError, match=r"F\.png: mask mixes raw COCO ids"):
        open_dataset("coco", root, "train", source="png")
    with caplog.at_level(logging.WARNING, logger="tag2mask"):
        ds = open_dataset("coco", root, "train", source="png", on_error="skip")
    assert ds.ids == ["A"] and ds.skipped[0][0] == "F" and "skipped 1 bad inputs" in caplog.text
    ds2 = open_dataset("coco", root, "train", source="png", on_error="skip")
    assert ds2.label_cache_hit and ds2.ids == ["A"] and ds2["A"].labels == (2,)
    _png_tree(root, {"F": {(0, 0): 5}})  # fixed mask -> cache invalidated
    ds3 = open_dataset("coco", root, "train", source="png")
    assert not ds3.label_cache_hit and ds3.ids == ["A", "F"] and ds3["F"].labels == (4,)


def test_png_mode_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "c" / "val2014").mkdir(parents=True)
    with pytest.raises(DataError, match=r"COCO mask folder .*SegmentationClass/val2014 not found"):
        open_dataset("coco", tmp_path / "c", "val", source="png")
