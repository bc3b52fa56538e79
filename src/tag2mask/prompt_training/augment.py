"""Training augmentation of the prompt learners (SPEC §5.3) and online labels (SPEC §5.2).

:func:`augment` applies, in order:

1. **Colour jitter** (:func:`random_color_jitter`): four operations, each drawn with probability 0.5 and applied
   in a random order — brightness ``+U(−25, 25)``, contrast ``×U(0.6, 1.4)``, saturation ``×U(0.5, 1.5)`` on
   the HSV S channel, hue ``+U(−25, 25)`` on the 0–255 (``HSV_FULL``) hue channel.
2. **Random range scale** (:func:`random_range_scale`): integer ``T ~ U{low..high}``,
   ``r = max(T / long_side, short_thresh / short_side)``, image resized with PIL bicubic and label with PIL
   nearest to ``round(r·H) × round(r·W)``.
3. **Random crop** (:func:`random_crop`) of ``crop_size × crop_size`` with uniform offsets.
4. **Horizontal flip** (:func:`random_flip`) with probability ``flip_p``.

Each jitter operation is one OpenCV ``convertScaleAbs`` (``dst = saturate_uint8(round(|α·src + β|))``), as in
the reference (AlchemyCat ``RandColorJitter``): brightness ``α = 1, β = δ``; contrast ``α = m, β = 0`` — a plain
multiplication of every channel value, **not** a blend with the mean grey; saturation and hue scale / shift one
channel after ``cvtColor`` and convert back. Two consequences of ``convertScaleAbs`` are reproduced on purpose:
the absolute value (a brightness shift that takes a value below 0 reflects it: ``10 − 20 → 10``) and the
saturation at 255 — also for the hue, which therefore does **not** wrap around (``250 + 20 → 255``, ``5 − 20 →
15``) although hue is an angle.

RGB versus the reference's BGR: the reference jitters BGR images with ``COLOR_BGR2HSV`` (saturation) and
``COLOR_BGR2HSV_FULL`` (hue). Here images are RGB and the same conversions are taken with ``COLOR_RGB2HSV`` /
``COLOR_RGB2HSV_FULL`` (and back with ``HSV2RGB`` / ``HSV2RGB_FULL``): OpenCV's RGB and BGR variants run the same
arithmetic with the channel index swapped, so given the same random draws the output is the reference's output
with the channels reordered, bit for bit (the saturation operation uses the 0–180 hue encoding, like the
reference; its H channel is untouched but the HSV round trip still re-quantises the pixel, as in the reference).
Brightness and contrast are per-value and the resizes per-channel, so channel order does not matter there.
What cannot be equal: the random *draws*. The reference uses numpy's legacy global generator; here every draw
comes from the caller's ``numpy.random.Generator``, in the reference's order (per jitter op: ``random() < p``,
then ``uniform`` only if applied; then a permutation of the four ops; then ``T``; then the crop offsets
``(top, left)``; then the flip). Same generator state ⇒ identical output.

Pure functions: inputs are never modified.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "augment",
    "jitter_brightness",
    "jitter_contrast",
    "jitter_hue",
    "jitter_saturation",
    "online_labels",
    "random_color_jitter",
    "random_crop",
    "random_flip",
    "random_range_scale",
    "range_scale_ratio",
]

IGNORE_INDEX = 255


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an H×W×3 uint8 RGB array, got {image.dtype} {image.shape}")
    return image


def _check_label(label: np.ndarray | None, image: np.ndarray) -> np.ndarray | None:
    if label is None:
        return None
    label = np.asarray(label)
    if label.ndim != 2 or label.shape != image.shape[:2]:
        raise ValueError(f"label must be H×W matching the image {image.shape[:2]}, got {label.shape}")
    if label.dtype != np.uint8:
        if label.dtype.kind not in "iu" or (label.size and (label.min() < 0 or label.max() > 255)):
            raise ValueError(f"label must hold integers in 0..255, got {label.dtype}")
        label = label.astype(np.uint8)
    return label


# ---------------------------------------------------------------------------------------------- colour jitter
def jitter_brightness(image: np.ndarray, delta: float) -> np.ndarray:
    """Brightness: ``saturate_uint8(round(|v + delta|))`` on every channel value (SPEC §5.3 step 1)."""
    return cv2.convertScaleAbs(_check_image(image), alpha=1.0, beta=float(delta))


def jitter_contrast(image: np.ndarray, mul: float) -> np.ndarray:
    """Contrast: ``saturate_uint8(round(|mul · v|))`` on every channel value (no blend with the mean grey)."""
    return cv2.convertScaleAbs(_check_image(image), alpha=float(mul), beta=0.0)


def jitter_saturation(image: np.ndarray, mul: float) -> np.ndarray:
    """Saturation: RGB→HSV (8-bit, H in 0..180), ``S ← saturate_uint8(round(mul · S))``, HSV→RGB."""
    hsv = cv2.cvtColor(_check_image(image), cv2.COLOR_RGB2HSV)
    hsv[:, :, 1] = cv2.convertScaleAbs(hsv[:, :, 1], alpha=float(mul), beta=0.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def jitter_hue(image: np.ndarray, delta: float) -> np.ndarray:
    """Hue: RGB→HSV_FULL (H in 0..255), ``H ← saturate_uint8(round(|H + delta|))`` (no wrap-around), back."""
    hsv = cv2.cvtColor(_check_image(image), cv2.COLOR_RGB2HSV_FULL)
    hsv[:, :, 0] = cv2.convertScaleAbs(hsv[:, :, 0], alpha=1.0, beta=float(delta))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def random_color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    max_delta_bright: float = 25.0,
    range_mul_contrast: tuple[float, float] = (0.6, 1.4),
    range_mul_saturation: tuple[float, float] = (0.5, 1.5),
    max_delta_hue: float = 25.0,
    prob: float = 0.5,
) -> np.ndarray:
    """Random colour jitter (SPEC §5.3 step 1; AlchemyCat ``RandColorJitter`` defaults).

    Draws, in this order: for brightness, contrast, saturation, hue — ``rng.random() < prob`` and, if applied,
    the op's ``rng.uniform`` value; then ``rng.permutation(4)``, the order in which the four ops (skipped ones
    are identities) are applied. Returns a new array.
    """
    image = _check_image(image)
    ranges = (
        (-max_delta_bright, max_delta_bright),
        range_mul_contrast,
        range_mul_saturation,
        (-max_delta_hue, max_delta_hue),
    )
    values: list[float | None] = []
    for low, high in ranges:
        applied = rng.random() < prob
        values.append(float(rng.uniform(low, high)) if applied else None)
    order = rng.permutation(4)
    ops = (jitter_brightness, jitter_contrast, jitter_saturation, jitter_hue)
    out = image.copy()
    for i in order:
        value = values[int(i)]
        if value is not None:
            out = ops[int(i)](out, value)
    return out


# --------------------------------------------------------------------------------------------- scale and crop
def range_scale_ratio(height: int, width: int, target: int, short_thresh: int) -> float:
    """``r = max(target / long_side, short_thresh / short_side)`` (SPEC §5.3 step 2)."""
    long_side, short_side = max(height, width), min(height, width)
    return max(target / long_side, short_thresh / short_side)


def _resize(image: np.ndarray, label: np.ndarray | None, out_h: int, out_w: int
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Image with PIL bicubic, label with PIL nearest, both to ``out_h × out_w``."""
    img = np.asarray(Image.fromarray(image).resize((out_w, out_h), resample=Image.Resampling.BICUBIC))
    if label is None:
        return img, None
    lb = np.asarray(Image.fromarray(label).resize((out_w, out_h), resample=Image.Resampling.NEAREST))
    return img, lb


def random_range_scale(
    image: np.ndarray,
    label: np.ndarray | None,
    rng: np.random.Generator,
    *,
    low: int = 288,
    high: int = 480,
    short_thresh: int = 224,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Random range scale (SPEC §5.3 step 2): ``T = rng.integers(low, high + 1)``, ratio
    :func:`range_scale_ratio`, resize to ``round(r·H) × round(r·W)`` (Python ``round``, as the reference)."""
    image = _check_image(image)
    label = _check_label(label, image)
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
    target = int(rng.integers(low, high + 1))
    h, w = image.shape[:2]
    r = range_scale_ratio(h, w, target, short_thresh)
    return _resize(image, label, round(r * h), round(r * w))


def random_crop(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, crop_size: int = 224
) -> tuple[np.ndarray, np.ndarray | None]:
    """Random ``crop_size × crop_size`` crop with uniform offsets (top drawn first, then left; SPEC §5.3 step 3).

    No padding: the image must be at least ``crop_size`` on both sides (guaranteed after
    :func:`random_range_scale` with ``short_thresh >= crop_size``).
    """
    image = _check_image(image)
    label = _check_label(label, image)
    h, w = image.shape[:2]
    if h < crop_size or w < crop_size:
        raise ValueError(f"image {h}×{w} is smaller than the crop {crop_size}×{crop_size}")
    top = int(rng.integers(0, h - crop_size + 1))
    left = int(rng.integers(0, w - crop_size + 1))
    img = image[top:top + crop_size, left:left + crop_size].copy()
    lb = None if label is None else label[top:top + crop_size, left:left + crop_size].copy()
    return img, lb


def random_flip(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, p: float = 0.5
) -> tuple[np.ndarray, np.ndarray | None]:
    """Horizontal flip of image and label together with probability ``p`` (one ``rng.random()``; SPEC §5.3
    step 4)."""
    image = _check_image(image)
    label = _check_label(label, image)
    if rng.random() < p:
        img = np.ascontiguousarray(image[:, ::-1])
        lb = None if label is None else np.ascontiguousarray(label[:, ::-1])
        return img, lb
    return image.copy(), None if label is None else label.copy()


def augment(
    image: np.ndarray,
    label: np.ndarray | None,
    rng: np.random.Generator,
    *,
    color_jitter: bool = True,
    scale_low: int = 288,
    scale_high: int = 480,
    short_thresh: int = 224,
    crop_size: int = 224,
    flip_p: float = 0.5,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The training augmentation of SPEC §5.3: colour jitter, random range scale, random crop, horizontal flip.

    Args:
        image: H×W×3 uint8 RGB image.
        label: H×W uint8 label map (0 bg, ``c+1`` class ``c``, 255 ignore) or None.
        rng: the only source of randomness (same state ⇒ same output).
        color_jitter: apply step 1 (no jitter draws are made when False).
        scale_low, scale_high: range of the long-side target ``T`` (VOC 288..480; COCO 318..530/531).
        short_thresh: minimum short side after scaling; must be ``>= crop_size``.
        crop_size: side of the square crop (224).
        flip_p: horizontal-flip probability.

    Returns:
        ``(crop_size×crop_size×3 uint8 RGB image, crop_size×crop_size uint8 label or None)``.
    """
    image = _check_image(image)
    label = _check_label(label, image)
    if short_thresh < crop_size:
        raise ValueError(f"short_thresh ({short_thresh}) must be >= crop_size ({crop_size})")
    if color_jitter:
        image = random_color_jitter(image, rng)
    image, label = random_range_scale(image, label, rng, low=scale_low, high=scale_high,
                                      short_thresh=short_thresh)
    image, label = random_crop(image, label, rng, crop_size)
    return random_flip(image, label, rng, flip_p)


# ------------------------------------------------------------------------------------ labels and normalisation
def online_labels(label_crop: np.ndarray, num_classes: int) -> np.ndarray:
    """Foreground classes present in an (augmented) label crop, as a {0, 1} uint8 multi-hot (SPEC §5.2).

    ``label_crop`` is H×W (→ ``num_classes`` vector) or N×H×W (→ N×``num_classes``); ``num_classes`` = C_fg
    (VOC 20, COCO 80). Id ``c+1`` marks class ``c``; 0 (background) and 255 (ignore) are excluded. Works for
    any dataset (SPEC §13 item 22). An id in ``num_classes+1 .. 254`` is an error.
    """
    lb = np.asarray(label_crop)
    if lb.ndim not in (2, 3):
        raise ValueError(f"label_crop must be H×W or N×H×W, got shape {lb.shape}")
    if lb.dtype.kind not in "iu":
        raise ValueError(f"label_crop must hold integers, got {lb.dtype}")
    batch = lb if lb.ndim == 3 else lb[None]
    out = np.zeros((batch.shape[0], num_classes), dtype=np.uint8)
    for n in range(batch.shape[0]):
        ids = np.unique(batch[n])
        bad = ids[(ids < 0) | ((ids > num_classes) & (ids != IGNORE_INDEX))]
        if bad.size:
            raise ValueError(f"label ids {bad.tolist()[:10]} outside 0..{num_classes} and {IGNORE_INDEX}")
        fg = ids[(ids >= 1) & (ids <= num_classes)]
        out[n, fg - 1] = 1
    return out if lb.ndim == 3 else out[0]
