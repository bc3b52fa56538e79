"""Class-aware attention affinity (CAA, SPEC §6; §13 items 13–14; Appendix C)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tag2mask.cam import (
    box_masks,
    caa_refine,
    cam_to_score,
    class_boxes,
    merge_attention,
    sinkhorn_affinity,
    sinkhorn_normalise,
)

DATA = Path(__file__).parent / "data"

# The two final VOC settings of SPEC §6 (Sinkhorn 1, power 2).
SETTINGS = {
    "cls": dict(sinkhorn_iters=1, power=2, box_thresh=0.4, propagate="score"),
    "seg": dict(sinkhorn_iters=1, power=2, box_thresh=0.5, propagate="cam"),
}
CASES = ["caa_01", "caa_07"]


def _load(case: str) -> dict[str, np.ndarray]:
    with np.load(DATA / f"{case}.npz") as z:
        return {k: z[k] for k in z.files}


def _assert_close_to_reference(out: np.ndarray, ref: np.ndarray) -> None:
    """Float agreement with the authors' float32 numbers: rtol 1e-5, atol 1e-6 of the output's scale."""
    scale = float(np.abs(ref).max()) or 1.0
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * scale)


# ----------------------------------------------------------------------------------------------------------------
# Reference cases (computed by the authors' code; tests/data/caa_*.npz, boxes copied from index.json)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_output_matches_reference(case: str, setting: str) -> None:
    z = _load(case)
    out = caa_refine(z["cam"], z["att"], **SETTINGS[setting])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == z["cam"].shape
    _assert_close_to_reference(out, z[f"cam_affed_{setting}"])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_score_masks_and_boxes_match_reference(case: str, setting: str) -> None:
    z = _load(case)
    thresh = SETTINGS[setting]["box_thresh"]
    score = cam_to_score(torch.from_numpy(z["cam"]))
    np.testing.assert_array_equal(score.numpy(), z[f"score_{setting}"])  # bit-exact in float32
    np.testing.assert_array_equal(box_masks(score, thresh), z[f"inbox_{setting}"].astype(bool))
    for c in range(score.shape[0]):
        got = sorted(class_boxes(score[c].numpy(), thresh))
        want = sorted(tuple(int(v) for v in b) for b in z[f"boxes_{setting}_{c}"])
        assert got == want


def test_affinity_matches_reference() -> None:
    z = _load("caa_01")
    aff = sinkhorn_affinity(torch.from_numpy(z["att"]), 1).numpy()
    np.testing.assert_allclose(aff, z["aff_cls"], rtol=1e-6, atol=0)


def test_reference_degenerate_border_box_gives_zero_map() -> None:
    # caa_07, class 1: a single contour on the bottom row gives the box [0, 4, 1, 4] -> empty mask -> all zeros.
    z = _load("caa_07")
    out = caa_refine(z["cam"], z["att"], **SETTINGS["cls"])
    assert np.all(out[1] == 0) and np.all(z["cam_affed_cls"][1] == 0)
    # The inclusive mode keeps that row and propagates something.
    assert np.any(caa_refine(z["cam"], z["att"], boxes="inclusive", **SETTINGS["cls"])[1] != 0)


# ----------------------------------------------------------------------------------------------------------------
# Hand-built cases


def _block_attention() -> np.ndarray:
    """2×2 grid (pixels 0,1 = top row; 2,3 = bottom row). Columns sum to 4, so one Sinkhorn pass gives
    M = blockdiag([[.75, .25], [.25, .75]]) twice, which is symmetric, and M² = blockdiag([[.625, .375], [.375, .625]])."""
    block = np.array([[3.0, 1.0], [1.0, 3.0]], dtype=np.float32)
    att = np.zeros((4, 4), dtype=np.float32)
    att[:2, :2] = block
    att[2:, 2:] = block
    return att


def _hand_cam() -> np.ndarray:
    return np.array(
        [
            [[4.0, 0.0], [0.0, 0.0]],  # class 0: hot pixel top-left -> box [0, 0, 1, 1] in both modes
            [[0.0, 0.0], [0.0, 4.0]],  # class 1: hot pixel bottom-right -> reference box [1, 1, 1, 1] is empty
            [[-1.0, -2.0], [-3.0, -4.0]],  # class 2: score all zero -> no contour at all
        ],
        dtype=np.float32,
    )


def test_hand_sinkhorn_affinity() -> None:
    aff = sinkhorn_affinity(torch.from_numpy(_block_attention()), 1).numpy()
    want = np.array([[0.75, 0.25, 0, 0], [0.25, 0.75, 0, 0], [0, 0, 0.75, 0.25], [0, 0, 0.25, 0.75]], np.float32)
    np.testing.assert_array_equal(aff, want)


def test_hand_boxes() -> None:
    score = cam_to_score(torch.from_numpy(_hand_cam())).numpy()
    np.testing.assert_array_equal(score[0], [[1, 0], [0, 0]])  # 4 / (4 + 1e-7) is 1 in float32
    assert class_boxes(score[0], 0.4) == [(0, 0, 1, 1)]
    assert class_boxes(score[1], 0.4) == [(1, 1, 1, 1)]  # clipped to W-1 / H-1: empty
    assert class_boxes(score[1], 0.4, "inclusive") == [(1, 1, 2, 2)]
    assert class_boxes(score[2], 0.4) == [(0, 0, 0, 0)]
    assert class_boxes(score[2], 0.4, "inclusive") == []
    ref = box_masks(score, 0.4)
    assert ref[0].tolist() == [[True, False], [False, False]] and not ref[1].any() and not ref[2].any()
    inc = box_masks(score, 0.4, "inclusive")
    assert inc[1].tolist() == [[False, False], [False, True]] and inc[2].all()  # class 2 falls back to all ones


@pytest.mark.parametrize(
    ("propagate", "boxes", "want"),
    [
        # propagate score = [1,0,0,0], [0,0,0,1], [0,0,0,0]; out = M² (B ⊙ x)
        ("score", "reference", [[[0.625, 0.375], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]]),
        ("score", "inclusive", [[[0.625, 0.375], [0, 0]], [[0, 0], [0.375, 0.625]], [[0, 0], [0, 0]]]),
        # propagate raw cam: class 2 = [-1,-2,-3,-4] is zeroed (empty mask) or fully propagated (fallback)
        ("cam", "reference", [[[2.5, 1.5], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]]),
        ("cam", "inclusive", [[[2.5, 1.5], [0, 0]], [[0, 0], [1.5, 2.5]], [[-1.375, -1.625], [-3.375, -3.625]]]),
    ],
)
def test_hand_caa(propagate: str, boxes: str, want: list) -> None:
    out = caa_refine(_hand_cam(), _block_attention(), power=2, box_thresh=0.4, propagate=propagate, boxes=boxes)
    np.testing.assert_allclose(out, np.array(want, np.float32), rtol=1e-6, atol=1e-7)


def test_hand_border_box_loses_last_row_and_column_in_reference_mode() -> None:
    # 3×4 grid, identity attention (Aff = I), so the output is B ⊙ score.
    cam = np.zeros((1, 3, 4), np.float32)
    cam[0, 1:, 2:] = [[2.0, 4.0], [4.0, 4.0]]  # block touching the right and bottom border
    cam[0, 0, 0] = 1.0  # score 0.25 -> uint8 63, below int(0.4 * 255) = 102: outside every box
    att = np.eye(12, dtype=np.float32)
    score = cam_to_score(torch.from_numpy(cam)).numpy()
    assert class_boxes(score[0], 0.4) == [(2, 1, 3, 2)]  # boundingRect (2, 1, 2, 2), clipped
    assert class_boxes(score[0], 0.4, "inclusive") == [(2, 1, 4, 3)]

    ref = caa_refine(cam, att, power=2, box_thresh=0.4)
    want_ref = np.zeros((1, 3, 4), np.float32)
    want_ref[0, 1, 2] = 0.5  # only the block's top-left pixel survives
    np.testing.assert_array_equal(ref, want_ref)

    inc = caa_refine(cam, att, power=2, box_thresh=0.4, boxes="inclusive")
    want_inc = score.copy()
    want_inc[0, 0, 0] = 0.0
    np.testing.assert_array_equal(inc, want_inc)


def test_threshold_is_relative_to_the_quantised_maximum() -> None:
    # In float32 the maximum score of caa_07's classes quantises to 254, so the cut is int(0.4 * 254) = 101 and a
    # pixel quantised to 102 passes; against 255 the cut would be 102 and it would not.
    score = np.array([[0.0, 102.5 / 255, 254.5 / 255]], np.float32)
    quant = (score * 255).astype(np.uint8)
    assert quant.tolist() == [[0, 102, 254]]
    assert class_boxes(score, 0.4, "inclusive") == [(1, 0, 3, 1)]


# ----------------------------------------------------------------------------------------------------------------
# Interfaces and properties


def _random_inputs(seed: int, n_cls: int = 3, h: int = 6, w: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cam = rng.normal(size=(n_cls, h, w)).astype(np.float32)
    logits = 3.0 * rng.normal(size=(h * w, h * w))
    att = np.exp(logits - logits.max(axis=1, keepdims=True))
    att = (att / att.sum(axis=1, keepdims=True)).astype(np.float32)
    return cam, att


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_numpy_and_torch_inputs_agree(setting: str) -> None:
    cam, att = _random_inputs(0)
    out_np = caa_refine(cam, att, **SETTINGS[setting])
    out_t = caa_refine(torch.from_numpy(cam), torch.from_numpy(att), **SETTINGS[setting])
    out_mixed = caa_refine(torch.from_numpy(cam), att, **SETTINGS[setting])
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor) and isinstance(out_mixed, torch.Tensor)
    assert out_t.dtype == torch.float32
    np.testing.assert_array_equal(out_np, out_t.numpy())
    np.testing.assert_array_equal(out_np, out_mixed.numpy())


def test_inputs_are_not_modified_and_read_only_arrays_work() -> None:
    cam, att = _random_inputs(1)
    cam0, att0 = cam.copy(), att.copy()
    cam.flags.writeable = False
    att.flags.writeable = False
    caa_refine(cam, att, sinkhorn_iters=3)
    np.testing.assert_array_equal(cam, cam0)
    np.testing.assert_array_equal(att, att0)
    att_t = torch.from_numpy(att0.copy())
    caa_refine(torch.from_numpy(cam0.copy()), att_t, sinkhorn_iters=2)
    np.testing.assert_array_equal(att_t.numpy(), att0)


def test_per_layer_attention_equals_pre_merged() -> None:
    rng = np.random.default_rng(2)
    h, w, depth = 4, 5, 12
    cam = rng.normal(size=(2, h, w)).astype(np.float32)
    logits = rng.normal(size=(depth, h * w + 1, h * w + 1))
    per_layer = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    per_layer = per_layer.astype(np.float32)
    merged = per_layer[-8:, 1:, 1:].mean(axis=0)
    np.testing.assert_allclose(merge_attention(torch.from_numpy(per_layer), 8).numpy(), merged, rtol=1e-6)
    merged_t = merge_attention(torch.from_numpy(per_layer), 8).numpy()
    for setting in SETTINGS.values():
        np.testing.assert_array_equal(caa_refine(cam, per_layer, **setting), caa_refine(cam, merged_t, **setting))
    # att_layers selects the layers
    only_last = per_layer[-1:, 1:, 1:].mean(axis=0)
    np.testing.assert_allclose(
        caa_refine(cam, per_layer, att_layers=1), caa_refine(cam, only_last), rtol=1e-6, atol=1e-9
    )


@pytest.mark.parametrize("seed", range(4))
def test_power_one_full_box_equals_affinity_times_score(seed: int) -> None:
    cam, att = _random_inputs(seed)
    cam = 1.0 + 0.1 * np.abs(cam)  # every pixel well above the threshold (score >= 1 / max > 0.4) ...
    cam[:, 2, 3] = 0.0  # ... except one interior minimum: one contour whose box is the whole grid
    score = cam_to_score(torch.from_numpy(cam))
    assert box_masks(score, 0.4, "inclusive").all()
    aff = sinkhorn_affinity(torch.from_numpy(att), 1)
    want = (aff @ score.reshape(3, -1).T).T.reshape(cam.shape).numpy()
    out = caa_refine(cam, att, power=1, propagate="score", boxes="inclusive")
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sinkhorn_iters", [0, 1, 3])
@pytest.mark.parametrize("power", [0, 1, 2, 3])
def test_equals_explicit_matrix_power_with_masked_columns(seed: int, sinkhorn_iters: int, power: int) -> None:
    cam, att = _random_inputs(seed)
    cam_t, att_t = torch.from_numpy(cam).double(), torch.from_numpy(att).double()
    score = cam_to_score(cam_t)
    mask = torch.from_numpy(box_masks(score, 0.4)).double().reshape(3, 1, -1)
    aff = torch.linalg.matrix_power(sinkhorn_affinity(att_t, sinkhorn_iters), power)
    for propagate, x in (("score", score), ("cam", cam_t)):
        want = ((aff[None] * mask) @ x.reshape(3, -1, 1)).reshape(cam.shape)
        out = caa_refine(cam_t, att_t, sinkhorn_iters=sinkhorn_iters, power=power, propagate=propagate)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)


def test_sinkhorn_normalise_columns_then_rows() -> None:
    _, att = _random_inputs(5)
    a = sinkhorn_normalise(torch.from_numpy(att).double(), 1)
    np.testing.assert_allclose(a.sum(dim=1).numpy(), 1.0, rtol=1e-12)  # rows last, so rows sum to one
    col = att.astype(np.float64) / att.astype(np.float64).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(a.numpy(), col / col.sum(axis=1, keepdims=True), rtol=1e-12)
    assert sinkhorn_normalise(torch.from_numpy(att), 0) is not None


def test_half_precision_attention_is_computed_in_the_cam_dtype() -> None:
    cam, att = _random_inputs(6)
    out16 = caa_refine(cam, att.astype(np.float16))
    out32 = caa_refine(cam, att.astype(np.float16).astype(np.float32))
    assert out16.dtype == np.float32
    np.testing.assert_array_equal(out16, out32)
    assert caa_refine(cam.astype(np.float16), att).dtype == np.float32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(propagate="logits"), "propagate"),
        (dict(boxes="outer"), "boxes"),
        (dict(power=-1), "power"),
        (dict(sinkhorn_iters=-1), "sinkhorn_iters"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    cam, att = _random_inputs(7)
    with pytest.raises(ValueError, match=match):
        caa_refine(cam, att, **kwargs)


def test_bad_shapes_raise() -> None:
    cam, att = _random_inputs(8)
    with pytest.raises(ValueError, match="attention"):
        caa_refine(cam, att[:-1, :-1])
    with pytest.raises(ValueError, match="per-layer"):
        caa_refine(cam, np.ones((3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="cam"):
        caa_refine(cam[0], att)


def test_identity_attention_keeps_the_in_box_cam_and_zeroes_the_rest() -> None:
    # identity attention stays the identity through Sinkhorn, symmetrisation and the power, so CAA only applies
    # the class's box mask: in-box values are unchanged, everything outside becomes 0
    cam = np.zeros((1, 4, 5), np.float32)
    cam[0, 1:3, 1:3] = [[0.2, 0.9], [0.5, 1.0]]
    cam[0, 0, 4] = -0.3
    out = caa_refine(cam, np.eye(20, dtype=np.float32), box_thresh=0.4, propagate="cam", boxes="inclusive")
    inbox = np.zeros((4, 5), bool)
    inbox[1:3, 1:3] = True
    np.testing.assert_array_equal(out[0][inbox], cam[0][inbox])
    assert np.all(out[0][~inbox] == 0)
