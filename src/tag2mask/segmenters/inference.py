"""Stage-II inference: per-pixel class probabilities of one image at its own size (SPEC §11.1 "best,ss").

Whole-image inference as MMSegmentation's ``mode='whole'``: the image is resized with its aspect ratio kept so
that it fits ``base_size × scale`` (short side 512, long side at most 2048 by default; ``(0, 0)`` keeps the
image size), padded at the bottom/right to a multiple of 32 (zeros after normalisation), run through the
network, cropped back; its class *scores* (logits, or Mask2Former's semantic scores) are resized bilinearly to the
original size and only then turned into probabilities, as MMSegmentation resizes its ``seg_logits`` before the
argmax. Optional test-time augmentation averages the probabilities of several scales and of the flipped image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tag2mask.segmenters.augment import normalise_image, rescale_size
from tag2mask.segmenters.base import Segmenter

SIZE_DIVISOR = 32


def autocast(device: str, enabled: bool) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA when ``enabled``; a no-op elsewhere."""
    if enabled and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def pad_to_multiple(x: torch.Tensor, divisor: int = SIZE_DIVISOR) -> torch.Tensor:
    """Zero-pad ``B×C×H×W`` at the bottom/right so that H and W are multiples of ``divisor``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % divisor, 0, (-h) % divisor))


@torch.no_grad()
def predict_probabilities(
    model: Segmenter,
    image: np.ndarray,
    *,
    base_size: Sequence[int] = (2048, 512),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: str = "cpu",
    amp: bool = False,
) -> np.ndarray:
    """``K×H×W`` float32 class probabilities (background first) of an ``H×W×3`` uint8 RGB image.

    The average over ``scales`` × (plain, flipped if ``flip``) of the probabilities of the network's scores resized
    bilinearly (``align_corners=False``) to ``H×W``.
    """
    import cv2

    h, w = image.shape[:2]
    total = torch.zeros((model.num_classes, h, w), dtype=torch.float32, device=device)
    count = 0
    for scale in scales:
        nh, nw = rescale_size(h, w, base_size, float(scale))
        resized = image if (nh, nw) == (h, w) else cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(normalise_image(resized))[None].to(device)
        views = [x, x.flip(-1)] if flip else [x]
        for k, view in enumerate(views):
            with autocast(device, amp):
                scores = model.scores(pad_to_multiple(view))[:, :, :nh, :nw].float()
            if k == 1:
                scores = scores.flip(-1)
            scores = F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=False)
            total += model.to_probabilities(scores)[0]
            count += 1
    return (total / count).cpu().numpy()
