"""Dense-CRF seeds (SPEC §8.1, CONTEXT §2.6): parameter sets, the clip_es_crf image quirk, the CRF itself.

Tests that run the CRF need the optional ``pydensecrf2`` backend (extra ``crf``) and are skipped without it; the
parameter tables, the image transform, the score map and the missing-backend error are tested regardless.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from tag2mask.errors import Tag2MaskError
from tag2mask.seeding.crf import (
    CRF_PARAM_SETS,
    CrfParams,
    crf_image,
    crf_params,
    crf_scores,
    crf_seed,
    dense_crf,
)
from tag2mask.seeding import argmax_seed

HAS_BACKEND = importlib.util.find_spec("pydensecrf") is not None
needs_backend = pytest.mark.skipif(
    not HAS_BACKEND, reason='pydensecrf2 is not installed (optional extra: pip install -e ".[crf]")'
)


def _two_regions(h: int = 24, w: int = 48, edge: int = 24) -> np.ndarray:
    """Red object on the left of column ``edge``, blue background on the right."""
    img = np.empty((h, w, 3), np.uint8)
    img[:, :edge] = (210, 40, 30)
    img[:, edge:] = (20, 60, 200)
    return img


def _blurred_cam(h: int, w: int, centre: float, width: float) -> np.ndarray:
    """One CAM (1×h×w) that falls from high to low smoothly around column ``centre``."""
    x = np.arange(w, dtype=np.float32)
    row = 1.0 / (1.0 + np.exp((x - centre) / width))
    return np.broadcast_to(row, (h, w))[None].astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# parameter sets and image transform (no backend needed)


def test_parameter_sets_match_the_spec_table() -> None:
    assert CRF_PARAM_SETS == ("clip_es_crf,no_pp", "clip_es_crf", "deeplab_crf", "scale_crf")
    a = crf_params("clip_es_crf,no_pp")
    assert (a.iter_max, a.pos_w, a.pos_xy_std, a.bi_w, a.bi_xy_std, a.bi_rgb_std, a.image) == (
        10, 3, 1, 4, 67, 3, "rgb")
    b = crf_params("clip_es_crf")
    assert (b.iter_max, b.pos_w, b.pos_xy_std, b.bi_w, b.bi_xy_std, b.bi_rgb_std) == (10, 3, 1, 4, 67, 3)
    assert b.image == "bgr_mean_uint8_wrap"
    d = crf_params("deeplab_crf")
    assert (d.iter_max, d.pos_w, d.pos_xy_std, d.bi_w, d.bi_xy_std, d.bi_rgb_std, d.image) == (
        10, 2, 2, 4, 65, 3, "rgb")
    s = crf_params("scale_crf", scale=2.0)
    assert (s.iter_max, s.pos_w, s.pos_xy_std, s.bi_w, s.bi_xy_std, s.bi_rgb_std, s.image) == (
        10, 3, 1.5, 10, 40, 13, "rgb")


def test_parameter_set_errors() -> None:
    with pytest.raises(ValueError, match="unknown CRF parameter set"):
        crf_params("nope")
    with pytest.raises(ValueError, match="scale"):
        crf_params("scale_crf")
    with pytest.raises(ValueError, match="scale"):
        crf_params("scale_crf", scale=0)
    with pytest.raises(ValueError, match="scale"):
        crf_params("deeplab_crf", scale=2.0)


def test_clip_es_image_is_bgr_minus_mean_with_uint8_wrap_around() -> None:
    img = np.array([[[0, 0, 0], [255, 255, 255], [130, 120, 110], [10, 200, 104]]], np.uint8)
    out = crf_image(img, "clip_es_crf")
    assert out.dtype == np.uint8 and out.shape == img.shape and out.flags.c_contiguous
    # BGR − (104.008, 116.669, 122.675), truncated toward zero, modulo 256
    expect = np.array([[[152, 140, 134],  # (−104.008, −116.669, −122.675) → (−104, −116, −122) + 256
                        [150, 138, 132],  # (150.992, 138.331, 132.325)
                        [5, 3, 7],  # b=110 → 5.992, g=120 → 3.331, r=130 → 7.325
                        [0, 83, 144]]], np.uint8)  # b=104 → −0.008 → 0, g=200 → 83.331, r=10 → −112.675 → 144
    np.testing.assert_array_equal(out, expect)
    # the same values a float32 → uint8 cast gives on x86 (the reference's behaviour), computed independently
    bgr = img[..., ::-1].astype(np.float32) - np.array([104.008, 116.669, 122.675], np.float32)
    np.testing.assert_array_equal(out, (np.fix(bgr).astype(np.int32) & 0xFF).astype(np.uint8))


def test_other_sets_see_the_raw_rgb_image() -> None:
    img = _two_regions()
    for name in ("clip_es_crf,no_pp", "deeplab_crf"):
        np.testing.assert_array_equal(crf_image(img, name), img)
    np.testing.assert_array_equal(crf_image(img, "scale_crf", scale=1.0), img)
    with pytest.raises(ValueError, match="uint8"):
        crf_image(img.astype(np.float32))


def test_scores_are_the_spec_bg_pow_stack() -> None:
    cam = torch.tensor([[[0.0, 2.0], [4.0, -1.0]], [[1.0, 1.0], [3.0, 5.0]]])
    s = crf_scores(cam, (2, 2), bg_power=2.0)
    assert s.shape == (3, 2, 2) and s.dtype == np.float32
    fg0 = np.array([[0.0, 0.5], [1.0, 0.0]])  # clamp, min-max
    fg1 = np.array([[0.0, 0.0], [0.5, 1.0]])
    np.testing.assert_allclose(s[1], fg0, atol=1e-6)
    np.testing.assert_allclose(s[2], fg1, atol=1e-6)
    np.testing.assert_allclose(s[0], (1 - np.maximum(fg0, fg1)) ** 2, atol=1e-6)
    # resizing first (bilinear, align_corners=False) gives the argmax seed's map
    cam2 = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(0))
    s2 = crf_scores(cam2, (20, 28), 1.0)
    lut = np.array([0, 4, 10])
    np.testing.assert_array_equal(lut[s2.argmax(0)], argmax_seed(cam2, [3, 9], (20, 28)).numpy())


def test_missing_backend_raises_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    img = _two_regions()
    cam = _blurred_cam(24, 48, 28, 3)
    for call in (lambda: crf_seed(img, cam, [0]), lambda: dense_crf(img, crf_scores(cam, (24, 48)))):
        with pytest.raises(Tag2MaskError) as info:
            call()
        msg = str(info.value)
        assert msg == 'dense CRF needs the optional extra: pip install -e ".[crf]" (or pip install pydensecrf2)'
        assert "\n" not in msg


# ---------------------------------------------------------------------------------------------------------------
# the real backend


@needs_backend
def test_crf_snaps_a_blurred_cam_to_the_colour_edge() -> None:
    h, w, edge = 24, 48, 24
    img = _two_regions(h, w, edge)
    cam = _blurred_cam(h, w, centre=edge + 5.5, width=3.0)  # spills 5 columns over the true boundary
    plain = argmax_seed(cam, [6], (h, w))
    cols = np.flatnonzero(plain[0] == 7)
    assert cols.max() == edge + 5  # the argmax seed follows the blur
    for name in ("clip_es_crf,no_pp", "clip_es_crf", "deeplab_crf"):
        seed = crf_seed(img, cam, [6], params=name)
        assert seed.dtype == np.uint8 and seed.shape == (h, w)
        expect = np.zeros((h, w), np.uint8)
        expect[:, :edge] = 7
        np.testing.assert_array_equal(seed, expect, err_msg=name)
    seed = crf_seed(img, torch.from_numpy(cam.copy()), torch.tensor([6]), params="scale_crf", scale=1.0)
    assert (seed[:, :edge] == 7).all() and (seed[:, edge:] == 0).all()


@needs_backend
def test_dense_crf_returns_a_distribution() -> None:
    img = _two_regions()
    scores = crf_scores(_blurred_cam(24, 48, 29.5, 3.0), (24, 48))
    q = dense_crf(img, scores, "clip_es_crf,no_pp")
    assert q.shape == scores.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    assert (q >= 0).all()
    custom = CrfParams("mine", 10, 3.0, 1.0, 4.0, 67.0, 3.0)
    np.testing.assert_array_equal(dense_crf(img, scores, custom), q)
    with pytest.raises(ValueError, match="probs are"):
        dense_crf(img, scores[:, :10], "clip_es_crf,no_pp")


@needs_backend
def test_clip_es_quirk_differs_from_no_pp_only_through_the_image() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    img[:, 15:] //= 3
    scores = crf_scores(rng.random((2, 5, 8)).astype(np.float32), (20, 30), 1.0)
    q_quirk = dense_crf(img, scores, "clip_es_crf")
    q_plain = dense_crf(img, scores, "clip_es_crf,no_pp")
    # identical once the no_pp set is fed the transformed image
    np.testing.assert_array_equal(q_quirk, dense_crf(crf_image(img, "clip_es_crf"), scores, "clip_es_crf,no_pp"))
    # and the transform does matter on this image
    assert not np.array_equal(q_quirk, q_plain)


@needs_backend
def test_conf_thresh_marks_low_confidence_pixels_255() -> None:
    h, w = 16, 40
    img = np.full((h, w, 3), 128, np.uint8)  # no colour edge: the CRF cannot decide the ramp
    cam = _blurred_cam(h, w, centre=20, width=8.0)
    q = dense_crf(img, crf_scores(cam, (h, w), 1.0), "clip_es_crf,no_pp")
    low = q.max(0) < 0.95
    assert low.any() and (~low).any()
    seed = crf_seed(img, cam, [2], conf_thresh=0.95)
    assert (seed[low] == 255).all()
    np.testing.assert_array_equal(seed[~low], crf_seed(img, cam, [2])[~low])
    assert set(np.unique(seed[~low]).tolist()) <= {0, 3}
    # no threshold (or 0) = no ignore
    assert (crf_seed(img, cam, [2]) != 255).all()
    assert (crf_seed(img, cam, [2], conf_thresh=0.0) != 255).all()


@needs_backend
def test_label_mapping_and_edge_cases() -> None:
    img = _two_regions()
    a = _blurred_cam(24, 48, 24, 1.0)[0]
    cam = np.stack([a, 1 - a])  # class 4 on the left, class 11 on the right
    seed = crf_seed(img, cam, [4, 11])
    assert set(np.unique(seed).tolist()) == {5, 12}
    assert (seed[:, :24] == 5).all() and (seed[:, 24:] == 12).all()
    # no positive class: all background
    empty = crf_seed(img, np.zeros((0, 3, 5), np.float32), [])
    assert empty.shape == (24, 48) and (empty == 0).all()
    with pytest.raises(ValueError, match="channels"):
        crf_seed(img, cam, [4])
    with pytest.raises(ValueError, match="fg_cls"):
        crf_seed(img, cam, [4, 254])
