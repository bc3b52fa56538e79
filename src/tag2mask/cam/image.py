"""CLIP's image input: its normalisation (prompt training and CAMs), and the CAM input of one photo (SPEC §1.2;
CLIP-ES's the same, CONTEXT §2.1): each side rounded up to a multiple of the patch size with one PIL bicubic
resize, then CLIP's normalisation."""

from __future__ import annotations

import math

import numpy as np
import torch

from tag2mask.data.base import working_size

#: CLIP's per-channel RGB mean and std on [0, 1] images (SPEC §1.2, §5.3 step 5).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def clip_normalise(images: np.ndarray) -> torch.Tensor:
    """CLIP input tensor from uint8 RGB: ``H×W×3`` → float32 ``3×H×W``, ``N×H×W×3`` → ``N×3×H×W``.

    ``(v/255 − mean) / std`` with CLIP's mean / std (SPEC §5.3 step 5), the same float32 operations as
    torchvision's ``ToTensor`` + ``Normalize``.
    """
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"images must be uint8 H×W×3 or N×H×W×3, got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy()  # torch wants a writable array
    t = torch.from_numpy(arr).to(torch.float32).div(255)
    t = t.movedim(-1, -3).contiguous()
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return (t - mean) / std


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
