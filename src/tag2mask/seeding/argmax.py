"""Plain argmax seeds (SPEC §3 "Downstream conversion", §9): resize, clamp, min-max, background power, argmax."""

from __future__ import annotations

from typing import Sequence, Union

import torch

from tag2mask.maps import mmnorm, resize_maps
from tag2mask.seeding.common import ArrayLike, background_row, fg_cls_tensor, float_cam, label_lut, output_like


def argmax_seed(
    cam: ArrayLike,
    fg_cls: Union[Sequence[int], ArrayLike],
    size: tuple[int, int],
    bg_power: float = 1.0,
    normalise: bool = True,
) -> ArrayLike:
    """Plain CAM → seed (SPEC §3 "Downstream conversion", §9): ``H×W`` uint8, 0 bg, ``c+1`` class ``c``.

    Resize to ``size = (H, W)`` first (bilinear, ``align_corners=False``), then clamp at 0 and min-max per class
    over ``H×W`` (+1e-7), ``bg = (1 − max_c score_c)^bg_power``, argmax over ``[bg, classes]`` (first maximum
    wins), row 0 → 0 and row ``k`` → ``fg_cls[k−1] + 1``. numpy or torch in; the output type follows ``cam``.
    ``normalise=False`` takes the maps as scores as they are, in their own dtype: CLIP-ES's seeds from its
    float16 ``attn_highres`` maps (CONTEXT §2.5, :mod:`tag2mask.cam.clip_es`).
    """
    x = float_cam(cam)
    fg = fg_cls_tensor(fg_cls, x.device)
    if x.shape[0] != fg.numel():
        raise ValueError(f"cam has {x.shape[0]} channels for {fg.numel()} positive classes")
    h, w = int(size[0]), int(size[1])
    score = resize_maps(x, (h, w)).reshape(x.shape[0], h * w)
    if normalise:
        score = mmnorm(score, dim=1)
    stack = torch.cat([background_row(score, "pow", bg_power, None)[None], score], dim=0)
    seed = label_lut(fg)[torch.argmax(stack, dim=0)].to(torch.uint8).reshape(h, w)
    return output_like(seed, cam)
