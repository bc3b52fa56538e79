"""VOC 2012 reader, the dataset base class and open_dataset, on a tiny hand-built VOC tree."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tag2mask.data import VOC_CLASSES, Sample, open_dataset
from tag2mask.data.base import default_cache_dir
from tag2mask.errors import DataError
from tag2mask.io import read_json, write_json, write_label_png

H, W = 8, 10
AERO, PERSON, DOG, TV, CHAIR = 0, 14, 11, 19, 8  # 0-based VOC indices


@pytest.fixture(autouse=True)
def _cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAG2MASK_CACHE", str(tmp_path / "cache"))


def _xml(objects: list[tuple[str, int]]) -> str:
    body = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects
    )
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


def _mask(*boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    """An H×W mask, 0 outside the boxes ``(y0, y1, x0, x1, value)`` (half-open)."""
    m = np.zeros((H, W), dtype=np.uint8)
    for y0, y1, x0, x1, v in boxes:
        m[y0:y1, x0:x1] = v
    return m


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """A 5-image VOC2012 tree. Masks: 032 aeroplane+person+255 border, 039 tv, 2008_000001 dog,
    2009_000002 no foreground (only 255); 2010_000003 is a test image without mask."""
    root = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClassAug", "Annotations", "ImageSets/Segmentation",
              "ImageSets/SegmentationAug"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for sid in ("2007_000032", "2007_000039", "2008_000001", "2009_000002", "2010_000003"):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{sid}.jpg")
    m32 = _mask((1, 4, 1, 5, 1), (4, 7, 6, 9, 15))
    m32[0, :] = 255
    write_label_png(root / "SegmentationClassAug" / "2007_000032.png", m32)
    write_label_png(root / "SegmentationClassAug" / "2007_000039.png", _mask((2, 6, 2, 8, 20)))
    write_label_png(root / "SegmentationClassAug" / "2008_000001.png", _mask((0, 3, 0, 3, 12)))
    write_label_png(root / "SegmentationClassAug" / "2009_000002.png", _mask((0, 2, 0, 2, 255)))
    (root / "Annotations" / "2007_000032.xml").write_text(_xml([("aeroplane", 0), ("person", 1)]))
    (root / "Annotations" / "2007_000039.xml").write_text(_xml([("tvmonitor", 0), ("chair", 0)]))
    (root / "Annotations" / "2008_000001.xml").write_text(_xml([("dog", 0)]))
    (root / "ImageSets/SegmentationAug/train_aug.txt").write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
        "/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n"
        "\n"
        "/JPEGImages/2008_000001.jpg /SegmentationClassAug/2008_000001.png\n"
    )
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2007_000039\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2008_000001\n2009_000002\n")
    (root / "ImageSets/Segmentation/test.txt").write_text("2010_000003\n")
    return root


# ---------------------------------------------------------------------------- labels and masks
def test_train_aug_irn_list_labels_from_masks(voc: Path) -> None:
    ds = open_dataset("voc", voc, "train_aug")
    assert ds.name == "voc" and ds.split == "train_aug" and len(ds) == 3
    assert ds.class_names == VOC_CLASSES and ds.num_classes == 20
    assert ds.class_names[AERO] == "aeroplane" and ds.class_names[TV] == "tvmonitor"
    assert ds.ids == ["2007_000032", "2007_000039", "2008_000001"]
    assert [s.labels for s in ds] == [(AERO, PERSON), (TV,), (DOG,)]
    assert ds[0] == Sample("2007_000032", voc / "JPEGImages/2007_000032.jpg",
                           voc / "SegmentationClassAug/2007_000032.png", (0, 14))
    assert ds.has_masks and ds.index_of("2008_000001") == 2
    assert ds["2007_000039"].labels == (TV,)
    vec = ds.label_vector("2007_000032")
    assert vec.dtype == np.uint8 and vec.shape == (20,)
    assert np.flatnonzero(vec).tolist() == [0, 14]


def test_load_mask_and_image_exact_pixels(voc: Path) -> None:
    ds = open_dataset("voc", voc, "train_aug")
    m = ds.load_mask(0)
    assert m.dtype == np.uint8 and m.shape == (H, W)
    assert m[0, 3] == 255 and m[2, 2] == 1 and m[5, 7] == 15 and m[7, 0] == 0
    assert sorted(np.unique(m).tolist()) == [0, 1, 15, 255]
    img = ds.load_image("2007_000032")
    assert img.dtype == np.uint8 and img.shape == (H, W, 3)


def test_bare_list_matches_irn_list(voc: Path) -> None:
    ds = open_dataset("voc", voc, "train")
    assert ds.ids == ["2007_000032", "2007_000039"]
    assert [s.labels for s in ds] == [(AERO, PERSON), (TV,)]


def test_train_aug_list_also_found_in_segmentation_folder(voc: Path) -> None:
    src = voc / "ImageSets/SegmentationAug/train_aug.txt"
    shutil.move(src, voc / "ImageSets/Segmentation/train_aug.txt")
    ds = open_dataset("voc", voc, "train_aug")
    assert len(ds) == 3 and ds.list_file == voc / "ImageSets/Segmentation/train_aug.txt"


def test_xml_labels_include_difficult_unless_asked(voc: Path) -> None:
    ds = open_dataset("voc", voc, "train", label_source="xml")
    assert [s.labels for s in ds] == [(AERO, PERSON), (CHAIR, TV)]  # chair: XML only, not in the mask
    ds2 = open_dataset("voc", voc, "train", label_source="xml", xml_skip_difficult=True)
    assert [s.labels for s in ds2] == [(AERO,), (CHAIR, TV)]


def test_xml_missing_or_unknown_name(voc: Path) -> None:
    with pytest.raises(DataError, match=r"2009_000002\.xml: annotation XML not found"):
        open_dataset("voc", voc, "val", label_source="xml")
    (voc / "Annotations" / "2007_000039.xml").write_text(_xml([("unicorn", 0)]))
    with pytest.raises(DataError, match=r"2007_000039\.xml: unknown object name 'unicorn'"):
        open_dataset("voc", voc, "train", label_source="xml")


def test_test_split_has_no_masks(voc: Path) -> None:
    ds = open_dataset("voc", voc, "test")
    assert not ds.has_masks and len(ds) == 1
    assert ds[0].mask_path is None and ds[0].labels == ()
    assert ds.load_mask(0) is None
    assert ds.load_image(0).shape == (H, W, 3)


def test_no_foreground_raises_or_skips(voc: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(DataError, match=r"2009_000002\.png: image '2009_000002' has no foreground label"):
        open_dataset("voc", voc, "val")
    with caplog.at_level(logging.WARNING, logger="tag2mask"):
        ds = open_dataset("voc", voc, "val", on_error="skip")
    assert ds.ids == ["2008_000001"]
    assert [k for k, _ in ds.skipped] == ["2009_000002"]
    assert "skipped 1 of 2 images" in caplog.text


def test_missing_list_file_names_file_and_splits(voc: Path) -> None:
    with pytest.raises(DataError) as e:
        open_dataset("voc", voc, "trainval")
    msg = str(e.value)
    assert str(voc / "ImageSets/Segmentation/trainval.txt") in msg
    assert "splits available" in msg and "test, train, train_aug, val" in msg


def test_duplicate_id_in_list(voc: Path) -> None:
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2007_000039\n2007_000032\n")
    with pytest.raises(DataError, match=r"train\.txt, line 3: duplicate id '2007_000032' \(first at line 1\)"):
        open_dataset("voc", voc, "train")


def test_bad_mask_id_names_file(voc: Path) -> None:
    write_label_png(voc / "SegmentationClassAug" / "2007_000039.png", _mask((0, 1, 0, 1, 21)))
    with pytest.raises(DataError, match=r"2007_000039\.png: mask holds label ids \[21\]"):
        open_dataset("voc", voc, "train")


def test_missing_mask_names_file(voc: Path) -> None:
    (voc / "SegmentationClassAug" / "2007_000039.png").unlink()
    with pytest.raises(DataError, match=r"SegmentationClassAug/2007_000039\.png: mask file not found"):
        open_dataset("voc", voc, "train")


def test_fallback_to_segmentation_class(voc: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.move(voc / "SegmentationClassAug", voc / "SegmentationClass")
    with caplog.at_level(logging.INFO, logger="tag2mask"):
        ds = open_dataset("voc", voc, "train")
    assert ds[1].mask_path == voc / "SegmentationClass/2007_000039.png"
    assert "using masks from" in caplog.text and "SegmentationClass" in caplog.text
    shutil.rmtree(voc / "SegmentationClass")
    with pytest.raises(DataError, match="mask folder .*SegmentationClassAug not found"):
        open_dataset("voc", voc, "train")
    ds_xml = open_dataset("voc", voc, "train", label_source="xml")
    assert not ds_xml.has_masks and ds_xml.load_mask(0) is None


# ---------------------------------------------------------------------------- label cache
def test_label_cache_reuse_and_invalidation(voc: Path, tmp_path: Path) -> None:
    cache = tmp_path / "mycache"
    ds1 = open_dataset("voc", voc, "train", cache_dir=cache)
    assert not ds1.label_cache_hit
    files = list((cache / "labels").glob("voc_train_*.json"))
    assert len(files) == 1
    assert read_json(files[0])["labels"] == {"2007_000032": [0, 14], "2007_000039": [19]}

    ds2 = open_dataset("voc", voc, "train", cache_dir=cache)
    assert ds2.label_cache_hit and [s.labels for s in ds2] == [(0, 14), (19,)]

    # prove the cache is really read: poison it (same key) and the poisoned labels come back
    data = read_json(files[0])
    data["labels"]["2007_000039"] = [3]
    write_json(files[0], data)
    assert open_dataset("voc", voc, "train", cache_dir=cache)[1].labels == (3,)

    # touching a mask (new mtime) invalidates the cache: labels recomputed from the masks
    mpath = voc / "SegmentationClassAug" / "2007_000039.png"
    st = mpath.stat()
    os.utime(mpath, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    ds3 = open_dataset("voc", voc, "train", cache_dir=cache)
    assert not ds3.label_cache_hit and ds3[1].labels == (TV,)

    # a changed mask gives new labels
    write_label_png(mpath, _mask((0, 2, 0, 2, 12), (5, 7, 5, 7, 20)))
    ds4 = open_dataset("voc", voc, "train", cache_dir=cache)
    assert not ds4.label_cache_hit and ds4[1].labels == (DOG, TV)
    assert len(list((cache / "labels").glob("*.json"))) == 1  # overwritten in place, no pile-up


def test_default_cache_dir_from_env(voc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAG2MASK_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    open_dataset("voc", voc, "train")
    assert len(list((tmp_path / "envcache" / "labels").glob("voc_train_*.json"))) == 1
    monkeypatch.delenv("TAG2MASK_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "tag2mask"


def test_corrupt_cache_is_recomputed(voc: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    open_dataset("voc", voc, "train", cache_dir=cache)
    (f,) = (cache / "labels").glob("*.json")
    f.write_text("{not json")
    ds = open_dataset("voc", voc, "train", cache_dir=cache)
    assert not ds.label_cache_hit and ds[0].labels == (AERO, PERSON)


# ---------------------------------------------------------------------------- files, validate
def test_mask_size_mismatch(voc: Path) -> None:
    write_label_png(voc / "SegmentationClassAug" / "2007_000039.png", np.full((H + 1, W), 20, np.uint8))
    ds = open_dataset("voc", voc, "train")
    with pytest.raises(DataError, match=r"2007_000039\.png: mask size 10x9 differs from image size 10x8"):
        ds.load_mask(1)
    with pytest.raises(DataError, match="mask size 10x9"):
        ds.validate()
    ds.validate(on_error="skip")
    assert ds.ids == ["2007_000032"] and ds.skipped[0][0] == "2007_000039"
    assert ds.index_of("2007_000032") == 0
    with pytest.raises(DataError, match="no sample with id '2007_000039'"):
        ds.index_of("2007_000039")


def test_missing_and_corrupt_images(voc: Path, caplog: pytest.LogCaptureFixture) -> None:
    (voc / "JPEGImages" / "2007_000032.jpg").unlink()
    (voc / "JPEGImages" / "2007_000039.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    ds = open_dataset("voc", voc, "train_aug")  # opening does not read images
    with pytest.raises(DataError, match=r"2007_000032\.jpg: image file not found"):
        ds.load_image(0)
    with pytest.raises(DataError, match=r"2007_000039\.jpg: cannot read image"):
        ds.load_image("2007_000039")
    with pytest.raises(DataError, match=r"2007_000032\.jpg"):
        ds.validate()
    with caplog.at_level(logging.WARNING, logger="tag2mask"):
        ds.validate(on_error="skip")
    assert ds.ids == ["2008_000001"] and len(ds.skipped) == 2
    assert "validate dropped 2 of 3 samples" in caplog.text


def test_images_converted_to_rgb(voc: Path) -> None:
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W) * 2
    Image.fromarray(grey).save(voc / "JPEGImages" / "2007_000032.jpg", quality=100)
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(voc / "JPEGImages" / "2007_000039.jpg", quality=100)
    ds = open_dataset("voc", voc, "train")
    g = ds.load_image(0)
    assert g.shape == (H, W, 3) and g.dtype == np.uint8
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])
    c = ds.load_image(1).astype(int)
    assert c.shape == (H, W, 3)
    assert c[..., 0].mean() > 200 and c[..., 1].mean() < 60 and c[..., 2].mean() < 60  # CMYK (0,255,255,0) = red


# ---------------------------------------------------------------------------- open_dataset
def test_open_dataset_rejects_bad_kind_option_and_on_error(voc: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset kind 'pascal'; valid kinds: voc, coco, folder, synthetic"):
        open_dataset("pascal", voc, "train")
    with pytest.raises(DataError, match="unknown option.*mask_folder.*valid options: mask_dir, label_source"):
        open_dataset("voc", voc, "train", mask_folder="x")
    with pytest.raises(DataError, match="on_error must be one of raise, skip"):
        open_dataset("voc", voc, "train", on_error="ignore")
    with pytest.raises(DataError, match="label_source must be one of masks, xml"):
        open_dataset("voc", voc, "train", label_source="npy")
