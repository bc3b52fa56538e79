"""Training augmentation, online labels and CLIP normalisation (SPEC §5.2, §5.3, §13 item 22)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tag2mask.cam.image import CLIP_MEAN, CLIP_STD, clip_normalise
from tag2mask.prompt_training.augment import (
    augment,
    jitter_brightness,
    jitter_contrast,
    jitter_hue,
    jitter_saturation,
    online_labels,
    random_color_jitter,
    random_crop,
    random_flip,
    random_range_scale,
    range_scale_ratio,
)

PALETTE = np.array(
    [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 255, 255]],
    dtype=np.uint8,
)


def _const(value: tuple[int, int, int] | int, h: int = 4, w: int = 5) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[...] = value
    return img


def _block_scene(h: int, w: int, seed: int, block: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A label map of ``block``-pixel squares with ids 0..6 (and some 255), and an image painting each id."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 7, size=(-(-h // block), -(-w // block)))
    label = np.kron(coarse, np.ones((block, block), dtype=np.int64))[:h, :w].astype(np.uint8)
    image = PALETTE[label]
    label[label == 6] = 255  # white blocks are "ignore"
    return image, label


def _image(h: int = 90, w: int = 120, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------- jitter ops, by hand
def test_brightness_on_constant_image() -> None:
    np.testing.assert_array_equal(jitter_brightness(_const(100), 12.3), _const(112))
    np.testing.assert_array_equal(jitter_brightness(_const(100), -20.6), _const(79))  # 79.4
    np.testing.assert_array_equal(jitter_brightness(_const(250), 20.0), _const(255))  # saturates
    np.testing.assert_array_equal(jitter_brightness(_const(10), -20.4), _const(10))  # |10 - 20.4| (convertScaleAbs)
    np.testing.assert_array_equal(jitter_brightness(_const((10, 100, 200)), 5.2), _const((15, 105, 205)))


def test_contrast_is_a_plain_multiplication() -> None:
    # the reference's contrast is cv2.convertScaleAbs(img, alpha=m): every value times m, no blend with the mean
    np.testing.assert_array_equal(jitter_contrast(_const(100), 1.26), _const(126))
    np.testing.assert_array_equal(jitter_contrast(_const(100), 0.6), _const(60))
    np.testing.assert_array_equal(jitter_contrast(_const(200), 1.4), _const(255))  # 280 saturates
    np.testing.assert_array_equal(jitter_contrast(_const((10, 100, 150)), 1.1), _const((11, 110, 165)))


def test_saturation_on_constant_images() -> None:
    # grey has S = 0: unchanged whatever the factor
    for m in (0.5, 1.5):
        np.testing.assert_array_equal(jitter_saturation(_const(128), m), _const(128))
    # (200, 100, 50): V = 200, S = round(255·150/200) = 191, H = 20° (10 in the 0..180 encoding).
    # ×0.5 -> S = 96 (95.5, rounded half to even); back: R = V = 200, B = V(1 - S/255) = 124.7 -> 125,
    # G = V(1 - (S/255)(1 - f)) with f = 20°/60° -> 149.8 -> 150.
    np.testing.assert_array_equal(jitter_saturation(_const((200, 100, 50)), 0.5), _const((200, 150, 125)))
    # ×1.5 -> S = 255 (286.5 saturates): B = 0, G = V·f = 66.7 -> 67
    np.testing.assert_array_equal(jitter_saturation(_const((200, 100, 50)), 1.5), _const((200, 67, 0)))


def test_hue_on_constant_images() -> None:
    np.testing.assert_array_equal(jitter_hue(_const(128), 20.0), _const(128))  # grey: S = 0, hue irrelevant
    # (200, 100, 50): H_full = round(20°·256/360) = 14; +10 -> 24, which OpenCV maps back as 24/255·360° = 33.9°;
    # V = 200, S = 191: B = V(1 - S/255) = 50.2 -> 50, G = V(1 - (S/255)(1 - 33.9/60)) = 134.8 -> 135
    np.testing.assert_array_equal(jitter_hue(_const((200, 100, 50)), 10.0), _const((200, 135, 50)))


def test_hue_saturates_instead_of_wrapping() -> None:
    # (255, 0, 30): hue 352.9° -> H_full 251; +20 saturates at 255 (the reference's convertScaleAbs), which
    # OpenCV's HSV_FULL -> RGB maps to 255/255·360° = 360° = pure red; wrapping would give H 15 = 21° (255, 90, 0)
    img = _const((255, 0, 30))
    assert cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)[0, 0, 0] == 251
    np.testing.assert_array_equal(jitter_hue(img, 20.0), _const((255, 0, 0)))
    # (255, 30, 0): hue 7.06° -> H_full 5; -20 gives |5 - 20| = 15 (reflection) = 21.2°: G = 255·21.2/60 = 90,
    # where wrapping would give H 241 = 340° (a magenta-red with B > 0)
    img = _const((255, 30, 0))
    assert cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)[0, 0, 0] == 5
    np.testing.assert_array_equal(jitter_hue(img, -20.0), _const((255, 90, 0)))


def _bgr_saturation(bgr: np.ndarray, mul: float) -> np.ndarray:
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    hsv[:, :, 1] = cv2.convertScaleAbs(hsv[:, :, 1], alpha=mul, beta=0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _bgr_hue(bgr: np.ndarray, delta: float) -> np.ndarray:
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV_FULL)
    hsv[:, :, 0] = cv2.convertScaleAbs(hsv[:, :, 0], alpha=1, beta=delta)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR_FULL)


def test_rgb_jitter_equals_the_bgr_reference_ops_bit_for_bit() -> None:
    rgb = _image(37, 53, seed=3)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    for m in (0.5, 0.83, 1.37):
        np.testing.assert_array_equal(jitter_saturation(rgb, m), _bgr_saturation(bgr, m)[..., ::-1])
    for d in (-25.0, -7.4, 3.3, 25.0):
        np.testing.assert_array_equal(jitter_hue(rgb, d), _bgr_hue(bgr, d)[..., ::-1])


def test_random_color_jitter_draw_order() -> None:
    img = _image(20, 30, seed=5)
    for seed in range(12):
        out = random_color_jitter(img, np.random.default_rng(seed))
        # replay the documented draw order by hand
        rng = np.random.default_rng(seed)
        ranges = ((-25, 25), (0.6, 1.4), (0.5, 1.5), (-25, 25))
        vals = [rng.uniform(*r) if rng.random() < 0.5 else None for r in ranges]
        order = rng.permutation(4)
        ops = (jitter_brightness, jitter_contrast, jitter_saturation, jitter_hue)
        expected = img
        for i in order:
            if vals[i] is not None:
                expected = ops[i](expected, vals[i])
        np.testing.assert_array_equal(out, expected)


def test_random_color_jitter_probabilities() -> None:
    img = _image(8, 8)
    np.testing.assert_array_equal(random_color_jitter(img, np.random.default_rng(0), prob=0.0), img)
    changed = sum(
        not np.array_equal(random_color_jitter(img, np.random.default_rng(s)), img) for s in range(200)
    )
    assert 170 <= changed <= 200  # only 1/16 of the draws apply no op at all


# ----------------------------------------------------------------------------------------- scale, crop, flip
@pytest.mark.parametrize("hw", [(375, 500), (500, 375), (333, 333), (180, 600), (1000, 230), (224, 224)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_range_scale_rule(hw: tuple[int, int], seed: int) -> None:
    h, w = hw
    img = np.zeros((h, w, 3), dtype=np.uint8)
    out, lb = random_range_scale(img, np.zeros((h, w), np.uint8), np.random.default_rng(seed),
                                 low=288, high=480, short_thresh=224)
    target = int(np.random.default_rng(seed).integers(288, 481))
    assert 288 <= target <= 480
    r = range_scale_ratio(h, w, target, 224)
    assert out.shape == (round(r * h), round(r * w), 3) and lb.shape == out.shape[:2]
    assert min(out.shape[:2]) >= 224
    if target / max(h, w) >= 224 / min(h, w):
        assert max(out.shape[:2]) == target
    else:
        assert min(out.shape[:2]) == 224


def test_range_scale_ratio_by_hand() -> None:
    assert range_scale_ratio(375, 500, 400, 224) == pytest.approx(0.8)  # 400/500 > 224/375
    assert range_scale_ratio(180, 600, 300, 224) == pytest.approx(224 / 180)  # short side rules
    assert range_scale_ratio(300, 300, 288, 224) == pytest.approx(0.96)


def test_range_scale_uses_bicubic_and_nearest() -> None:
    img, lb = _block_scene(90, 120, seed=1)
    out, out_lb = random_range_scale(img, lb, np.random.default_rng(0))
    from PIL import Image

    size = (out.shape[1], out.shape[0])
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC)))
    np.testing.assert_array_equal(out_lb, np.asarray(Image.fromarray(lb).resize(size, Image.Resampling.NEAREST)))
    assert set(np.unique(out_lb)) <= set(np.unique(lb))


def test_random_crop_offsets_and_errors() -> None:
    img = _image(250, 300)
    lb = np.arange(250 * 300).reshape(250, 300) % 7
    lb = lb.astype(np.uint8)
    out, out_lb = random_crop(img, lb, np.random.default_rng(4), 224)
    rng = np.random.default_rng(4)
    top, left = int(rng.integers(0, 27)), int(rng.integers(0, 77))
    np.testing.assert_array_equal(out, img[top:top + 224, left:left + 224])
    np.testing.assert_array_equal(out_lb, lb[top:top + 224, left:left + 224])
    with pytest.raises(ValueError):
        random_crop(_image(200, 300), None, np.random.default_rng(0), 224)


def test_flip_probability_and_alignment() -> None:
    img = _image(6, 9)
    lb = np.arange(54, dtype=np.uint8).reshape(6, 9)
    flips = 0
    n = 2000
    rng = np.random.default_rng(123)
    for _ in range(n):
        out, out_lb = random_flip(img, lb, rng)
        flipped = np.array_equal(out, img[:, ::-1])
        assert flipped == np.array_equal(out_lb, lb[:, ::-1])
        assert flipped or (np.array_equal(out, img) and np.array_equal(out_lb, lb))
        flips += flipped
    assert abs(flips / n - 0.5) < 0.04
    rng = np.random.default_rng(0)
    assert all(np.array_equal(random_flip(img, None, rng, p=0.0)[0], img) for _ in range(20))
    assert all(np.array_equal(random_flip(img, None, rng, p=1.0)[0], img[:, ::-1]) for _ in range(20))


# -------------------------------------------------------------------------------------------- full pipeline
def test_augment_reproducible_and_sized() -> None:
    img, lb = _block_scene(375, 500, seed=2)
    a = augment(img, lb, np.random.default_rng(7))
    b = augment(img, lb, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (224, 224, 3) and a[0].dtype == np.uint8
    assert a[1].shape == (224, 224) and a[1].dtype == np.uint8
    c = augment(img, lb, np.random.default_rng(8))
    assert not np.array_equal(a[0], c[0])
    # no label in, no label out; image-only and image+label runs consume the same draws
    d = augment(img, None, np.random.default_rng(7))
    assert d[1] is None
    np.testing.assert_array_equal(d[0], a[0])
    # other crop sizes (COCO-like range)
    e = augment(img, lb, np.random.default_rng(1), scale_low=318, scale_high=531, short_thresh=256, crop_size=256)
    assert e[0].shape == (256, 256, 3) and e[1].shape == (256, 256)


def test_augment_does_not_modify_inputs() -> None:
    img, lb = _block_scene(120, 160, seed=3)
    img0, lb0 = img.copy(), lb.copy()
    for s in range(5):
        augment(img, lb, np.random.default_rng(s))
    np.testing.assert_array_equal(img, img0)
    np.testing.assert_array_equal(lb, lb0)


@pytest.mark.parametrize("seed", range(6))
def test_augment_keeps_image_and_label_aligned(seed: int) -> None:
    img, lb = _block_scene(300, 420, seed=seed)
    out, out_lb = augment(img, lb, np.random.default_rng(seed), color_jitter=False)
    ids = out_lb.astype(np.int64)
    ids[ids == 255] = 6
    # interior pixels (5×5 label neighbourhood uniform) must show their class's colour (bicubic only rings at edges)
    pad = np.pad(ids, 2, mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(pad, (5, 5))
    interior = (win == ids[:, :, None, None]).all(axis=(2, 3))
    assert interior.mean() > 0.5
    err = np.abs(out.astype(int) - PALETTE[ids].astype(int)).max(axis=2)
    assert err[interior].max() <= 2
    # a mis-aligned label (e.g. flipped alone) would fail the same check
    bad = ids[:, ::-1]
    assert np.abs(out.astype(int) - PALETTE[bad].astype(int)).max(axis=2)[interior].max() > 100


def test_augment_argument_checks() -> None:
    with pytest.raises(ValueError):
        augment(np.zeros((300, 300), np.uint8), None, np.random.default_rng(0))
    with pytest.raises(ValueError):
        augment(np.zeros((300, 300, 3), np.float32), None, np.random.default_rng(0))
    with pytest.raises(ValueError):
        augment(np.zeros((300, 300, 3), np.uint8), np.zeros((300, 299), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError):
        augment(np.zeros((300, 300, 3), np.uint8), None, np.random.default_rng(0), short_thresh=200)


# ---------------------------------------------------------------------------------- online labels, normalise
def test_online_labels() -> None:
    crop = np.array([[0, 1, 1], [255, 3, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(online_labels(crop, 4), [1, 0, 1, 0])
    batch = np.stack([crop, np.zeros_like(crop), np.full_like(crop, 4)])
    out = online_labels(batch, 4)
    assert out.shape == (3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(online_labels(np.full((2, 2), 80, np.int64), 80)[79], 1)  # COCO-sized
    with pytest.raises(ValueError):
        online_labels(np.array([[21]], np.uint8), 20)


def test_clip_normalise() -> None:
    img = _image(5, 7)
    t = clip_normalise(img)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    expected = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(t, expected, rtol=0, atol=0)
    batch = clip_normalise(np.stack([img, img[::-1]]))
    assert batch.shape == (2, 3, 5, 7)
    torch.testing.assert_close(batch[0], t, rtol=0, atol=0)
    white = clip_normalise(np.full((1, 1, 3), 255, np.uint8))[:, 0, 0]
    torch.testing.assert_close(white, torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]))
    with pytest.raises(ValueError):
        clip_normalise(np.zeros((4, 4, 3), np.float32))


def test_clip_normalise_matches_torchvision() -> None:
    tv = pytest.importorskip("torchvision.transforms")
    img = _image(6, 4, seed=9)
    ref = tv.Normalize(CLIP_MEAN, CLIP_STD)(tv.ToTensor()(img))
    torch.testing.assert_close(clip_normalise(img), ref, rtol=0, atol=0)
