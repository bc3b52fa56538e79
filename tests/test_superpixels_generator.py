"""QuasiSuperpixelGenerator (SPEC §7) on a scripted fake SAM: exact agreement with the reference case amg_02,
presets and overrides, and agreement with upstream SamAutomaticMaskGenerator for the official defaults."""

from __future__ import annotations

import copy
import dataclasses
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import MaskData, rle_to_mask

from fake_sam import FakePredictor, coord_image
from tag2mask.config import SuperpixelsConfig
from tag2mask.errors import ConfigError
from tag2mask.superpixels import PARAM_NAMES, PRESETS, QuasiSuperpixelGenerator, Superpixels, resolve_params

DATA = Path(__file__).parent / "data"


def _unpack(z: dict, key: str) -> np.ndarray:
    shape = tuple(z[key + "_shape"])
    return np.unpackbits(z[key], axis=-1, count=shape[-1]).astype(bool).reshape(shape)


@pytest.fixture(scope="module")
def case() -> dict:
    meta = json.loads((DATA / "amg_02.json").read_text())
    with np.load(DATA / "amg_02.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return {"meta": meta, "z": arrays, "image": coord_image(meta["case"]["H"], meta["case"]["W"])}


def _fake(case: dict) -> FakePredictor:
    return FakePredictor(case["z"], case["meta"]["logit_amp"], case["meta"]["noise_step"])


# points_per_batch does not change the results (SPEC §7.2; batches are concatenated in point order before any
# NMS), but upstream mask_to_rle_pytorch is quadratic in the batch size on CPU: 64 keeps the tests fast.
FAST = {"points_per_batch": 64}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _KeepStage1(QuasiSuperpixelGenerator):
    """Keeps a copy of the steps 1-7 output of its last ``generate``."""

    def generate_candidates(self, image: np.ndarray) -> MaskData:
        data = super().generate_candidates(image)
        self.stage1 = copy.deepcopy(data)
        return data


@pytest.fixture(scope="module")
def generated(case: dict) -> tuple[QuasiSuperpixelGenerator, MaskData, Superpixels]:
    """One full ``generate`` with the default preset (steps 1-9), and its steps 1-7 output."""
    gen = _KeepStage1(_fake(case), **FAST)
    sp = gen.generate(case["image"])
    return gen, gen.stage1, sp


@pytest.fixture(scope="module")
def candidates(generated: tuple) -> MaskData:
    return generated[1]


def test_default_preset_is_the_reference_pattern(case: dict) -> None:
    params = resolve_params()
    for key, value in case["meta"]["pattern"].items():
        name = "hierarchy_recall_thresh" if key == "rock_sand_water_thresh" else key
        assert params[name] == pytest.approx(value), name


def test_parameter_names_are_the_config_keys() -> None:
    # max_side is the stage's working size (it downscales the image given to the generator), not a generator setting
    fields = {f.name for f in dataclasses.fields(SuperpixelsConfig)} - {"source", "preset", "import_dir", "max_side"}
    assert set(PARAM_NAMES) == fields
    for preset in PRESETS:
        assert set(PRESETS[preset]) == set(PARAM_NAMES), preset
    # the config's defaults are the default preset
    cfg = SuperpixelsConfig()
    assert resolve_params(cfg.preset) == resolve_params(cfg.preset, **{k: getattr(cfg, k) for k in PARAM_NAMES})


def test_stage1_matches_the_reference_exactly(case: dict, candidates: MaskData) -> None:
    z = case["z"]
    masks = np.stack([rle_to_mask(r) for r in candidates["rles"]])
    assert len(masks) == case["meta"]["case"]["n_after_generate_masks"]
    np.testing.assert_array_equal(masks, _unpack(z, "s1_masks"))
    np.testing.assert_array_equal(candidates["levels"], z["s1_level"])
    np.testing.assert_array_equal(candidates["iou_preds"].astype(np.float64), z["s1_predicted_iou"])
    np.testing.assert_array_equal(candidates["stability_score"].astype(np.float64), z["s1_stability_score"])
    np.testing.assert_array_equal(candidates["points"], z["s1_point_coords"])
    np.testing.assert_array_equal(candidates["crop_boxes"], z["s1_crop_box_xyxy"])
    np.testing.assert_array_equal(candidates["boxes"], z["s1_box_xyxy"])


def test_final_output_matches_the_reference_exactly(case: dict, generated: tuple) -> None:
    z = case["z"]
    gen, candidates, sp = generated
    data = gen.postprocess(copy.deepcopy(candidates))
    np.testing.assert_array_equal(data["iou_thresh_scores"].astype(np.float64), z["out_predicted_iou_thresh"])
    np.testing.assert_array_equal(data["iou_nms_scores"].astype(np.float64), z["out_predicted_iou_nms"])

    # the whole path, steps 1-9
    assert isinstance(sp, Superpixels) and len(sp) == case["meta"]["case"]["n_final"]
    assert sp.size == (case["meta"]["case"]["H"], case["meta"]["case"]["W"])
    np.testing.assert_array_equal(sp.masks, _unpack(z, "out_masks"))
    np.testing.assert_array_equal(sp.levels, z["out_level"])
    np.testing.assert_array_equal(sp.area, z["out_area"])
    np.testing.assert_array_equal(sp.bbox, z["out_bbox_xywh"])
    np.testing.assert_array_equal(sp.predicted_iou.astype(np.float64), z["out_predicted_iou"])
    np.testing.assert_array_equal(sp.stability_score.astype(np.float64), z["out_stability_score"])
    np.testing.assert_array_equal(sp.point_coords, z["out_point_coords"])
    np.testing.assert_array_equal(sp.crop_box, z["out_crop_box_xywh"])
    assert sp.preset == "l2_nmsf_s1_rsw3" and sp.config_hash == gen.config_hash


def test_override_without_hierarchy_equals_l2_nmsf_s1(case: dict, candidates: MaskData) -> None:
    a = QuasiSuperpixelGenerator(_fake(case), hierarchy_recall_thresh=None)
    b = QuasiSuperpixelGenerator(_fake(case), "l2_nmsf_s1")
    assert a.params == b.params and a.config_hash == b.config_hash
    da = a.postprocess(copy.deepcopy(candidates))
    db = b.postprocess(copy.deepcopy(candidates))
    assert da["rles"] == db["rles"]
    np.testing.assert_array_equal(da["levels"], db["levels"])
    # without the hierarchy filter every candidate survives the small-region step on this case (the step's NMS
    # puts unchanged masks first, so the order may change)
    assert len(da["rles"]) == case["meta"]["case"]["n_after_small_region_postprocess"]
    assert sorted(map(tuple, da["points"].tolist())) == sorted(map(tuple, case["z"]["s1_point_coords"].tolist()))
    full = QuasiSuperpixelGenerator(_fake(case), **FAST).postprocess(copy.deepcopy(candidates))
    assert len(full["rles"]) == case["meta"]["case"]["n_final"] < len(da["rles"])


def test_presets_differ_where_the_spec_says() -> None:
    base = resolve_params("l2_nmsf_s1_rsw3")
    assert resolve_params("l2_nmsf_s1") == {**base, "hierarchy_recall_thresh": None}
    assert resolve_params("l2_nmsf_s1_c0") == {**base, "hierarchy_recall_thresh": None, "crop_n_layers": 0}
    l2 = resolve_params("l2_only")
    assert l2["score_thresh_offset"][:2] == [-1.0, -1.0]
    official = resolve_params("official_default")
    assert (official["pred_iou_thresh"], official["stability_score_thresh"]) == (0.88, 0.95)
    assert official["crop_n_layers"] == 0 and official["min_mask_region_area"] == 0
    assert official["hierarchy_recall_thresh"] is None


def test_unknown_preset_or_parameter_is_refused(case: dict) -> None:
    with pytest.raises(ConfigError):
        QuasiSuperpixelGenerator(_fake(case), "no_such_pattern")
    with pytest.raises(ConfigError):
        QuasiSuperpixelGenerator(_fake(case), points_per_sid=8)
    with pytest.raises(ConfigError):
        QuasiSuperpixelGenerator(_fake(case), score_nms_offset=[0.0, 1.0])


def test_official_default_equals_upstream_generator(case: dict) -> None:
    ours = QuasiSuperpixelGenerator(_fake(case), "official_default", points_per_side=16).generate(case["image"])
    # upstream builds a SamPredictor from a model; give it a stand-in model, then swap in the fake predictor
    model = types.SimpleNamespace(image_encoder=types.SimpleNamespace(img_size=1024))
    upstream = SamAutomaticMaskGenerator(model, points_per_side=16, output_mode="binary_mask")
    upstream.predictor = _fake(case)
    anns = upstream.generate(case["image"])
    assert len(ours) == len(anns) > 0
    np.testing.assert_array_equal(ours.masks, np.stack([a["segmentation"] for a in anns]))
    np.testing.assert_array_equal(ours.area, [a["area"] for a in anns])
    np.testing.assert_array_equal(ours.bbox, [a["bbox"] for a in anns])
    np.testing.assert_array_equal(ours.predicted_iou, np.float32([a["predicted_iou"] for a in anns]))
    np.testing.assert_array_equal(ours.stability_score, np.float32([a["stability_score"] for a in anns]))
    np.testing.assert_array_equal(ours.point_coords, [a["point_coords"][0] for a in anns])
    np.testing.assert_array_equal(ours.crop_box, [a["crop_box"] for a in anns])


def test_l2_only_keeps_whole_masks_only(case: dict) -> None:
    sp = QuasiSuperpixelGenerator(_fake(case), "l2_only", points_per_side=16, crop_n_layers=0).generate(case["image"])
    assert len(sp) > 0 and set(sp.levels.tolist()) == {2}


@pytest.mark.parametrize("crop_n_layers", [0, 1])  # with crops, stock SAM's crop merge fails on no mask at all
def test_no_mask_survives(case: dict, crop_n_layers: int) -> None:
    gen = QuasiSuperpixelGenerator(_fake(case), points_per_side=4, crop_n_layers=crop_n_layers, pred_iou_thresh=5.0)
    sp = gen.generate(case["image"])
    assert len(sp) == 0 and sp.masks.shape == (0, *case["image"].shape[:2])
    assert sp.atom_area.tolist() == [case["image"].shape[0] * case["image"].shape[1]]


def test_image_must_be_rgb_uint8(case: dict) -> None:
    with pytest.raises(ValueError):
        QuasiSuperpixelGenerator(_fake(case)).generate(case["image"].astype(np.float32))


# ----------------------------------------------------------------------------------------------------------------
# Hand-scripted cases: which masks survive the per-level offsets, and in which order (SPEC §7.2, §7.3 steps 3-9)
# ----------------------------------------------------------------------------------------------------------------

N = 64  # a 64×64 image; points_per_side=1 prompts (32, 32), points_per_side=2 prompts (16|48, 16|48)


def _scripted(regions: dict[int, list[tuple[slice, slice, float]]]) -> FakePredictor:
    """A fake SAM whose level-``l`` mask for a prompt is the region of ``regions[l]`` containing the prompt (the
    first that does), with that region's predicted IoU; elsewhere the "rest of the image" with IoU 0 (always
    dropped). Logits are ±2 without noise, so every stability score is exactly 1."""
    labels = np.zeros((3, N, N), np.int64)
    iou_base = np.zeros((3, 8), np.float32)
    for level, items in regions.items():
        for r, (rows, cols, iou) in reversed(list(enumerate(items, start=1))):
            labels[level, rows, cols] = r
            iou_base[level, r] = iou
    zeros = np.zeros((3, N, N))
    return FakePredictor({"labels": labels, "noise_q": zeros, "iou_base": iou_base, "iou_jit": zeros})


def _box(rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((N, N), bool)
    m[rows, cols] = True
    return m


S = np.s_  # S[8:56] is slice(8, 56)
ONE_POINT = {"points_per_side": 1, "crop_n_layers": 0, **FAST}
FOUR_POINTS = {"points_per_side": 2, "crop_n_layers": 0, "min_mask_region_area": 0, **FAST}


def test_whole_threshold_offset_decides_survival() -> None:
    """A whole mask at IoU 0.80 passes pred_iou_thresh 0.86 only with its +0.1 offset (effective 0.76)."""
    fake = {
        2: [(S[8:56], S[8:56], 0.80)],  # whole
        1: [(S[24:40], S[24:40], 0.95)],  # part inside it
        0: [(S[26:38], S[26:38], 0.93)],  # subpart inside both
    }
    image = coord_image(N, N)
    sp = QuasiSuperpixelGenerator(_scripted(fake), **ONE_POINT).generate(image)
    assert sp.levels.tolist() == [2]  # the part and subpart lie inside it: hierarchy filter
    np.testing.assert_array_equal(sp.masks[0], _box(S[8:56], S[8:56]))
    np.testing.assert_array_equal(sp.predicted_iou, np.float32([0.80]))  # stored without the offset
    assert sp.stability_score.tolist() == [1.0] and sp.point_coords.tolist() == [[32.0, 32.0]]

    no_offset = {"score_thresh_offset": [0.0, 0.0, 0.0]}
    sp = QuasiSuperpixelGenerator(_scripted(fake), **ONE_POINT, **no_offset).generate(image)
    assert sp.levels.tolist() == [1]  # whole gone; the part is the container, the subpart inside it
    np.testing.assert_array_equal(sp.masks[0], _box(S[24:40], S[24:40]))

    # the test is strict and in float32: 0.76 + 0.1 is float32(0.86), not > 0.86 -> dropped; 0.77 passes
    for iou, kept in ((0.76, False), (0.77, True)):
        sp = QuasiSuperpixelGenerator(_scripted({**fake, 2: [(S[8:56], S[8:56], iou)]}), **ONE_POINT).generate(image)
        assert (2 in sp.levels.tolist()) == kept, iou

    # without the hierarchy filter and the small-region step, both survivors come out in NMS score order
    sp = QuasiSuperpixelGenerator(
        _scripted(fake), **ONE_POINT, **no_offset, hierarchy_recall_thresh=None, min_mask_region_area=0
    ).generate(image)
    assert sp.levels.tolist() == [1, 0]
    np.testing.assert_array_equal(sp.predicted_iou, np.float32([0.95, 0.93]))


def test_nms_offset_keeps_the_whole_mask_over_a_better_scored_part() -> None:
    """Whole (IoU 0.80) and part (IoU 0.95) overlap with box IoU 0.83 > 0.7: box NMS keeps one of them. With
    the +1.0 NMS offset the whole wins (1.80 > 0.95); without it the part does."""
    fake = {
        2: [(S[8:56], S[8:56], 0.80)],
        1: [(S[8:56], S[8:48], 0.95)],
        0: [],  # the subpart is the rest of the image with IoU 0: dropped
    }
    image = coord_image(N, N)
    sp = QuasiSuperpixelGenerator(_scripted(fake), **ONE_POINT, hierarchy_recall_thresh=None).generate(image)
    assert sp.levels.tolist() == [2]
    np.testing.assert_array_equal(sp.masks[0], _box(S[8:56], S[8:56]))

    sp = QuasiSuperpixelGenerator(
        _scripted(fake), **ONE_POINT, hierarchy_recall_thresh=None, score_nms_offset=[0.0, 0.0, 0.0]
    ).generate(image)
    assert sp.levels.tolist() == [1]
    np.testing.assert_array_equal(sp.masks[0], _box(S[8:56], S[8:48]))

    # the official pattern has neither offset: the whole fails the threshold anyway
    sp = QuasiSuperpixelGenerator(_scripted(fake), "official_default", **ONE_POINT).generate(image)
    assert sp.levels.tolist() == [1]


def test_four_prompts_survivors_and_order() -> None:
    """Whole/part/subpart masks from four prompts: which survive the thresholds, NMS and the hierarchy filter,
    and the output order (wholes, then accepted parts, then accepted subparts, each in NMS-score order)."""
    tl, tr, bl = (S[0:32], S[0:32]), (S[0:32], S[32:64]), (S[32:64], S[0:32])
    fake = {
        2: [(*tl, 0.80)],  # prompt (16, 16): the top-left quadrant
        1: [
            (S[4:28], S[4:28], 0.95),  # prompt (16, 16): a part inside the whole
            (*tr, 0.90),  # prompt (48, 16): the top-right quadrant
        ],
        0: [
            (S[8:24], S[40:56], 0.99),  # prompt (48, 16): inside the top-right part
            (*bl, 0.87),  # prompt (16, 48): the bottom-left quadrant
            (S[40:56], S[40:56], 0.88),  # prompt (48, 48)
        ],
    }
    image = coord_image(N, N)
    expected = [_box(*tl), _box(*tr), _box(S[40:56], S[40:56]), _box(*bl)]
    sp = QuasiSuperpixelGenerator(_scripted(fake), **FOUR_POINTS).generate(image)
    assert sp.levels.tolist() == [2, 1, 0, 0]
    np.testing.assert_array_equal(sp.masks, np.stack(expected))
    np.testing.assert_array_equal(sp.predicted_iou, np.float32([0.80, 0.90, 0.88, 0.87]))
    np.testing.assert_array_equal(sp.point_coords, [[16, 16], [48, 16], [48, 48], [16, 48]])

    # without the whole-level offset the whole is gone; both parts are the container now, in score order
    sp = QuasiSuperpixelGenerator(_scripted(fake), **FOUR_POINTS, score_thresh_offset=[0, 0, 0]).generate(image)
    assert sp.levels.tolist() == [1, 1, 0, 0]
    np.testing.assert_array_equal(sp.predicted_iou, np.float32([0.95, 0.90, 0.88, 0.87]))

    # a stability bias on level 0 (stability 1.0 - 0.1 < 0.92) drops every subpart
    sp = QuasiSuperpixelGenerator(_scripted(fake), **FOUR_POINTS, stability_score_bias=[-0.1, 0, 0]).generate(image)
    assert sp.levels.tolist() == [2, 1]


def test_generated_superpixels_survive_a_save_load_round_trip(generated: tuple, tmp_path: Path) -> None:
    _, _, sp = generated
    sp.save(tmp_path / "amg_02")
    back = Superpixels.load(tmp_path / "amg_02")
    assert back.rle_counts == sp.rle_counts and (back.preset, back.config_hash) == (sp.preset, sp.config_hash)
    for name in ("levels", "predicted_iou", "stability_score", "area", "bbox", "point_coords", "crop_box", "atoms",
                 "atom_membership", "atom_area"):
        np.testing.assert_array_equal(getattr(back, name), getattr(sp, name), err_msg=name)


def test_fast_rle_equals_upstream() -> None:
    """generator.mask_to_rle is upstream mask_to_rle_pytorch, element for element (the results depend on it)."""
    from segment_anything.utils.amg import mask_to_rle_pytorch

    from tag2mask.superpixels.generator import mask_to_rle

    g = torch.Generator().manual_seed(0)
    for shape in [(0, 5, 6), (1, 1, 1), (3, 1, 7), (40, 31, 23)]:
        m = torch.rand(shape, generator=g) < 0.5
        if shape[0] >= 2:
            m[0], m[1] = True, False  # a mask that starts with a 1 run, and an empty one
        assert mask_to_rle(m) == mask_to_rle_pytorch(m), shape
