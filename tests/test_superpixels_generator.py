"""QuasiSuperpixelGenerator (SPEC §7) on a scripted fake SAM: exact agreement with the reference case amg_02,
presets and overrides, and agreement with upstream SamAutomaticMaskGenerator for the official defaults."""

from __future__ import annotations

import copy
import dataclasses
import json
import types
from collections.abc import Iterator
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


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The generator's tensors are small; one intra-op thread is faster, notably on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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
    fields = {f.name for f in dataclasses.fields(SuperpixelsConfig)} - {"source", "preset"}
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


def test_no_mask_survives(case: dict) -> None:
    gen = QuasiSuperpixelGenerator(_fake(case), points_per_side=4, crop_n_layers=0, pred_iou_thresh=5.0)
    sp = gen.generate(case["image"])
    assert len(sp) == 0 and sp.masks.shape == (0, *case["image"].shape[:2])
    assert sp.atom_area.tolist() == [case["image"].shape[0] * case["image"].shape[1]]


def test_image_must_be_rgb_uint8(case: dict) -> None:
    with pytest.raises(ValueError):
        QuasiSuperpixelGenerator(_fake(case)).generate(case["image"].astype(np.float32))
