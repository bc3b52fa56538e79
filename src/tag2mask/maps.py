"""Per-class score maps: SPEC's min-max normalisation ``mmnorm`` and the bilinear resize, one home for both.

Every stage that normalises or resizes a CAM (CAA, SAMS, argmax and dense-CRF seeds, the training-free CLIP-ES
maps, the report's figures) calls these, so the epsilon, the clamping order and the float arithmetic are the same
everywhere. Pure torch, no IO.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MMNORM_EPS = 1e-7
"""SPEC notation: ``(v − min) / (max − min + 1e-7)``."""


def mmnorm(x: torch.Tensor, dim: int | tuple[int, ...], clamp: bool = True) -> torch.Tensor:
    """SPEC notation ``mmnorm``: clamp below at 0 (unless ``clamp=False``), then ``(v − min) / (max − min + 1e-7)``
    along ``dim`` (the min and max are taken over ``dim``; the result has ``x``'s shape and dtype)."""
    if clamp:
        x = x.clamp(min=0)
    lo = x.amin(dim=dim, keepdim=True)
    hi = x.amax(dim=dim, keepdim=True)
    return (x - lo) / (hi - lo + MMNORM_EPS)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``C×h×w`` maps to ``size`` (``align_corners=False``; SPEC notation); no-op if equal.

    The channels are resized as a batch of one-channel images (``C×1×h×w``). On the CPU torch picks its kernel
    by channel count and thread count: a ``1×3×h×w`` input with one torch thread (and an output larger than
    ``H + W > 128``) goes to the channels-last kernel, whose float32 rounding differs from the generic kernel that
    every other case uses — so ``maps[None]`` would make the result depend on ``torch.get_num_threads()``. With one
    channel per image the result is the same for any thread count and equals the generic (multi-threaded, and
    the per-element CUDA) arithmetic; it is also the faster form here. The output is contiguous, so a caller's
    ``reshape(C, H*W)`` is a view.
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if maps.shape[0] == 0:
        return maps.new_zeros((0, *size))
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def as_tensor(x: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """A torch view of ``x`` (no copy for a writeable, positively strided numpy array), moved to ``device``."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if not arr.flags.writeable or any(s < 0 for s in arr.strides):
            arr = np.array(arr, order="C", copy=True)
        t = torch.from_numpy(arr)
    return t if device is None else t.to(device)
