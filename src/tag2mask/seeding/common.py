"""What SAMS and the argmax seeds share: CAMs and class lists as tensors, the background row, the label of each
score row, and outputs of the input's own kind (numpy in, numpy out)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from tag2mask.maps import as_tensor

ArrayLike = Union[np.ndarray, torch.Tensor]


def float_cam(cam: ArrayLike) -> torch.Tensor:
    """``cam`` as a floating tensor: floating dtypes are kept (Appendix C), anything else becomes float32."""
    t = as_tensor(cam)
    if t.ndim != 3:
        raise ValueError(f"cam must be P×h×w, got shape {tuple(t.shape)}")
    return t if t.is_floating_point() else t.to(torch.float32)


def fg_cls_tensor(fg_cls: Union[Sequence[int], ArrayLike], device: torch.device) -> torch.Tensor:
    """Positive classes (0-based) as an int64 tensor, checked so that ``c + 1`` fits a uint8 label."""
    arr = np.asarray(fg_cls.detach().cpu() if isinstance(fg_cls, torch.Tensor) else fg_cls, dtype=np.int64)
    arr = arr.reshape(-1)  # checked on the host: no device sync
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 253):
        raise ValueError(f"fg_cls must be 0-based class ids in [0, 253], got {arr.tolist()}")
    return as_tensor(arr, device)


def label_lut(fg: torch.Tensor) -> torch.Tensor:
    """Score-row index → label id: row 0 → 0 (background), row k → ``fg_cls[k−1] + 1`` (SPEC §3)."""
    return torch.cat([fg.new_zeros(1), fg + 1])


def background_row(
    fg_scores: torch.Tensor, bg_method: str, bg_power: float, bg_value: Optional[float]
) -> torch.Tensor:
    """Background score from the ``P×N`` foreground scores for ``pow`` / ``thresh`` / ``no_bg`` (SPEC §3)."""
    n = fg_scores.shape[1]
    if bg_method == "pow":
        if fg_scores.shape[0] == 0:  # no positive class: max over nothing = 0, background score 1
            return fg_scores.new_ones(n)
        return (1 - fg_scores.amax(dim=0)) ** bg_power
    if bg_method == "thresh":
        assert bg_value is not None
        return fg_scores.new_full((n,), float(bg_value))
    if bg_method == "no_bg":
        return fg_scores.new_full((n,), float("-inf"))
    raise AssertionError(bg_method)


def output_like(x: torch.Tensor, like: ArrayLike) -> ArrayLike:
    """Return ``x`` as numpy when ``like`` is numpy, else as a tensor (on the computing device)."""
    return x if isinstance(like, torch.Tensor) else x.cpu().numpy()
