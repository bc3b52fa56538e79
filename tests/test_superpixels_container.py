"""Superpixels container: COCO RLE masks, atoms, save/load without pickle (SPEC §7.3 step 10)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from tag2mask.superpixels import Superpixels


def _random_masks(n: int = 12, h: int = 33, w: int = 47, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    levels = rng.integers(0, 3, n)
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        r = (3 + 4 * levels[i]) * rng.uniform(0.6, 1.4)
        masks[i] = (yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2 < r * r
    masks[-1] = False  # an empty mask
    return masks, levels


def _check_atoms(sp: Superpixels) -> None:
    h, w = sp.size
    n = len(sp)
    assert sp.atoms.shape == (h, w) and sp.atoms.dtype == np.int32
    assert sp.atom_membership.shape == (len(sp.atom_area), n) and sp.atom_membership.dtype == bool
    # every pixel's atom membership is the set of masks covering it
    np.testing.assert_array_equal(sp.atom_membership[sp.atoms], sp.masks.transpose(1, 2, 0))
    assert sp.atom_area.sum() == h * w
    np.testing.assert_array_equal(np.bincount(sp.atoms.ravel(), minlength=len(sp.atom_area)), sp.atom_area)
    np.testing.assert_array_equal(sp.area, sp.masks.reshape(n, -1).sum(1))


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
def test_from_masks_fields_and_atoms() -> None:
    masks, levels = _random_masks()
    sp = Superpixels.from_masks(masks, levels)
    assert len(sp) == len(masks) and sp.size == masks.shape[1:]
    np.testing.assert_array_equal(sp.masks, masks)
    np.testing.assert_array_equal(sp.levels, levels)
    assert sp.levels.dtype == np.int64
    assert np.isnan(sp.predicted_iou).all() and np.isnan(sp.point_coords).all()
    np.testing.assert_array_equal(sp.crop_box, np.tile([0, 0, masks.shape[2], masks.shape[1]], (len(masks), 1)))
    _check_atoms(sp)
    # the RLEs are plain COCO compressed RLE
    decoded = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in sp.rles])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1).astype(bool), masks)
    assert sp.masks is sp.masks  # cached


def test_bbox_uses_sams_convention() -> None:
    masks = np.zeros((2, 10, 12), bool)
    masks[0, 2:5, 3:9] = True  # rows 2..4, cols 3..8
    sp = Superpixels.from_masks(masks, [2, 1])
    np.testing.assert_array_equal(sp.bbox, [[3, 2, 5, 2], [0, 0, 0, 0]])  # w = x_max - x_min; empty -> zeros
    np.testing.assert_array_equal(sp.area, [18, 0])


def test_save_load_round_trip(tmp_path: Path) -> None:
    masks, levels = _random_masks(seed=1)
    n = len(masks)
    rng = np.random.default_rng(2)
    sp = Superpixels.from_masks(
        torch.from_numpy(masks),
        torch.from_numpy(levels),
        predicted_iou=rng.random(n).astype(np.float32),
        stability_score=torch.rand(n),
        point_coords=rng.random((n, 2)) * 30,
        crop_box=np.tile([1, 2, 30, 20], (n, 1)),
        preset="l2_nmsf_s1_rsw3",
        config_hash="abc123",
    )
    npz_path, json_path = sp.save(tmp_path / "img.0001")
    assert npz_path.name == "img.0001.npz" and json_path.name == "img.0001.json"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind
    meta = json.loads(json_path.read_text())
    assert meta["preset"] == "l2_nmsf_s1_rsw3" and meta["config_hash"] == "abc123" and meta["size"] == list(sp.size)

    back = Superpixels.load(tmp_path / "img.0001")
    assert len(back) == n and back.size == sp.size
    np.testing.assert_array_equal(back.masks, masks)
    for name in (
        "levels",
        "predicted_iou",
        "stability_score",
        "area",
        "bbox",
        "point_coords",
        "crop_box",
        "atoms",
        "atom_membership",
        "atom_area",
    ):
        a, b = getattr(sp, name), getattr(back, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert back.rle_counts == sp.rle_counts
    assert (back.preset, back.config_hash) == ("l2_nmsf_s1_rsw3", "abc123")
    _check_atoms(back)
    with np.load(npz_path, allow_pickle=False) as z:  # no object arrays anywhere
        assert all(z[k].dtype != object for k in z.files)


def test_numpy_and_torch_inputs_agree() -> None:
    masks, levels = _random_masks(seed=3)
    a = Superpixels.from_masks(masks, levels)
    b = Superpixels.from_masks(torch.from_numpy(masks.astype(np.uint8)), torch.from_numpy(levels))
    assert a.rle_counts == b.rle_counts
    np.testing.assert_array_equal(a.atoms, b.atoms)
    np.testing.assert_array_equal(a.atom_membership, b.atom_membership)


def test_no_masks(tmp_path: Path) -> None:
    sp = Superpixels.from_masks(np.zeros((0, 5, 6), bool), [])
    assert len(sp) == 0 and sp.masks.shape == (0, 5, 6)
    assert sp.atom_area.tolist() == [30] and sp.atom_membership.shape == (1, 0) and not sp.atoms.any()
    sp.save(tmp_path / "empty")
    back = Superpixels.load(tmp_path / "empty")
    assert len(back) == 0 and back.masks.shape == (0, 5, 6) and back.bbox.shape == (0, 4)


def test_mismatched_files_are_refused(tmp_path: Path) -> None:
    masks, levels = _random_masks(seed=4)
    Superpixels.from_masks(masks, levels).save(tmp_path / "a")
    Superpixels.from_masks(masks[:, :20], levels).save(tmp_path / "b")
    (tmp_path / "a.npz").replace(tmp_path / "b.npz")
    with pytest.raises(ValueError):
        Superpixels.load(tmp_path / "b")


def test_bad_field_shapes_are_refused() -> None:
    masks, levels = _random_masks(seed=5)
    with pytest.raises(ValueError):
        Superpixels.from_masks(masks, levels[:-1])
    with pytest.raises(ValueError):
        Superpixels.from_masks(masks, levels, predicted_iou=np.zeros(3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_corrupt_cache_pair_is_one_error_naming_it(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
                                                     ) -> None:
    """Any truncation, byte flip or field replacement of a saved pair: loaded whole or one DataError naming it."""
    from tag2mask.errors import DataError

    folder = tmp_path_factory.mktemp("corrupt")
    masks, levels = _random_masks(seed=7)
    Superpixels.from_masks(masks, levels).save(folder / "img")
    which = data.draw(st.sampled_from(["json", "npz"]))
    path = folder / f"img.{which}"
    raw = bytearray(path.read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "field"] if which == "json" else ["truncate", "flip"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    else:
        meta = json.loads(raw)
        key = data.draw(st.sampled_from(sorted(meta)))
        meta[key] = data.draw(st.one_of(st.none(), st.integers(-5, 10**6), st.text(max_size=30),
                                        st.lists(st.text(max_size=30), max_size=3),
                                        st.lists(st.integers(-3, 200), max_size=3)))
        raw = bytearray(json.dumps(meta).encode())
    path.write_bytes(bytes(raw))
    try:
        sp = Superpixels.load(folder / "img")
        assert sp.masks.shape[1:] == sp.size  # decoding the masks must not crash either
    except DataError as e:
        assert str(e).startswith(f"{folder / 'img'}.json / {folder / 'img'}.npz: unreadable") and "\n" not in str(e)
