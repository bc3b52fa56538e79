"""Folder datasets (images/ + <split>.csv + classes.txt [+ masks/]): parsing, every error, skip mode."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tag2mask.data import open_dataset
from tag2mask.errors import DataError
from tag2mask.io import write_label_png

H, W = 6, 7
CAT, DOG, BIRD = 0, 1, 2


def _write(root: Path, csv: str, classes: str = "# my classes\ncat\n\ndog\n  bird  \n") -> Path:
    (root / "images" / "sub").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text(classes)
    (root / "train.csv").write_text(csv)
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Images a.jpg (RGB), b.png (RGBA), sub/c.bmp (palette), d.webp (grey)."""
    root = tmp_path / "mine"
    (root / "images" / "sub").mkdir(parents=True)
    Image.new("RGB", (W, H), (10, 20, 30)).save(root / "images" / "a.jpg", quality=100)
    Image.new("RGBA", (W, H), (200, 100, 50, 128)).save(root / "images" / "b.png")
    pal = Image.new("P", (W, H), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(root / "images" / "sub" / "c.bmp")
    Image.new("L", (W, H), 77).save(root / "images" / "d.webp", lossless=True)
    return _write(root, "image,tags\na.jpg,cat;dog\nb.png, Bird | CAT \nsub/c.bmp,dog;dog\nd.webp,bird\n")


def test_good_rows_labels_and_ids(folder: Path) -> None:
    ds = open_dataset("folder", folder, "train")
    assert ds.name == "folder" and ds.class_names == ("cat", "dog", "bird")
    assert ds.ids == ["a", "b", "sub/c", "d"]
    assert [s.labels for s in ds] == [(CAT, DOG), (CAT, BIRD), (DOG,), (BIRD,)]
    assert ds["sub/c"].image_path == folder / "images" / "sub" / "c.bmp"
    assert not ds.has_masks and ds["a"].mask_path is None and ds.load_mask("a") is None
    assert ds.label_vector("b").tolist() == [1, 0, 1]


def test_images_any_mode_to_rgb(folder: Path) -> None:
    ds = open_dataset("folder", folder, "train")
    for sid, rgb in [("b", (200, 100, 50)), ("sub/c", (0, 255, 0)), ("d", (77, 77, 77))]:
        img = ds.load_image(sid)
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        assert img[2, 3].tolist() == list(rgb), sid
    a = ds.load_image("a").astype(int)
    assert np.abs(a - np.array([10, 20, 30])).max() <= 3  # JPEG


def test_csv_option_and_extra_columns(folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.csv"
    other.write_text("note,tags,image\nhello,dog,a.jpg\n")
    ds = open_dataset("folder", folder, "whatever", csv=other)
    assert ds.ids == ["a"] and ds[0].labels == (DOG,) and ds.split == "whatever"


@pytest.mark.parametrize(
    ("csv", "fragment"),
    [
        ("image,tags\na.jpg,cat\nb.png,cat;zebra\n",
         r"train\.csv, line 3: unknown tag 'zebra' for image 'b\.png'; known classes: cat, dog, bird"),
        ("image,tags\na.jpg,cat\n\nb.png, ; \n", r"train\.csv, line 4: no tags for image 'b\.png'"),
        ("image,tags\na.jpg,cat\nnope.jpg,dog\n", r"train\.csv, line 3: image file not found: .*images/nope\.jpg"),
        ("image,tags\na.jpg,cat\nb.png,dog\na.jpg,dog\n",
         r"train\.csv, line 4: duplicate image 'a\.jpg' \(first at line 2\)"),
        ("file,labels\na.jpg,cat\n", r"train\.csv, line 1: CSV header must have the columns 'image' and 'tags'"),
        ("a.jpg,cat\n", r"train\.csv, line 1: CSV header must have the columns 'image' and 'tags'"),
        ("image,tags\na.gif,cat\n", r"train\.csv, line 2: image 'a\.gif' has an unsupported extension"),
        ("image,tags\n", r"train\.csv: no image rows"),
        ("", r"train\.csv: empty CSV"),
    ],
)
def test_csv_errors_name_file_and_line(folder: Path, csv: str, fragment: str) -> None:
    (folder / "train.csv").write_text(csv)
    with pytest.raises(DataError, match=fragment):
        open_dataset("folder", folder, "train")


def test_skip_mode_drops_and_counts_bad_rows(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    (folder / "train.csv").write_text(
        "image,tags\na.jpg,cat\nb.png,zebra\nmissing.jpg,dog\nd.webp,\na.jpg,dog\nsub/c.bmp,bird|dog\n"
    )
    with caplog.at_level(logging.WARNING, logger="tag2mask"):
        ds = open_dataset("folder", folder, "train", on_error="skip")
    assert ds.ids == ["a", "sub/c"] and [s.labels for s in ds] == [(CAT,), (DOG, BIRD)]
    assert [k for k, _ in ds.skipped] == ["b.png", "missing.jpg", "d.webp", "a.jpg"]
    assert "line 6: duplicate image" in ds.skipped[3][1]
    assert "skipped 4 bad rows" in caplog.text


def test_classes_file_errors(folder: Path) -> None:
    (folder / "classes.txt").write_text("cat\ndog\n# comment\nCat\n")
    with pytest.raises(DataError, match=r"classes\.txt, line 4: duplicate class name 'Cat' \(first at line 1\)"):
        open_dataset("folder", folder, "train")
    (folder / "classes.txt").write_text("# nothing\n\n")
    with pytest.raises(DataError, match=r"classes\.txt: no class names"):
        open_dataset("folder", folder, "train")
    (folder / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"classes\.txt: class-name file not found"):
        open_dataset("folder", folder, "train")


def test_missing_split_csv_lists_available(folder: Path) -> None:
    (folder / "val.csv").write_text("image,tags\na.jpg,cat\n")
    with pytest.raises(DataError, match=r"test\.csv: CSV for split 'test' not found; CSV splits in .*: train, val"):
        open_dataset("folder", folder, "test")


def test_masks_folder_enables_evaluation(folder: Path) -> None:
    (folder / "masks" / "sub").mkdir(parents=True)
    m = np.zeros((H, W), dtype=np.uint8)
    m[1:3, 1:3] = 1
    m[4:6, 4:7] = 2
    m[0, 6] = 255
    write_label_png(folder / "masks" / "a.png", m)
    write_label_png(folder / "masks" / "b.png", np.full((H, W), 3, np.uint8))
    write_label_png(folder / "masks" / "d.png", np.full((H + 1, W), 3, np.uint8))  # wrong size
    with pytest.raises(DataError, match=r"train\.csv, line 4: mask file not found: .*masks/sub/c\.png"):
        open_dataset("folder", folder, "train")
    ds = open_dataset("folder", folder, "train", on_error="skip")
    assert ds.has_masks and ds.ids == ["a", "b", "d"] and ds.skipped[0][0] == "sub/c.bmp"
    got = ds.load_mask("a")
    assert got[2, 2] == 1 and got[5, 5] == 2 and got[0, 6] == 255 and got[0, 0] == 0
    with pytest.raises(DataError, match=r"masks/d\.png: mask size 7x7 differs from image size 7x6"):
        ds.load_mask("d")
    with pytest.raises(DataError, match=r"masks/d\.png: mask size"):
        ds.validate()
    ds.validate(on_error="skip")
    assert ds.ids == ["a", "b"]


def test_mask_with_out_of_range_id(folder: Path) -> None:
    (folder / "train.csv").write_text("image,tags\na.jpg,cat\n")
    (folder / "masks").mkdir()
    write_label_png(folder / "masks" / "a.png", np.full((H, W), 4, np.uint8))  # 3 classes: ids 0..3, 255
    ds = open_dataset("folder", folder, "train")
    with pytest.raises(DataError, match=r"a\.png: mask holds label ids \[4\] outside 0\.\.3 and 255"):
        ds.load_mask(0)


def test_corrupt_image_validate(folder: Path) -> None:
    (folder / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = open_dataset("folder", folder, "train")
    with pytest.raises(DataError, match=r"images/b\.png: corrupt image"):
        ds.validate()
    ds.validate(on_error="skip")
    assert ds.ids == ["a", "sub/c", "d"] and ds.skipped[0][0] == "b"


def test_unknown_option(folder: Path) -> None:
    with pytest.raises(DataError, match="unknown option.*label_source.*valid options: csv"):
        open_dataset("folder", folder, "train", label_source="xml")
