"""Training losses of the prompt learners (SPEC §4).

* :func:`multilabel_contrastive_loss` — MCL, the classification-task loss (SPEC §4.1), in a numerically stable
  log-sum-exp form (SPEC §13 item 23).
* :func:`cam_activation_loss` — CAL, the segmentation-task loss on the raw Softmax-GradCAMs (SPEC §4.2).
* Ablations of App. Table S5 (SPEC §4.4): :func:`bce_loss` (``MultiLabelSoftMarginLoss``), :class:`ScaledBCE`
  (``s·S + b`` with fixed or learnable ``s, b``), :func:`sigmoid_pixel_ce_loss` and :class:`ScaledSigmoidPixelCE`
  (pixel-wise cross-entropy on ``sigmoid(scale·CAM + bias)``, App. E; no reference implementation exists).

Conventions shared by every function:

* ``logits`` are the raw scale-100 foreground logits ``S`` (N×C_fg, background prompts excluded);
  ``labels`` / ``fg_labels`` are N×C_fg {0, 1} (any dtype; non-zero = positive).
* ``pos_cam`` is P×h×w, one raw CAM per positive pair, in the order of ``torch.nonzero(fg_labels)`` (row-major:
  image by image, classes ascending within an image); ``label_map`` is N×H×W integer (0 background, ``c+1`` class
  ``c``, 255 ignore).
* When there is nothing to average over, a loss returns ``x.sum() * 0``: a zero that keeps the autograd graph,
  so ``backward()`` works (Appendix C, "Losses").
* The computation keeps the input's floating dtype (fp16 / fp32 / fp64); no ``exp`` of a raw logit is taken.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IGNORE_INDEX",
    "ScaledBCE",
    "ScaledSigmoidPixelCE",
    "bce_loss",
    "cam_activation_loss",
    "multilabel_contrastive_loss",
    "scaled_bce_loss",
    "sigmoid_pixel_ce_loss",
]

#: Label-map value that is neither foreground nor background (SPEC §4.2).
IGNORE_INDEX = 255

_MCL_REDUCTIONS = ("pos_mean", "sample_mean")
_CAL_TYPES = ("l1", "l2")
_CAL_REDUCTIONS = ("all", "fg-bg", "fg-bg-per-pos")


def _graph_zero(x: torch.Tensor) -> torch.Tensor:
    """A scalar zero of ``x``'s dtype that still depends on ``x`` (so ``backward()`` works)."""
    return x.sum() * 0


def _check_logits_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be N×C, got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} != logits shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")


# --------------------------------------------------------------------------------------------------------- MCL
def multilabel_contrastive_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    reduction: str = "pos_mean",
    gamma: float | None = None,
) -> torch.Tensor:
    """Multi-label contrastive loss, MCL (SPEC §4.1).

    For every positive pair ``(n, c)`` of a *valid* image (one with at least one positive and one negative
    class)::

        ℓ_{n,c} = −log( e^{S_nc} / (e^{S_nc} + Σ_{j: Y_nj = 0} e^{S_nj}) )
                = softplus( LSE_{j: Y_nj = 0}(S_nj) − S_nc )

    i.e. each positive competes only against its own image's negatives. The right-hand form (computed as
    ``logaddexp(0, ·)``) never exponentiates a raw logit, so scale-100 logits (≈ 30, or 1e4) in fp16 stay finite
    (SPEC §13 item 23); the reference's ``exp(S)`` form gives the same value.

    Args:
        logits: N×C_fg raw foreground logits ``S``.
        labels: N×C_fg {0, 1} labels ``Y`` (non-zero = positive).
        reduction: ``"pos_mean"`` — mean of ``ℓ`` over all positive pairs of valid images (the final configs);
            ``"sample_mean"`` — mean within each valid image, then over valid images.
        gamma: if not None, the logits are first multiplied by ``gamma`` (the reference's similarity scale
            factor, ``S ← γ·S``); ``None`` (the final configs) means no extra scaling.

    Returns:
        The scalar loss; ``logits.sum() * 0`` when no image is valid.
    """
    _check_logits_labels(logits, labels)
    if reduction not in _MCL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {_MCL_REDUCTIONS}, got {reduction!r}")
    pos = labels != 0
    neg = ~pos
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not bool(valid.any()):
        return _graph_zero(logits)

    s = logits if gamma is None else logits * gamma
    # Only valid rows from here on: they all hold >= 1 negative, so the masked LSE is finite (a row of -inf
    # would give a NaN gradient even if it were dropped afterwards).
    s, pos, neg = s[valid], pos[valid], neg[valid]
    lse_neg = torch.logsumexp(s.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)  # V×1
    pair_loss = torch.logaddexp(torch.zeros_like(s), lse_neg - s)  # V×C; meaningful at positives only
    pair_loss = torch.where(pos, pair_loss, torch.zeros_like(pair_loss))

    if reduction == "pos_mean":
        return pair_loss.sum() / pos.sum()
    per_image = pair_loss.sum(dim=1) / pos.sum(dim=1)
    return per_image.mean()


# --------------------------------------------------------------------------------------------------------- CAL
def _upsample_to(pos_cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (``align_corners=False``) resize of P×h×w CAMs to ``size``; a no-op when already that size."""
    if tuple(pos_cam.shape[1:]) == tuple(size):
        return pos_cam
    return F.interpolate(pos_cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _pair_masks(
    pos_cam: torch.Tensor, fg_labels: torch.Tensor, label_map: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upsampled CAMs and the per-pair foreground / background masks ``F_k``, ``B_k`` (SPEC §4.2 steps 1–2).

    Returns ``(cam P×H×W, fg P×H×W bool, bg P×H×W bool)``; ``F_k`` = pixels of class ``c+1`` of image ``n``,
    ``B_k`` = pixels of image ``n`` that are neither ``c+1`` nor 255 (other classes count as background).
    """
    if pos_cam.dim() != 3:
        raise ValueError(f"pos_cam must be P×h×w, got shape {tuple(pos_cam.shape)}")
    if not pos_cam.is_floating_point():
        raise ValueError(f"pos_cam must be floating point, got {pos_cam.dtype}")
    if fg_labels.dim() != 2:
        raise ValueError(f"fg_labels must be N×C_fg, got shape {tuple(fg_labels.shape)}")
    if label_map.dim() != 3 or label_map.shape[0] != fg_labels.shape[0]:
        raise ValueError(
            f"label_map must be N×H×W with N = {fg_labels.shape[0]}, got shape {tuple(label_map.shape)}"
        )
    if label_map.is_floating_point():
        raise ValueError(f"label_map must hold integers, got {label_map.dtype}")
    img_idx, cls_idx = torch.nonzero(fg_labels, as_tuple=True)
    if img_idx.numel() != pos_cam.shape[0]:
        raise ValueError(f"pos_cam has {pos_cam.shape[0]} CAMs but fg_labels has {img_idx.numel()} positives")
    cam = _upsample_to(pos_cam, (int(label_map.shape[1]), int(label_map.shape[2])))
    pair_lb = label_map.to(pos_cam.device).long()[img_idx.to(pos_cam.device)]  # P×H×W
    target = (cls_idx.to(pos_cam.device) + 1)[:, None, None]
    fg = pair_lb == target
    bg = (~fg) & (pair_lb != IGNORE_INDEX)
    return cam, fg, bg


def cam_activation_loss(
    pos_cam: torch.Tensor,
    fg_labels: torch.Tensor,
    label_map: torch.Tensor,
    loss_type: str = "l1",
    reduction: str = "all",
    detach_max: bool = True,
    bg_thresh: float = 0.0,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CAM activation loss, CAL (SPEC §4.2); returns ``(fg_loss, bg_loss)`` (weights 1, 1 in the final configs).

    For every positive pair ``k = (n, c)`` (CAM upsampled bilinearly to the label size):

    * ``m_k = max(0, max_{x∈F_k} CAM_k(x))`` (0 when ``F_k`` is empty), detached if ``detach_max``;
    * fg deviation ``d = m_k − CAM_k(x)`` on ``F_k``; bg deviation ``d = max(CAM_k(x) − bg_thresh, 0)`` on
      ``B_k`` (the reference's ``max(CAM, t) − t``; ``bg_thresh = 0`` is SPEC's ``max(CAM, 0) − 0``);
    * ``l1``: ``|d|``; ``l2``: ``0.5·d²``.

    Reductions (``Σfg``, ``Σbg`` are the sums of the per-pixel terms):

    * ``"all"`` (final configs): ``Σfg / N_all``, ``Σbg / N_all`` with ``N_all = Σ_k (|F_k| + |B_k|)`` over
      the batch (if ``N_all = 0`` the sums are 0 and the result is a graph-keeping zero);
    * ``"fg-bg"``: ``0.5·Σfg / (Σ_k|F_k| + eps)``, ``0.5·Σbg / (Σ_k|B_k| + eps)`` (eps in the denominator);
    * ``"fg-bg-per-pos"``: the same per pair (``0.5·Σ_{F_k} / (|F_k| + eps)``), then the mean over pairs.

    A positive class absent from the label map has an empty ``F_k``: only its bg term acts (SPEC §5.2).

    Args:
        pos_cam: P×h×w raw CAMs, one per positive in ``nonzero(fg_labels)`` order.
        fg_labels: N×C_fg {0, 1} positives.
        label_map: N×H×W integer label maps (0 bg, ``c+1`` class ``c``, 255 ignore).
        loss_type: ``"l1"`` or ``"l2"``.
        reduction: ``"all"``, ``"fg-bg"`` or ``"fg-bg-per-pos"``.
        detach_max: stop the gradient through ``m_k`` (otherwise every fg pixel also pushes the max down).
        bg_thresh: background values above it are penalised.
        eps: denominator guard of the ``fg-bg`` reductions.

    Returns:
        ``(fg_loss, bg_loss)`` scalars of ``pos_cam``'s dtype; graph-keeping zeros when ``P = 0``.
    """
    if loss_type not in _CAL_TYPES:
        raise ValueError(f"loss_type must be one of {_CAL_TYPES}, got {loss_type!r}")
    if reduction not in _CAL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {_CAL_REDUCTIONS}, got {reduction!r}")
    cam, fg, bg = _pair_masks(pos_cam, fg_labels, label_map)
    if cam.shape[0] == 0:
        return _graph_zero(pos_cam), _graph_zero(pos_cam)

    zero = torch.zeros((), dtype=cam.dtype, device=cam.device)
    # m_k: max over F_k, at least 0; an empty F_k gives max(-inf) = -inf -> 0 (zero gradient either way).
    fg_max = cam.masked_fill(~fg, float("-inf")).amax(dim=(1, 2), keepdim=True).clamp_min(0)
    if detach_max:
        fg_max = fg_max.detach()
    fg_dev = torch.where(fg, fg_max - cam, zero)
    bg_dev = torch.where(bg, (cam - bg_thresh).clamp_min(0), zero)
    if loss_type == "l1":
        fg_term, bg_term = fg_dev.abs(), bg_dev
    else:
        fg_term, bg_term = 0.5 * fg_dev.square(), 0.5 * bg_dev.square()

    fg_num = fg.sum(dim=(1, 2)).to(cam.dtype)  # P
    bg_num = bg.sum(dim=(1, 2)).to(cam.dtype)
    if reduction == "all":
        n_all = (fg_num.sum() + bg_num.sum()).clamp_min(1)
        return fg_term.sum() / n_all, bg_term.sum() / n_all
    if reduction == "fg-bg":
        return 0.5 * fg_term.sum() / (fg_num.sum() + eps), 0.5 * bg_term.sum() / (bg_num.sum() + eps)
    fg_pair = 0.5 * fg_term.sum(dim=(1, 2)) / (fg_num + eps)
    bg_pair = 0.5 * bg_term.sum(dim=(1, 2)) / (bg_num + eps)
    return fg_pair.mean(), bg_pair.mean()


# --------------------------------------------------------------------------------------------------- ablations
def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``nn.MultiLabelSoftMarginLoss(reduction="mean")`` on raw logits (SPEC §4.4, L_BCE default item).

    ``−mean_{n,c}[ y·log σ(S) + (1−y)·log σ(−S) ]`` (mean over classes, then batch), computed with
    log-sigmoid, so scale-100 logits give finite values.
    """
    _check_logits_labels(logits, labels)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="mean")


def scaled_bce_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    s: torch.Tensor | float = 1.0,
    b: torch.Tensor | float = -20.0,
    norm_s: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Plain BCE on ``x = s·S + b`` as the reference's ``ScaledASL`` configured as BCE (SPEC §4.4).

    ASL with ``gamma_neg = gamma_pos = 0``, ``clip = 0``, mean reduction:
    ``−mean[ y·log(max(σ(x), eps)) + (1−y)·log(max(1−σ(x), eps)) ]``. Each log-probability is computed as
    ``max(logsigmoid(±x), log eps)`` — the same value and the same (zero beyond the clamp) gradient, without the
    cancellation of ``1 − σ(x)``. With ``norm_s`` the loss is divided by the detached ``s``.
    """
    _check_logits_labels(logits, labels)
    s_t = torch.as_tensor(s, device=logits.device).to(logits.dtype)
    b_t = torch.as_tensor(b, device=logits.device).to(logits.dtype)
    x = s_t * logits + b_t
    y = labels.to(logits.dtype)
    log_eps = math.log(eps)
    log_p = F.logsigmoid(x).clamp_min(log_eps)
    log_q = F.logsigmoid(-x).clamp_min(log_eps)
    loss = -(y * log_p + (1 - y) * log_q).mean()
    return loss / s_t.detach() if norm_s else loss


class ScaledBCE(nn.Module):
    """BCE on linearly scaled logits ``s·S + b`` (App. Table S5 "Manual Scale" / "Auto Scale"; SPEC §4.4).

    ``learnable=False`` keeps ``s``, ``b`` as buffers ("Manual Scale"; ``s = 1, b = −20`` is the natural reading
    of the unrecorded values); ``learnable=True`` makes them parameters ("Auto Scale"; the reference trained
    them with lr 1e-3 or 0.1, plain SGD group, **no weight decay** — see :meth:`param_groups`). ``norm_s`` (the
    reference config's setting) divides the loss by the detached ``s`` so that ``s`` does not scale the
    gradient of the prompts.
    """

    def __init__(self, s: float = 1.0, b: float = -20.0, learnable: bool = False, norm_s: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.learnable = bool(learnable)
        self.norm_s = bool(norm_s)
        self.eps = float(eps)
        s_t = torch.tensor(float(s), dtype=torch.float32)
        b_t = torch.tensor(float(b), dtype=torch.float32)
        if self.learnable:
            self.s = nn.Parameter(s_t)
            self.b = nn.Parameter(b_t)
        else:
            self.register_buffer("s", s_t)
            self.register_buffer("b", b_t)

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer groups for the scale and bias: ``[{"params": [s, b], "lr": lr, "weight_decay": 0.0}]``
        when learnable, else ``[]``."""
        if not self.learnable:
            return []
        return [{"params": [self.s, self.b], "lr": float(lr), "weight_decay": 0.0}]

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return scaled_bce_loss(logits, labels, self.s, self.b, norm_s=self.norm_s, eps=self.eps)

    def extra_repr(self) -> str:
        return f"s={float(self.s):g}, b={float(self.b):g}, learnable={self.learnable}, norm_s={self.norm_s}"


def sigmoid_pixel_ce_loss(
    pos_cam: torch.Tensor,
    fg_labels: torch.Tensor,
    label_map: torch.Tensor,
    scale: torch.Tensor | float = 1.0,
    bias: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Pixel-wise sigmoid cross-entropy on the positive classes' CAMs (App. E, App. Table S5 "L_CE"; SPEC §4.4).

    No reference implementation exists (SPEC §13 item 5); this is our reading of App. E. Only the positive
    classes have a CAM, so a softmax over classes is impossible; each positive pair ``k = (n, c)`` is a
    separate binary problem on its own image: with the CAM upsampled as in CAL (bilinear, ``align_corners=False``)
    and ``p_k(x) = σ(scale·CAM_k(x) + bias)``, the target is 1 on ``F_k`` (pixels labelled ``c+1``) and 0 on
    ``B_k`` (every other non-ignored pixel, other foreground classes included — the same split as CAL);
    255 pixels are ignored. The loss is the mean of ``−[t·log p + (1−t)·log(1−p)]`` over all valid
    (pair, pixel) entries of the batch, ``N_all = Σ_k (|F_k| + |B_k|)`` — CAL's ``"all"`` normaliser. With
    ``scale = 1, bias = 0`` the raw CAM (≈ 1e-3) gives p ≈ 0.5 ("no scaling"); "Manual Scale" is a fixed
    ``scale, bias``, "Auto Scale" :class:`ScaledSigmoidPixelCE` with ``learnable=True``.

    Returns a graph-keeping zero when ``P = 0`` or no pixel is valid.
    """
    cam, fg, bg = _pair_masks(pos_cam, fg_labels, label_map)
    valid = fg | bg
    n_valid = int(valid.sum())
    if cam.shape[0] == 0 or n_valid == 0:
        return _graph_zero(pos_cam)
    scale_t = torch.as_tensor(scale, device=cam.device).to(cam.dtype)
    bias_t = torch.as_tensor(bias, device=cam.device).to(cam.dtype)
    x = scale_t * cam + bias_t
    per_pixel = F.binary_cross_entropy_with_logits(x, fg.to(cam.dtype), reduction="none")
    per_pixel = torch.where(valid, per_pixel, torch.zeros((), dtype=cam.dtype, device=cam.device))
    return per_pixel.sum() / n_valid


class ScaledSigmoidPixelCE(nn.Module):
    """:func:`sigmoid_pixel_ce_loss` with a fixed (``learnable=False``) or learnable scale and bias (App. E).

    The parameters belong in their own optimizer group without weight decay (:meth:`param_groups`), like
    :class:`ScaledBCE`.
    """

    def __init__(self, scale: float = 1.0, bias: float = 0.0, learnable: bool = True) -> None:
        super().__init__()
        self.learnable = bool(learnable)
        scale_t = torch.tensor(float(scale), dtype=torch.float32)
        bias_t = torch.tensor(float(bias), dtype=torch.float32)
        if self.learnable:
            self.scale = nn.Parameter(scale_t)
            self.bias = nn.Parameter(bias_t)
        else:
            self.register_buffer("scale", scale_t)
            self.register_buffer("bias", bias_t)

    def param_groups(self, lr: float) -> list[dict]:
        """``[{"params": [scale, bias], "lr": lr, "weight_decay": 0.0}]`` when learnable, else ``[]``."""
        if not self.learnable:
            return []
        return [{"params": [self.scale, self.bias], "lr": float(lr), "weight_decay": 0.0}]

    def forward(self, pos_cam: torch.Tensor, fg_labels: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        return sigmoid_pixel_ce_loss(pos_cam, fg_labels, label_map, self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):g}, bias={float(self.bias):g}, learnable={self.learnable}"
