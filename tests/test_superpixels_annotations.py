"""Import of SAM-style annotations made by other tools (tag2mask.superpixels.annotations): RLE flavours, levels, fields,
validation, the amg.py PNG folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils
from segment_anything.utils.amg import coco_encode_rle, mask_to_rle_pytorch

from tag2mask.errors import DataError
from tag2mask.superpixels import Superpixels, find_sam_annotations, read_sam_annotations
from tag2mask.superpixels.annotations import counts_to_mask, rle_string_to_counts, superpixels_from_sam_annotations

H, W = 23, 31


def _masks(n: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    m = np.zeros((n, H, W), bool)
    for i in range(n):
        m[i] = (yy - rng.uniform(0, H)) ** 2 + (xx - rng.uniform(0, W)) ** 2 < rng.uniform(9, 80)
    m[0, 0, 0] = True  # a mask starting with a 1 run (SAM's counts then start with 0)
    return m


def _sam_anns(masks: np.ndarray, mode: str, levels: list[int] | None = None) -> list[dict]:
    """What SamAutomaticMaskGenerator.generate returns, with output_mode 'coco_rle' or 'uncompressed_rle'."""
    rles = mask_to_rle_pytorch(torch.from_numpy(masks))
    anns = []
    for i, rle in enumerate(rles):
        seg = coco_encode_rle(rle) if mode == "coco_rle" else rle
        ann = {
            "segmentation": seg,
            "area": int(masks[i].sum()),
            "bbox": [0, 0, 1, 1],  # ignored: recomputed from the mask
            "predicted_iou": 0.9 - 0.01 * i,
            "point_coords": [[1.5 + i, 2.5]],
            "stability_score": 0.95,
            "crop_box": [0, 0, W, H],
        }
        if levels is not None:
            ann["level"] = levels[i]
        anns.append(json.loads(json.dumps(ann)))  # exactly what a JSON file gives back
    return anns


@pytest.mark.parametrize("mode", ["coco_rle", "uncompressed_rle"])
def test_compressed_and_uncompressed_rle(mode: str) -> None:
    masks = _masks()
    levels = [2, 1, 0, 1, 2]
    anns = _sam_anns(masks, mode, levels)
    if mode == "coco_rle":
        assert isinstance(anns[0]["segmentation"]["counts"], str)
    else:
        assert isinstance(anns[0]["segmentation"]["counts"], list) and anns[0]["segmentation"]["counts"][0] == 0
    sp = superpixels_from_sam_annotations(anns, (H, W))
    assert isinstance(sp, Superpixels) and len(sp) == 5 and sp.size == (H, W)
    np.testing.assert_array_equal(sp.masks, masks)  # order kept, no filtering
    np.testing.assert_array_equal(sp.levels, levels)
    np.testing.assert_array_equal(sp.predicted_iou, np.float32([0.9 - 0.01 * i for i in range(5)]))
    np.testing.assert_array_equal(sp.stability_score, np.float32([0.95] * 5))
    np.testing.assert_array_equal(sp.point_coords, [[1.5 + i, 2.5] for i in range(5)])
    np.testing.assert_array_equal(sp.crop_box, np.tile([0, 0, W, H], (5, 1)))
    np.testing.assert_array_equal(sp.area, masks.reshape(5, -1).sum(1))  # recomputed, not the given bbox/area
    assert sp.bbox[0].tolist() != [0, 0, 1, 1]
    assert sp.preset == "import"
    # same masks and atoms as building from the masks directly
    direct = Superpixels.from_masks(masks, levels)
    assert sp.rle_counts == direct.rle_counts
    np.testing.assert_array_equal(sp.atoms, direct.atoms)


def test_missing_level_means_whole_and_the_wrapper_object_is_accepted() -> None:
    masks = _masks(3)
    anns = [{"segmentation": a["segmentation"]} for a in _sam_anns(masks, "coco_rle")]
    sp = superpixels_from_sam_annotations({"annotations": anns}, (H, W))
    assert sp.levels.tolist() == [2, 2, 2]
    assert np.isnan(sp.predicted_iou).all() and np.isnan(sp.point_coords).all()
    np.testing.assert_array_equal(sp.crop_box, np.tile([0, 0, W, H], (3, 1)))
    # levels given for some annotations only: an error, not a silent default
    anns[1]["level"] = 1
    with pytest.raises(DataError, match="have a 'level'"):
        superpixels_from_sam_annotations(anns, (H, W), where="x.json")


def test_binary_mask_segmentation_and_flat_point() -> None:
    masks = _masks(2)
    anns = [{"segmentation": masks[0].astype(np.uint8), "point_coords": [3, 4]}, {"segmentation": masks[1].tolist()}]
    sp = superpixels_from_sam_annotations(anns, (H, W))
    np.testing.assert_array_equal(sp.masks, masks)
    assert sp.point_coords[0].tolist() == [3, 4] and np.isnan(sp.point_coords[1]).all()


def test_no_annotations() -> None:
    sp = superpixels_from_sam_annotations([], (H, W))
    assert len(sp) == 0 and sp.atom_area.tolist() == [H * W]


def test_size_mismatch_is_a_data_error() -> None:
    anns = _sam_anns(_masks(2), "coco_rle")
    with pytest.raises(DataError, match=r"img\.json: annotation 0: mask size \[23, 31\].*\[24, 31\]"):
        superpixels_from_sam_annotations(anns, (H + 1, W), where="img.json")
    with pytest.raises(DataError, match="annotation 0"):
        superpixels_from_sam_annotations([{"segmentation": np.zeros((H, W + 1), bool)}], (H, W))


@pytest.mark.parametrize(
    "seg",
    [
        {"size": [H, W], "counts": [H * W - 1]},  # runs do not cover the image
        {"size": [H, W], "counts": [H * W + 1, -1]},  # negative run
        {"size": [H, W], "counts": "0a"},  # truncated string
        {"size": [H, W], "counts": "P0"},  # decodes fine, wrong total (string decoded here, not in C)
        {"size": [H, W]},
        [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]],  # a polygon
        "nonsense",
    ],
)
def test_malformed_segmentations_are_data_errors(seg: object) -> None:
    with pytest.raises(DataError, match="annotation 1"):
        superpixels_from_sam_annotations([{"segmentation": np.zeros((H, W))}, {"segmentation": seg}], (H, W))


@pytest.mark.parametrize(
    "bad", [{"level": 3}, {"level": "whole"}, {"point_coords": [[1, 2, 3]]}, {"crop_box": [0, 0, 1.5, 2]}]
)
def test_bad_fields_are_data_errors(bad: dict) -> None:
    ann = {"segmentation": np.zeros((H, W)), **bad}
    with pytest.raises(DataError, match="annotation 0"):
        superpixels_from_sam_annotations([ann], (H, W))


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
def test_rle_string_decoder_matches_pycocotools() -> None:
    rng = np.random.default_rng(1)
    for t in range(60):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        m = rng.random((h, w)) < rng.random()
        if t % 2:  # long runs: multi-digit and negative differences
            yy, xx = np.mgrid[0:h, 0:w]
            m = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < rng.uniform(0, 1500)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        counts = rle_string_to_counts(rle["counts"].decode())
        np.testing.assert_array_equal(counts_to_mask(counts, (h, w)), m)
        np.testing.assert_array_equal(counts_to_mask(counts, (h, w)), mask_utils.decode(rle).astype(bool))


def test_read_json_files_and_lookup(tmp_path: Path) -> None:
    anns = _sam_anns(_masks(2), "coco_rle", [2, 0])
    (tmp_path / "a.json").write_text(json.dumps(anns))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_text(json.dumps({"annotations": anns}))
    assert find_sam_annotations(tmp_path, "a") == tmp_path / "a.json"
    assert find_sam_annotations(tmp_path, "sub/b") == tmp_path / "sub" / "b.json"  # ids with subfolders
    assert find_sam_annotations(tmp_path, "c") is None
    assert read_sam_annotations(tmp_path / "a.json") == anns == read_sam_annotations(tmp_path / "sub" / "b.json")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "obj.json").write_text(json.dumps({"masks": []}))
    (tmp_path / "num.json").write_text(json.dumps([1, 2]))
    for name in ("bad", "obj", "num"):
        with pytest.raises(DataError, match=f"{name}.json"):
            read_sam_annotations(tmp_path / f"{name}.json")


def test_amg_png_folder(tmp_path: Path) -> None:
    """The folder segment_anything's scripts/amg.py writes without --convert-to-rle (write_masks_to_folder)."""
    masks = _masks(3)
    folder = tmp_path / "img1"
    folder.mkdir()
    header = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,"
              "crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")
    rows = [header]
    for i, m in enumerate(masks):
        Image.fromarray(m.astype(np.uint8) * 255).save(folder / f"{i}.png")
        rows.append(f"{i},{int(m.sum())},0,0,1,1,{i + 0.5},7.25,0.{90 - i},0.97,0,0,{W},{H}")
    (folder / "metadata.csv").write_text("\n".join(rows))  # amg.py writes no final newline
    assert find_sam_annotations(tmp_path, "img1") == folder
    sp = superpixels_from_sam_annotations(read_sam_annotations(folder), (H, W), where=folder)
    np.testing.assert_array_equal(sp.masks, masks)
    assert sp.levels.tolist() == [2, 2, 2]
    np.testing.assert_array_equal(sp.predicted_iou, np.float32([0.90, 0.89, 0.88]))
    np.testing.assert_array_equal(sp.point_coords, [[0.5, 7.25], [1.5, 7.25], [2.5, 7.25]])
    # an optional level column is read
    (folder / "metadata.csv").write_text("\n".join([rows[0] + ",level"] + [r + f",{i % 3}" for i, r in
                                                                             enumerate(rows[1:])]))
    assert superpixels_from_sam_annotations(read_sam_annotations(folder), (H, W)).levels.tolist() == [0, 1, 2]
    (folder / "1.png").unlink()
    with pytest.raises(DataError, match="1.png"):
        read_sam_annotations(folder)


# -- hostile input: never a crash, always one error naming the file --------------------------------------------


def test_run_lengths_that_would_overflow_are_an_error_not_a_crash(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tag2mask.data import make_synthetic_dataset

    h, w = 48, 64
    huge = [h * w, 2**62, 2**62, 2**62, 2**62]  # sums past int64: np.repeat used to segfault on it
    with pytest.raises(ValueError, match="larger than H·W"):
        counts_to_mask(np.array(huge, np.int64), (h, w))
    # the same through the command line, on a real import folder
    data = make_synthetic_dataset(tmp_path / "shapes", n_train=2, n_val=1, size=(h, w))
    imports = tmp_path / "imports"
    imports.mkdir()
    for stem in ("train_0000", "train_0001"):
        anns = [{"segmentation": {"size": [h, w], "counts": huge}}]
        (imports / f"{stem}.json").write_text(json.dumps(anns))
    r = subprocess.run([sys.executable, "-m", "tag2mask.cli", "superpixels", "--preset", "demo", f"data.root={data}",
                        f"runtime.cache_dir={tmp_path / 'cache'}", "--import", str(imports)],
                       capture_output=True, text=True, timeout=120)
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(errors) == 1  # (the rest: the progress bar)
    assert str(imports / "train_0000.json") in errors[0] and "larger than H·W" in errors[0]


def _encode_counts(counts: list[int]) -> str:
    """pycocotools' string encoding of run lengths (rleToString), written out for the test."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_compressed_strings_with_huge_runs_are_refused() -> None:
    assert rle_string_to_counts(_encode_counts([5, 3, 8])).tolist() == [5, 3, 8]
    with pytest.raises(ValueError, match="too large"):
        rle_string_to_counts(_encode_counts([0] + [2**59] * 40))
    with pytest.raises(ValueError):  # any way it fails, it is a ValueError: the caller names the file
        counts_to_mask(rle_string_to_counts(_encode_counts([3072, 2**40, 2**40])), (48, 64))


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                       st.text(max_size=12))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=12)
_counts = st.one_of(st.lists(st.integers(-(2**64), 2**64), max_size=8), st.text(max_size=40), _json)
_segmentation = st.one_of(
    st.fixed_dictionaries({"size": st.one_of(st.just([4, 6]), _json), "counts": _counts}), _json)
_annotation = st.one_of(st.fixed_dictionaries({"segmentation": _segmentation},
                                              optional={"level": _json, "predicted_iou": _json,
                                                        "stability_score": _json, "point_coords": _json,
                                                        "crop_box": _json}), _json)


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anns=st.one_of(st.lists(_annotation, max_size=3), _json))
def test_any_annotation_file_content_is_superpixels_or_one_error_naming_the_file(anns: object) -> None:
    try:
        sp = superpixels_from_sam_annotations(anns, (4, 6), where="x/img.json")  # type: ignore[arg-type]
    except DataError as e:
        assert str(e).startswith("x/img.json: ") and "\n" not in str(e)
    else:
        assert isinstance(sp, Superpixels) and sp.masks.shape[1:] == (4, 6)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_any_bytes_in_an_annotation_file_are_read_or_one_error(tmp_path_factory: pytest.TempPathFactory,
                                                               raw: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "img.json"
    path.write_bytes(raw)
    try:
        anns = read_sam_annotations(path)
    except DataError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
    else:
        assert isinstance(anns, list)
