"""The MMSegmentation training pipeline for stage II, as pure functions on numpy arrays (SPEC §11.1, App. G).

In order (:func:`train_sample`): random rescale (:func:`rescale_size`: the image is fitted into
``base_size × r`` with ``r ~ U(scale_range)``, keeping its aspect ratio), random crop (:func:`random_crop`: up to
10 windows checked for one where no single class covers ``cat_max_ratio`` or more of the labelled pixels),
horizontal flip with probability 0.5, photometric distortion (:func:`photometric_distortion`), ImageNet
normalisation, and padding to the crop size (image 0 after normalisation, label 255 = ignore), which is what
MMSeg's data pre-processor does. Every random draw comes from the ``numpy.random.Generator`` passed in, so a sample
is a pure function of its generator's seed.
"""

from __future__ import annotations

import cv2
import numpy as np

from tag2mask.segmenters.base import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD


def rescale_size(height: int, width: int, base_size: tuple[int, int] | list[int], ratio: float) -> tuple[int, int]:
    """``(new_h, new_w)`` of MMSeg's keep-ratio resize to ``(long, short) = base_size × ratio``.

    The scale factor is ``min(long·r / max(h, w), short·r / min(h, w))``, sizes rounded to nearest. A base of
    ``(0, 0)`` means the image's own size: the factor is ``ratio`` itself.
    """
    long_side, short_side = int(base_size[0]), int(base_size[1])
    if long_side <= 0 or short_side <= 0:
        factor = ratio
    else:
        factor = min(long_side * ratio / max(height, width), short_side * ratio / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize an ``H×W×3`` uint8 image (bilinear) and its ``H×W`` label map (nearest) to ``size = (h, w)``."""
    h, w = size
    if (h, w) == image.shape[:2]:
        return image, label
    return (cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST))


def random_crop(
    image: np.ndarray, label: np.ndarray, crop_size: int, cat_max_ratio: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A ``crop_size`` window (smaller where the image is smaller), MMSeg's ``RandomCrop``.

    With ``cat_max_ratio < 1`` up to 10 windows are checked and the first one where at least two classes appear and
    the largest covers less than ``cat_max_ratio`` of the labelled pixels is kept; when all 10 fail, an 11th window
    is drawn and kept unchecked (MMSeg's loop).
    """
    h, w = label.shape

    def window() -> tuple[int, int, int, int]:
        y0 = int(rng.integers(0, max(h - crop_size, 0) + 1))
        x0 = int(rng.integers(0, max(w - crop_size, 0) + 1))
        return y0, min(y0 + crop_size, h), x0, min(x0 + crop_size, w)

    y0, y1, x0, x1 = window()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            ids, counts = np.unique(label[y0:y1, x0:x1], return_counts=True)
            counts = counts[ids != IGNORE_INDEX]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y0, y1, x0, x1 = window()
    return image[y0:y1, x0:x1], label[y0:y1, x0:x1]


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MMSeg's ``PhotoMetricDistortion`` on an RGB uint8 image; each step applies with probability 0.5.

    Brightness ``+U(−32, 32)``; contrast ``×U(0.5, 1.5)`` either first or last (a coin decides); in HSV,
    saturation ``×U(0.5, 1.5)`` and hue ``+U(−18, 18)`` (OpenCV's 0..180 hue scale, wrapped). Values are clipped
    to 0..255 after every step.
    """
    img = image.astype(np.float32)

    def clip(x: np.ndarray) -> np.ndarray:
        return np.clip(x, 0, 255)

    if rng.integers(2):
        img = clip(img + rng.uniform(-32, 32))
    contrast_last = bool(rng.integers(2))
    if not contrast_last and rng.integers(2):
        img = clip(img * rng.uniform(0.5, 1.5))
    if rng.integers(2):  # saturation, in HSV
        hsv = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 1] = clip(hsv[..., 1] * rng.uniform(0.5, 1.5))
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if rng.integers(2):  # hue, in HSV
        hsv = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.int32)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-18, 19))) % 180
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if contrast_last and rng.integers(2):
        img = clip(img * rng.uniform(0.5, 1.5))
    return img.astype(np.uint8)


def normalise_image(image: np.ndarray) -> np.ndarray:
    """``H×W×3`` uint8 RGB → ``3×H×W`` float32 ImageNet-normalised."""
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return ((image.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy()


def pad_pair(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad a ``3×h×w`` normalised image (with 0) and its label (with 255) at the bottom/right to ``size × size``."""
    _, h, w = image.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        image = np.pad(image, ((0, 0), (0, ph), (0, pw)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    return image, label


def train_sample(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_size: int = 512,
    base_size: tuple[int, int] | list[int] = (2048, 512),
    scale_range: tuple[float, float] | list[float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip: bool = True,
    photometric: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: ``(3×crop×crop float32 normalised image, crop×crop int64 label)``; see the module doc."""
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
    ratio = float(rng.uniform(scale_range[0], scale_range[1]))
    image, label = resize_pair(image, label, rescale_size(*label.shape, base_size, ratio))
    image, label = random_crop(image, label, crop_size, cat_max_ratio, rng)
    if flip and rng.integers(2):
        image, label = image[:, ::-1], label[:, ::-1]
    if photometric:
        image = photometric_distortion(np.ascontiguousarray(image), rng)
    x, y = pad_pair(normalise_image(image), np.ascontiguousarray(label), crop_size)
    return x, y.astype(np.int64)
