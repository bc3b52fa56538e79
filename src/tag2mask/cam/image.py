"""The CAM input of one photo (SPEC §1.2; CLIP-ES's the same, CONTEXT §2.1): each side rounded up to a multiple of
the patch size with one PIL bicubic resize, then CLIP's normalisation."""

from __future__ import annotations

import math

import numpy as np
import torch

from tag2mask.data.augment import clip_normalise
from tag2mask.data.base import working_size


def aligned_size(height: int, width: int, align: int) -> tuple[int, int]:
    """Each side rounded up to a multiple of ``align`` (SPEC §1.2: 500×375 → 512×384)."""
    return math.ceil(height / align) * align, math.ceil(width / align) * align


def prepare_image(image: np.ndarray, align: int = 16, max_side: int = 0) -> torch.Tensor:
    """H×W×3 uint8 RGB → 1×3×H'×W' float32 tensor: one bicubic resize to the aligned size (of the working size,
    :func:`~tag2mask.data.base.working_size`, for an image larger than ``max_side``; 0 = never), CLIP
    normalisation. PIL's bicubic is what CLIP-ES and the reference use (cv2's and torch's differ)."""
    from PIL import Image

    ah, aw = aligned_size(*working_size(*image.shape[:2], max_side), align)
    if (ah, aw) != image.shape[:2]:
        image = np.asarray(Image.fromarray(image).resize((aw, ah), Image.BICUBIC))
    return clip_normalise(np.asarray(image, dtype=np.uint8))[None]
