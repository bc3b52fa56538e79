"""A scripted stand-in for segment_anything's ``SamPredictor`` (test scaffolding for the ``amg_*`` reference
cases; adapted from the reference cases' ``fake_sam.py``).

Protocol (from the reference-case README): for a prompt at crop-frame point (px, py) in a crop with top-left
(x0, y0), the global prompt pixel is ``gx = min(floor(x0 + px), W - 1)``, ``gy = min(floor(y0 + py), H - 1)``; for
level l and ``r = labels[l, gy, gx]`` the mask logit at global pixel (y, x) is
``(+amp if labels[l, y, x] == r else -amp) + float32(noise_q[l, y, x]) * float32(noise_step)`` and the predicted IoU
is ``iou_base[l, r] + iou_jit[l, gy, gx]``, all float32; the three multimask outputs come in level order 0, 1, 2.
The image given to the generator encodes pixel coordinates (:func:`coord_image`) so the fake can tell which crop
it was handed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def coord_image(h: int, w: int) -> np.ndarray:
    """R = x mod 256, G = y mod 256, B = 16 * (y // 256) + x // 256."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x % 256, y % 256, 16 * (y // 256) + x // 256], -1).astype(np.uint8)


class _Identity:
    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        return np.asarray(coords, dtype=np.float64).copy()

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        return coords.clone().double()


class _Model:
    mask_threshold = 0.0
    image_format = "RGB"


class FakePredictor:
    """``SamPredictor``-compatible fake defined by the arrays of an ``amg_XX.npz`` case."""

    def __init__(self, z: Any, logit_amp: float = 2.0, noise_step: float = 0.05) -> None:
        self.labels = np.asarray(z["labels"]).astype(np.int64)
        self.noise = np.asarray(z["noise_q"]).astype(np.float32) * np.float32(noise_step)
        self.iou_base = np.asarray(z["iou_base"]).astype(np.float32)
        self.iou_jit = np.asarray(z["iou_jit"]).astype(np.float32)
        self.amp = np.float32(logit_amp)
        self.H, self.W = self.labels.shape[1:]
        self.transform = _Identity()
        self.model = _Model()
        self.device = torch.device("cpu")
        self.is_image_set = False
        self.crop: tuple[int, int, int, int] | None = None
        self.n_set_image = 0

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        im = np.asarray(image)
        x0 = int(im[0, 0, 0]) + 256 * (int(im[0, 0, 2]) % 16)
        y0 = int(im[0, 0, 1]) + 256 * (int(im[0, 0, 2]) // 16)
        self.crop = (x0, y0, im.shape[0], im.shape[1])
        self.is_image_set = True
        self.n_set_image += 1

    def reset_image(self) -> None:
        self.crop = None
        self.is_image_set = False

    def predict_torch(
        self,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        boxes: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        assert self.crop is not None, "set_image first"
        x0, y0, hc, wc = self.crop
        pts = point_coords.detach().cpu().double().numpy().reshape(-1, 2)
        lab = self.labels[:, y0 : y0 + hc, x0 : x0 + wc]
        noi = self.noise[:, y0 : y0 + hc, x0 : x0 + wc]
        masks = np.empty((len(pts), 3, hc, wc), np.float32)
        ious = np.empty((len(pts), 3), np.float32)
        for b, (px, py) in enumerate(pts):
            gx = min(int(np.floor(x0 + px)), self.W - 1)
            gy = min(int(np.floor(y0 + py)), self.H - 1)
            for lv in range(3):
                r = self.labels[lv, gy, gx]
                masks[b, lv] = np.where(lab[lv] == r, self.amp, -self.amp) + noi[lv]
                ious[b, lv] = self.iou_base[lv, r] + self.iou_jit[lv, gy, gx]
        m = torch.from_numpy(masks)
        if not return_logits:
            m = m > self.model.mask_threshold
        return m, torch.from_numpy(ious), None
