"""The synthetic demo dataset: determinism, layout, masks agree with tags, auto-generation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from tag2mask.data import SYNTHETIC_CLASSES, make_synthetic_dataset, open_dataset
from tag2mask.data.synthetic import CLASS_COLOURS
from tag2mask.errors import DataError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical_other_seed_differs(tmp_path: Path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", n_train=6, n_val=3, size=(40, 48), seed=7)
    b = make_synthetic_dataset(tmp_path / "b", n_train=6, n_val=3, size=(40, 48), seed=7)
    c = make_synthetic_dataset(tmp_path / "c", n_train=6, n_val=3, size=(40, 48), seed=8)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert len(fa) == 2 * 9 + 4  # images + masks + train.csv, val.csv, classes.txt, synthetic.json
    assert fa == fb
    assert fa["images/train_0000.png"] != fc["images/train_0000.png"]
    assert all(v[:8] == b"\x89PNG\r\n\x1a\n" for k, v in fa.items() if k.startswith("images/"))
    # train and val use separate streams: changing n_train leaves val untouched
    d = make_synthetic_dataset(tmp_path / "d", n_train=2, n_val=3, size=(40, 48), seed=7)
    assert _files(d)["images/val_0002.png"] == fa["images/val_0002.png"]


def test_layout_and_csv(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "s", n_train=4, n_val=2, size=(40, 48))
    assert [ln for ln in (root / "classes.txt").read_text().splitlines() if not ln.startswith("#")] == list(
        SYNTHETIC_CLASSES
    )
    rows = (root / "train.csv").read_text().splitlines()
    assert rows[0] == "image,tags" and len(rows) == 5 and rows[1].startswith("train_0000.png,")
    ds = open_dataset("synthetic", root, "val")
    assert ds.name == "synthetic" and ds.ids == ["val_0000", "val_0001"] and ds.has_masks
    assert ds.class_names == SYNTHETIC_CLASSES == ("circle", "square", "triangle", "ring", "cross")
    with pytest.raises(DataError, match=r"test\.csv: CSV for split 'test' not found; .*: train, val"):
        open_dataset("synthetic", root, "test")


def test_auto_generation_with_defaults_masks_agree_with_tags(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "demo"
    with caplog.at_level(logging.INFO, logger="tag2mask"):
        train = open_dataset("synthetic", root, "train")
    assert "generating" in caplog.text and len(train) == 48
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tag2mask"):
        val = open_dataset("synthetic", root, "val")
    assert "generating" not in caplog.text and len(val) == 16

    colour_sum = np.zeros((5, 3))
    colour_n = np.zeros(5)
    for ds in (train, val):
        for i, s in enumerate(ds):
            img, mask = ds.load_image(i), ds.load_mask(i)
            assert img.shape == (96, 128, 3) and mask.shape == (96, 128)
            assert 1 <= len(s.labels) <= 2
            fg = set(np.unique(mask).tolist()) - {0}
            assert fg == {c + 1 for c in s.labels}, s.id  # every tag in its mask, no other class
            for c in s.labels:
                colour_sum[c] += img[mask == c + 1].sum(axis=0)
                colour_n[c] += (mask == c + 1).sum()
            assert (mask == 0).sum() > 0.3 * mask.size  # background stays visible
    assert (colour_n > 0).all()  # every class occurs
    # each class's mean colour is closest to its own colour family
    means = colour_sum / colour_n[:, None]
    dist = np.linalg.norm(means[:, None, :] - np.asarray(CLASS_COLOURS, float)[None], axis=2)
    assert dist.argmin(axis=1).tolist() == [0, 1, 2, 3, 4]


def test_incomplete_dataset_is_regenerated(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "s", n_train=2, n_val=1, size=(32, 32))
    assert len(open_dataset("synthetic", root, "train")) == 2  # existing dataset is opened, not regenerated
    (root / "synthetic.json").unlink()  # as if a generation was killed before the end
    assert len(open_dataset("synthetic", root, "train")) == 48
