"""Class-aware attention affinity (CAA): refine patch-grid CAMs with CLIP attention (SPEC §6).

The steps, all at the patch grid ``h×w`` (``L = h*w``):

1. ``score = mmnorm(max(cam, 0))`` per class (SPEC §6.1, notation "min-max normalisation").
2. Affinity from attention (SPEC §6.2): Sinkhorn (column sums first, then row sums), then ``(A + Aᵀ)/2``.
3. Affinity power (SPEC §6.3).
4. Class-aware box mask per class (SPEC §6.4, §13 item 13, Appendix C).
5. Propagation ``x_c ← (Aff^k ⊙ 1·B_cᵀ) · vec(x_c)`` with ``x`` the score or the raw CAM (SPEC §6.5, §13 item 14);
   no renormalisation afterwards (SPEC §6.6).

Masking the *columns* of ``Aff^k`` with ``B_c`` equals multiplying the vector first:
``(Aff^k ⊙ 1·B_cᵀ)·x_c = Aff^k·(B_c ⊙ x_c) = Aff·(Aff·(… (B_c ⊙ x_c)))``, so the ``L×L`` matrix power and the
``P×L×L`` masked stack of the reference are never formed: all classes go through ``power`` products of one
``P×L`` matrix (a row per class) with the affinity. The symmetric ``Aff`` is not formed either (a strided ``L×L``
transpose-add is the slowest step there is at this size): ``v·Aff = (v·Â + v·Âᵀ)/2`` with the Sinkhorn-normalised
``Â``, which is the only ``L×L`` matrix written (one out-of-place division, then in place).

Everything runs in torch, in the CAM's floating dtype (float32 in the pipeline, as the reference does after casting
the fp16 attention to float32: Appendix C). The box threshold is taken on ``uint8(floor(score·255))`` computed in
that dtype (Appendix C). Pure functions: no file IO, inputs are never modified.
"""

from __future__ import annotations

from typing import Literal, TypeVar, Union

import cv2
import numpy as np
import torch

from tag2mask.maps import mmnorm

__all__ = [
    "BoxMode",
    "Propagate",
    "apply_affinity",
    "box_masks",
    "caa_refine",
    "cam_to_score",
    "class_boxes",
    "merge_attention",
    "minmax_norm",
    "propagate_affinity",
    "sinkhorn_affinity",
    "sinkhorn_normalise",
]

BoxMode = Literal["reference", "inclusive"]
Propagate = Literal["score", "cam"]
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
ArrayLike = Union[np.ndarray, torch.Tensor]



def _as_tensor(x: ArrayLike) -> torch.Tensor:
    """A torch view of ``x`` (no copy for a writeable numpy array; read-only arrays are copied for torch)."""
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def _compute_dtype(cam: torch.Tensor) -> torch.dtype:
    """The CAM's dtype when it is float32/float64, else float32 (half precision and integers are promoted)."""
    return cam.dtype if cam.dtype in (torch.float32, torch.float64) else torch.float32


def merge_attention(att: torch.Tensor, last_n_layers: int = 8) -> torch.Tensor:
    """Merge per-layer attention ``D×(L+1)×(L+1)`` (CLS token first) into patch-to-patch ``L×L`` (SPEC §5.6).

    Takes the last ``last_n_layers`` layers, drops the CLS row and column, and averages over the layers.
    A batch ``D×N×(L+1)×(L+1)`` gives ``N×L×L``.
    """
    if att.ndim not in (3, 4) or att.shape[-1] != att.shape[-2]:
        raise ValueError(f"per-layer attention must be D×(L+1)×(L+1) or D×N×(L+1)×(L+1), got {tuple(att.shape)}")
    if last_n_layers < 1:
        raise ValueError(f"last_n_layers must be >= 1, got {last_n_layers}")
    return att[-last_n_layers:, ..., 1:, 1:].mean(dim=0)


def minmax_norm(v: torch.Tensor) -> torch.Tensor:
    """``(v − min) / (max − min + 1e-7)`` per class over space of a ``P×h×w`` map, no clamping (:func:`mmnorm`)."""
    return mmnorm(v, dim=(1, 2), clamp=False)


def cam_to_score(cam: torch.Tensor) -> torch.Tensor:
    """``score = (v − min) / (max − min + 1e-7)`` of ``v = max(cam, 0)`` per class over space (SPEC §6.1).

    ``cam`` is ``P×h×w``; the result has the same shape and dtype.
    """
    return mmnorm(cam, dim=(1, 2))


def sinkhorn_normalise(att: torch.Tensor, n_iters: int = 1) -> torch.Tensor:
    """Sinkhorn-normalised attention ``Â`` before symmetrisation (SPEC §6.2a–b, Appendix C).

    Each of the ``n_iters`` iterations divides every column by its sum, then every row by its sum. ``att`` is not
    modified: the first division writes a new matrix and every later one works in place (with ``n_iters = 0``
    ``att`` itself is returned).
    """
    if att.ndim != 2 or att.shape[0] != att.shape[1]:
        raise ValueError(f"merged attention must be L×L, got shape {tuple(att.shape)}")
    if n_iters < 0:
        raise ValueError(f"sinkhorn_iters must be >= 0, got {n_iters}")
    if n_iters == 0:
        return att
    a = att / att.sum(dim=0, keepdim=True)  # columns first (new matrix) ...
    a.div_(a.sum(dim=1, keepdim=True))  # ... then rows, in place
    for _ in range(n_iters - 1):
        a.div_(a.sum(dim=0, keepdim=True))
        a.div_(a.sum(dim=1, keepdim=True))
    return a


def sinkhorn_affinity(att: torch.Tensor, n_iters: int = 1) -> torch.Tensor:
    """The explicit affinity ``Aff = (Â + Âᵀ)/2`` of ``Â = sinkhorn_normalise(att)`` (SPEC §6.2).

    For inspection and tests: :func:`caa_refine` never forms it, it applies ``Aff`` to vectors with
    :func:`apply_affinity`, which avoids the costly ``L×L`` transpose-add.
    """
    a = sinkhorn_normalise(att, n_iters)
    return (a + a.T) / 2


def apply_affinity(a_hat: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v · Aff`` with ``Aff = (Â + Âᵀ)/2``, computed as ``(v·Â + v·Âᵀ)/2`` (``a_hat`` ``L×L``, ``v`` ``P×L``).

    ``Aff`` is symmetric, so this is also ``(Aff · vᵀ)ᵀ``. The row form is the fast one: a ``P×L`` by ``L×L``
    product runs several times faster than ``L×L`` by ``L×P`` for a handful of classes (measured 0.17 vs 0.83 ms
    at L = 768, P = 3, one thread), and ``Âᵀ`` is only a view.
    """
    return (v @ a_hat + v @ a_hat.T) / 2


def class_boxes(score_c: np.ndarray, thresh: float, mode: BoxMode = "reference") -> list[tuple[int, int, int, int]]:
    """Boxes ``(x0, y0, x1, y1)`` of one class's score map, used as half-open slices ``[y0:y1, x0:x1]`` (SPEC §6.4).

    ``score_c`` is an ``H×W`` float map in ``[0, 1]``. It is quantised to ``uint8`` by truncation of
    ``score_c * 255`` in its own dtype (Appendix C), binarised like OpenCV ``THRESH_BINARY`` at
    ``int(thresh · max)`` with ``max`` the largest quantised value (strictly greater passes), and every contour
    found with ``RETR_TREE`` (outer and hole contours) gives its bounding rectangle ``(x, y, w, h)``:

    * ``"reference"``: ``(x, y, min(x+w, W−1), min(y+h, H−1))`` — the reference quirk: a box touching the
      right/bottom border loses its last column/row (SPEC §13 item 13). No contour gives ``[(0, 0, 0, 0)]``.
    * ``"inclusive"``: ``(x, y, x+w, y+h)``, i.e. the rectangle's pixels exactly. No contour gives ``[]``.
    """
    if score_c.ndim != 2:
        raise ValueError(f"score map must be H×W, got shape {score_c.shape}")
    height, width = score_c.shape
    quant = (score_c * 255).astype(np.uint8)  # truncation == floor for scores >= 0
    level = int(thresh * int(quant.max()))
    binary = np.where(quant > level, 255, 0).astype(np.uint8)  # cv2.THRESH_BINARY semantics
    contours, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) == 0:
        return [(0, 0, 0, 0)] if mode == "reference" else []
    boxes: list[tuple[int, int, int, int]] = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        if mode == "reference":
            boxes.append((x, y, min(x + w, width - 1), min(y + h, height - 1)))
        else:
            boxes.append((x, y, x + w, y + h))
    return boxes


def box_masks(score: ArrayLike, thresh: float, mode: BoxMode = "reference") -> np.ndarray:
    """Union-of-boxes masks ``B`` (``P×h×w`` bool) of all classes (SPEC §6.4, §13 item 13).

    In ``"reference"`` mode a class without any box (or only degenerate boxes) gets an empty mask, so its
    propagated map is all zeros. In ``"inclusive"`` mode a class without any box falls back to no masking (all
    ones).
    """
    if mode not in ("reference", "inclusive"):
        raise ValueError(f"boxes must be 'reference' or 'inclusive', got {mode!r}")
    s = score.detach().cpu().numpy() if isinstance(score, torch.Tensor) else np.asarray(score)
    if s.ndim != 3:
        raise ValueError(f"score must be P×h×w, got shape {s.shape}")
    masks = np.zeros(s.shape, dtype=bool)
    for c in range(s.shape[0]):
        boxes = class_boxes(s[c], thresh, mode)
        for x0, y0, x1, y1 in boxes:
            masks[c, y0:y1, x0:x1] = True
        if mode == "inclusive" and not masks[c].any():
            masks[c] = True
    return masks


def propagate_affinity(a_hat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, power: int) -> torch.Tensor:
    """``out_c = (Aff^power ⊙ 1·B_cᵀ) · x_c`` for all classes at once (SPEC §6.3–6.5).

    ``a_hat`` is the ``L×L`` Sinkhorn-normalised attention (``Aff = (Â + Âᵀ)/2``), ``x`` and ``mask`` are ``P×L``.
    Masking the columns of ``Aff^power`` equals masking the vector, so this is ``power`` applications of ``Aff`` to
    the rows of ``B ⊙ x`` (:func:`apply_affinity`): the same value as the explicit matrix power with masked
    columns, in ``O(power·L²·P)`` instead of ``O(L³)``.
    """
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    v = x * mask  # P×L: one row per class
    for _ in range(power):
        v = apply_affinity(a_hat, v)
    return v


def caa_refine(
    cam: ArrayT,
    att: ArrayLike,
    sinkhorn_iters: int = 1,
    power: int = 2,
    box_thresh: float = 0.4,
    propagate: Propagate = "score",
    boxes: BoxMode = "reference",
    att_layers: int = 8,
) -> ArrayT:
    """Class-aware attention affinity refinement of one image's CAMs (SPEC §6; quirks §13 items 13–14).

    Args:
        cam: ``P×h×w`` raw CAM (may be negative), numpy array or torch tensor.
        att: ``L×L`` merged patch-to-patch attention (``L = h*w``, rows are queries: the mean of the last 8
            layers, SPEC §5.6), or ``D×(L+1)×(L+1)`` per-layer head-averaged attention including the CLS token,
            which is merged here with the last ``att_layers`` layers.
        sinkhorn_iters: Sinkhorn iterations (column then row normalisation) before symmetrising.
        power: affinity power ``Aff^power``.
        box_thresh: box threshold on the uint8-quantised score, relative to its maximum.
        propagate: ``"score"`` propagates the normalised score, ``"cam"`` the raw CAM including negatives.
        boxes: ``"reference"`` reproduces the reference boxes (clipped to ``W−1``/``H−1`` and used half-open;
            no contour → empty mask → zero output); ``"inclusive"`` keeps the boxes' last row/column and falls
            back to no masking for a class without boxes (SPEC §13 item 13).
        att_layers: layers averaged when ``att`` is per-layer.

    Returns:
        ``P×h×w`` refined CAM, not renormalised (SPEC §6.6), of the same kind as ``cam`` (numpy or torch, on
        ``cam``'s device), in ``cam``'s float dtype (float32 for half precision or integer input).
    """
    if propagate not in ("score", "cam"):
        raise ValueError(f"propagate must be 'score' or 'cam', got {propagate!r}")
    if boxes not in ("reference", "inclusive"):
        raise ValueError(f"boxes must be 'reference' or 'inclusive', got {boxes!r}")
    cam_t = _as_tensor(cam)
    if cam_t.ndim != 3:
        raise ValueError(f"cam must be P×h×w, got shape {tuple(cam_t.shape)}")
    n_cls, h, w = cam_t.shape
    n_pix = h * w
    dtype = _compute_dtype(cam_t)

    with torch.no_grad():
        cam_t = cam_t.detach().to(dtype=dtype)
        att_t = _as_tensor(att).detach().to(device=cam_t.device, dtype=dtype)
        if att_t.ndim == 3:
            if att_t.shape[1:] != (n_pix + 1, n_pix + 1):
                raise ValueError(f"per-layer attention must be D×{n_pix + 1}×{n_pix + 1}, got {tuple(att_t.shape)}")
            att_t = merge_attention(att_t, att_layers)
        elif att_t.shape != (n_pix, n_pix):
            raise ValueError(f"attention must be {n_pix}×{n_pix} or D×{n_pix + 1}×{n_pix + 1}, got {tuple(att_t.shape)}")

        score = cam_to_score(cam_t)
        mask = torch.from_numpy(box_masks(score, box_thresh, boxes)).to(device=cam_t.device, dtype=dtype)
        a_hat = sinkhorn_normalise(att_t, sinkhorn_iters)
        x = score if propagate == "score" else cam_t
        out = propagate_affinity(a_hat, x.reshape(n_cls, n_pix), mask.reshape(n_cls, n_pix), power)
        out = out.reshape(n_cls, h, w)

    if isinstance(cam, torch.Tensor):
        return out.contiguous()
    return out.cpu().numpy()
