"""Dense-CRF seeds: the seed post-processing baseline of SPEC §8.1 (CONTEXT §2.6).

A CAM becomes a seed in four steps:

1. :func:`crf_scores` — the full-resolution ``[bg, score_c…]`` map of SPEC §3: each CAM is resized bilinearly
   (``align_corners=False``) to the image size ``H×W``, clamped at 0 and min-max normalised per class over
   ``H×W`` (``(v − min) / (max − min + 1e-7)``); ``bg = (1 − max_c score_c)^bg_power`` is prepended.
2. :func:`dense_crf` — mean-field inference of a fully connected CRF (pydensecrf ``DenseCRF2D``) with unary
   ``−log(max(score, 1e-5))`` (the scores are *not* a normalised distribution and are not renormalised), a
   Gaussian pairwise term (``sxy = pos_xy_std``, ``compat = pos_w``) and a bilateral one (``sxy = bi_xy_std``,
   ``srgb = bi_rgb_std``, ``compat = bi_w``), ``iter_max`` iterations; returns the ``C×H×W`` distribution ``Q``.
3. argmax over ``Q`` (first maximum wins) → label ids: row 0 → 0 (background), row ``k`` → ``fg_cls[k−1] + 1``.
4. Optional confidence mask (SPEC §8.1, ``thresh_mask``): pixels whose max ``Q`` is below ``conf_thresh`` → 255.

Named parameter sets (:data:`CRF_PARAM_SETS`, SPEC §8.1 table), see :func:`crf_params`. The ``clip_es_crf`` set
reproduces the reference's image quirk (CONTEXT §2.6): the RGB image is turned into BGR, the mean
``(104.008, 116.669, 122.675)`` is subtracted in float32, and the result is cast to uint8 *with wrap-around*
(truncation toward zero, then modulo 256, as a C cast on x86 does) before it enters the bilateral term. Every
other set uses the raw RGB image. :func:`crf_image` exposes that transform.

Backend: the optional ``pydensecrf2`` package (extra ``crf``; import name ``pydensecrf``), imported only when a CRF
actually runs. When it is missing a :class:`~tag2mask.errors.Tag2MaskError` says how to install it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from tag2mask.errors import Tag2MaskError
from tag2mask.maps import mmnorm, resize_maps

__all__ = [
    "CRF_PARAM_SETS",
    "CrfParams",
    "crf_image",
    "crf_params",
    "crf_scores",
    "crf_seed",
    "dense_crf",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

UNARY_CLIP = 1e-5  # SPEC §8.1: unary = −log(clip(score, 1e-5))
CLIP_ES_MEAN_BGR = (104.008, 116.669, 122.675)  # CONTEXT §2.6 (deeplab-pytorch mean, BGR order)
IGNORE = 255

MISSING_BACKEND_MESSAGE = 'dense CRF needs the optional extra: pip install -e ".[crf]" (or pip install pydensecrf2)'

ImageMode = Literal["rgb", "bgr_mean_uint8_wrap"]


@dataclass(frozen=True)
class CrfParams:
    """One dense-CRF parameter set (SPEC §8.1 table).

    Attributes:
        name: the set's name (informational).
        iter_max: mean-field iterations.
        pos_w, pos_xy_std: Gaussian (position-only) kernel: ``compat`` and ``sxy``.
        bi_w, bi_xy_std, bi_rgb_std: bilateral kernel: ``compat``, ``sxy`` and ``srgb``.
        image: ``"rgb"`` (raw RGB into the bilateral term) or ``"bgr_mean_uint8_wrap"`` (the ``clip_es_crf`` quirk).
    """

    name: str
    iter_max: int
    pos_w: float
    pos_xy_std: float
    bi_w: float
    bi_xy_std: float
    bi_rgb_std: float
    image: ImageMode = "rgb"


CRF_PARAM_SETS: tuple[str, ...] = ("clip_es_crf,no_pp", "clip_es_crf", "deeplab_crf", "scale_crf")


def crf_params(name: str, scale: Optional[float] = None) -> CrfParams:
    """The named parameter set of SPEC §8.1.

    ================== ==== ===== ========== ==== ========== ========== =========================
    name               iter pos_w pos_xy_std bi_w bi_xy_std  bi_rgb_std image
    ================== ==== ===== ========== ==== ========== ========== =========================
    clip_es_crf,no_pp  10   3     1          4    67         3          raw RGB
    clip_es_crf        10   3     1          4    67         3          BGR − mean, uint8 wrap
    deeplab_crf        10   2     2          4    65         3          raw RGB
    scale_crf          10   3     3/scale    10   80/scale   13         raw RGB
    ================== ==== ===== ========== ==== ========== ========== =========================

    ``scale`` is required by ``scale_crf`` (a positive number) and refused by the other sets.
    """
    if name == "scale_crf":
        if scale is None or not float(scale) > 0:
            raise ValueError(f"CRF parameter set 'scale_crf' needs a positive scale=..., got {scale!r}")
        s = float(scale)
        return CrfParams(name, 10, 3.0, 3.0 / s, 10.0, 80.0 / s, 13.0, "rgb")
    if scale is not None:
        raise ValueError(f"scale is only used by the CRF parameter set 'scale_crf', not {name!r}")
    if name == "clip_es_crf,no_pp":
        return CrfParams(name, 10, 3.0, 1.0, 4.0, 67.0, 3.0, "rgb")
    if name == "clip_es_crf":
        return CrfParams(name, 10, 3.0, 1.0, 4.0, 67.0, 3.0, "bgr_mean_uint8_wrap")
    if name == "deeplab_crf":
        return CrfParams(name, 10, 2.0, 2.0, 4.0, 65.0, 3.0, "rgb")
    raise ValueError(f"unknown CRF parameter set {name!r}; choose one of {', '.join(CRF_PARAM_SETS)}")


def _resolve_params(params: Union[str, CrfParams], scale: Optional[float]) -> CrfParams:
    if isinstance(params, CrfParams):
        if scale is not None:
            raise ValueError("scale is only used with a parameter-set name ('scale_crf'), not with CrfParams")
        return params
    return crf_params(params, scale)


def _import_densecrf():  # noqa: ANN202 - the optional backend module
    """``pydensecrf.densecrf``, imported lazily; :class:`Tag2MaskError` with the install line when missing."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise Tag2MaskError(MISSING_BACKEND_MESSAGE) from None
    return dcrf


def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be an H×W×3 uint8 RGB array, got shape {img.shape} dtype {img.dtype}")
    return img


def crf_image(image_rgb_uint8: np.ndarray, params: Union[str, CrfParams] = "clip_es_crf,no_pp",
              scale: Optional[float] = None) -> np.ndarray:
    """The ``H×W×3`` uint8 C-contiguous image the bilateral term sees for ``params`` (SPEC §8.1, CONTEXT §2.6).

    Raw RGB for every set except ``clip_es_crf``, whose image is ``uint8_wrap(BGR − (104.008, 116.669, 122.675))``:
    the subtraction is done in float32 and the cast truncates toward zero then wraps modulo 256 (e.g. RGB black
    ``(0, 0, 0)`` → ``(152, 140, 134)``, white → ``(150, 138, 132)``), which reproduces the reference's overflow.
    """
    p = _resolve_params(params, scale)
    img = _check_image(image_rgb_uint8)
    if p.image == "rgb":
        return np.ascontiguousarray(img)
    if p.image == "bgr_mean_uint8_wrap":
        bgr = img[..., ::-1].astype(np.float32) - np.asarray(CLIP_ES_MEAN_BGR, dtype=np.float32)
        wrapped = np.trunc(bgr).astype(np.int64) % 256
        return np.ascontiguousarray(wrapped.astype(np.uint8))
    raise ValueError(f"unknown CRF image mode {p.image!r}")


def dense_crf(image: np.ndarray, probs: ArrayLike, params: Union[str, CrfParams] = "clip_es_crf,no_pp",
              scale: Optional[float] = None) -> np.ndarray:
    """Mean-field ``Q`` (``C×H×W`` float32, sums to 1 per pixel) of a dense CRF on ``C×H×W`` scores (SPEC §8.1).

    Args:
        image: ``H×W×3`` uint8 RGB image; it goes through :func:`crf_image` for ``params`` (so ``clip_es_crf``
            applies its wrap-around transform here).
        probs: ``C×H×W`` non-negative scores (numpy or torch); unary ``= −log(max(score, 1e-5))``, not
            renormalised.
        params: a name from :data:`CRF_PARAM_SETS` or a :class:`CrfParams`.
        scale: only for ``"scale_crf"``.

    Raises:
        Tag2MaskError: the ``pydensecrf2`` backend (extra ``crf``) is not installed.
    """
    dcrf = _import_densecrf()
    p = _resolve_params(params, scale)
    rgb = crf_image(image, p)
    scores = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if scores.ndim != 3:
        raise ValueError(f"probs must be C×H×W, got shape {scores.shape}")
    c, h, w = scores.shape
    if (h, w) != rgb.shape[:2]:
        raise ValueError(f"probs are {h}×{w} but the image is {rgb.shape[0]}×{rgb.shape[1]}")
    if c < 1:
        raise ValueError("probs need at least one channel")
    unary = -np.log(np.maximum(scores.astype(np.float32).reshape(c, h * w), np.float32(UNARY_CLIP)))
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=p.pos_xy_std, compat=p.pos_w)
    crf.addPairwiseBilateral(sxy=p.bi_xy_std, srgb=p.bi_rgb_std, rgbim=rgb, compat=p.bi_w)
    q = crf.inference(int(p.iter_max))
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def _fg_cls_array(fg_cls: Union[Sequence[int], ArrayLike]) -> np.ndarray:
    """Positive classes (0-based) as int64, checked so that ``c + 1`` fits a uint8 label below 255."""
    arr = fg_cls.detach().cpu().numpy() if isinstance(fg_cls, torch.Tensor) else np.asarray(fg_cls)
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 253):
        raise ValueError(f"fg_cls must be 0-based class ids in [0, 253], got {arr.tolist()}")
    return arr


def crf_scores(cam: ArrayLike, size: tuple[int, int], bg_power: float = 1.0) -> np.ndarray:
    """``(1+P)×H×W`` float32 ``[bg, score_c…]`` at ``size = (H, W)`` (SPEC §3 "Downstream conversion", §8.1).

    Resize first (bilinear, ``align_corners=False``), then clamp at 0 and min-max per class over ``H×W``
    (``+1e-7``); ``bg = (1 − max_c score_c)^bg_power`` (1 everywhere when ``P = 0``).
    """
    x = cam.detach().cpu() if isinstance(cam, torch.Tensor) else torch.from_numpy(np.array(cam, copy=True))
    if x.ndim != 3:
        raise ValueError(f"cam must be P×h×w, got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    h, w = int(size[0]), int(size[1])
    if x.shape[0] == 0:
        return np.ones((1, h, w), dtype=np.float32)
    score = mmnorm(resize_maps(x, (h, w)), dim=(1, 2))  # the same resize for any thread count (tag2mask.maps)
    bg = (1 - score.amax(dim=0, keepdim=True)) ** float(bg_power)
    return torch.cat([bg, score], dim=0).numpy()


def crf_seed(
    image_rgb_uint8: np.ndarray,
    cam: ArrayLike,
    fg_cls: Union[Sequence[int], ArrayLike],
    bg_power: float = 1.0,
    params: Union[str, CrfParams] = "clip_es_crf,no_pp",
    conf_thresh: Optional[float] = None,
    scale: Optional[float] = None,
) -> np.ndarray:
    """Dense-CRF seed of one image (SPEC §8.1): ``H×W`` uint8, 0 bg, ``c+1`` class ``c``, 255 = low confidence.

    Args:
        image_rgb_uint8: ``H×W×3`` uint8 RGB image; the seed has its size.
        cam: ``P×h×w`` CAMs (numpy or torch; raw or CAA-refined), one per positive class.
        fg_cls: the ``P`` positive classes, 0-based (label id ``c + 1``).
        bg_power: the background exponent ``p`` of ``bg = (1 − max)^p`` (the reference searched {1, 2} with CRF,
            by ground-truth mIoU — label such a choice as tuned on ground truth, SPEC §13 item 7).
        params: parameter-set name (:data:`CRF_PARAM_SETS`) or :class:`CrfParams`.
        conf_thresh: when given, pixels whose max CRF probability is below it become 255 (the reference's 0.95
            mask; ``None`` or 0 = no ignore).
        scale: only for ``params="scale_crf"``.

    Raises:
        Tag2MaskError: the ``pydensecrf2`` backend (extra ``crf``) is not installed.
    """
    _import_densecrf()  # fail early, before any work, when the extra is missing
    img = _check_image(image_rgb_uint8)
    fg = _fg_cls_array(fg_cls)
    h, w = img.shape[:2]
    scores = crf_scores(cam, (h, w), bg_power)
    if scores.shape[0] != fg.size + 1:
        raise ValueError(f"cam has {scores.shape[0] - 1} channels for {fg.size} positive classes")
    if fg.size == 0:  # a single label: the CRF cannot change anything, Q = 1 everywhere
        q = np.ones((1, h, w), dtype=np.float32)
    else:
        q = dense_crf(img, scores, params, scale)
    lut = np.concatenate([np.zeros(1, np.int64), fg + 1]).astype(np.uint8)
    seed = lut[np.argmax(q, axis=0)]
    if conf_thresh is not None:
        seed[q.max(axis=0) < float(conf_thresh)] = IGNORE
    return seed
