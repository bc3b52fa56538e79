"""SAMS: seeds from CAMs by classifying quasi-superpixels (SPEC §8, Appendix C), and SAMS refinement (§11.2).

SAMS (SPEC §8, Appendix C), per image, with ``P`` positive classes and ``S`` superpixels ``{M_k, level_k}``:

1. Resize each CAM bilinearly (``align_corners=False``) to the masks' ``H×W`` (skipped when already that size).
2. Per-pixel evidence ``R_c = max(CAM_c, 0)`` (``norm_first=True``, the reference rule).
3. Gather per superpixel: ``r_{c,k} = Σ_{x∈M_k} R_c(x) / |M_k|`` (``gather="mean"``).
4. Min-max per class *across superpixels*: ``q_{c,k} = (r_{c,k} − min_k r) / (max_k r − min_k r + 1e-7)``.
5. Background ``q_{0,k} = (1 − max_c q_{c,k})^p`` (``bg_method="pow"``).
6. ``label_k = argmax`` over ``[bg, classes]`` (first maximum wins; bg → 0, class c → ``c+1``);
   ``conf_k`` = the max.
7. Stable ascending sort on ``(level, conf)`` (full ties keep input order); paint in that order, last writer wins:
   higher level wins, then higher confidence.
8. Pixels covered by no superpixel → 0 (``uncovered="background"``), or, as an option (SPEC §13 item 16), the
   input's own per-pixel argmax (``uncovered="argmax"``).

How it is computed (SPEC §13 item 18: no ``C×S×H×W`` tensor, and no per-mask loop over ``H×W``): the pixels are
grouped into *atoms* — maximal sets of pixels covered by exactly the same set of masks
(:mod:`tag2mask.superpixels.index`). A :class:`~tag2mask.superpixels.index.SeedingIndex` holds the ``H×W`` atom map, the
``A×S`` atom/mask membership and the atom areas (``A`` is a few hundred on a VOC image, against ``H·W ≈ 190k``
pixels). Then

* per-mask sums = (per-atom sums of the evidence) @ membership; on the CPU the per-atom sums are sums over the
  raster-order runs of the atom map (``np.add.reduceat``) added up per atom, elsewhere one ``index_add`` over the
  pixels;
* painting = each atom's label is the label of the *last* mask in paint order that contains it (an ``A×S``
  reduction), and the seed is one gather ``atom_label[atom_map]``.

The index depends only on the masks, so it can be computed once per image (:func:`precompute_superpixels`, or
:meth:`SeedingIndex.from_superpixels` from a stored ``Superpixels``) and reused for every CAM / hyper-parameter
(the SPEC §8 grid has 16 combinations per image); the tensors derived from it are cached on it per device. The
``masks`` argument of :func:`sams_seed`, :func:`sams_scores` and :func:`sams_refine` is either an ``S×H×W`` mask
stack with ``levels`` (the index is then built on the fly by :func:`precompute_superpixels`) or a ``Superpixels``
(its stored atoms are used, the masks are not decoded; ``levels`` must then be ``None`` or equal to its levels),
so every path runs the same arithmetic and gives identical results.

Numerics: the CAM is resized with its channels as a batch of one-channel images (see :func:`_resize`: the result
then does not depend on the number of torch threads). The per-superpixel sums are accumulated in float64 (float32 on
Apple MPS, which has no float64: :func:`accumulation_dtype`) and the means cast back to the CAM's floating dtype (float32 in the pipeline, Appendix C); everything after that (min-max,
background power, argmax, sort) runs in the CAM's dtype as the reference does. The reference sums in float32 with
a summation order that depends on the torch build and the CPU's vector width, so its scores are only reproducible
to within a few float32 ulps; our means are the (nearly always) correctly rounded float32 values. Seeds, labels
and paint orders of the reference cases match exactly.

Plain argmax seeds (SPEC §3, §9) are :mod:`tag2mask.seeding.argmax`'s.

Device-agnostic (the computation runs on the CAM's device; on the CPU two steps use numpy on zero-copy views);
numpy or torch in, and the output type follows the type of ``cam``. Pure functions: no file IO, inputs are never
modified (a :class:`SeedingIndex` caches derived tensors on itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from tag2mask.maps import as_tensor, mmnorm, resize_maps
from tag2mask.seeding.common import ArrayLike, background_row, fg_cls_tensor, float_cam, label_lut, output_like
from tag2mask.superpixels.index import (
    DeviceAtoms,
    MasksLike,
    SeedingIndex,
    accumulation_dtype,
    atoms_on,
    index_for,
    precompute_superpixels,
)

__all__ = [
    "BgMethod",
    "Gather",
    "NormFirst",
    "SamsScores",
    "SeedingIndex",
    "Uncovered",
    "precompute_superpixels",
    "sams_refine",
    "sams_scores",
    "sams_seed",
]

NormFirst = Union[bool, Literal["double_norm", "no_norm"]]
Gather = Literal["mean", "sum"]
BgMethod = Literal["pow", "thresh", "alpha_bg", "no_bg"]
Uncovered = Literal["background", "argmax"]

_GATHER_MODES = ("mean", "sum")
_BG_METHODS = ("pow", "thresh", "alpha_bg", "no_bg")
_UNCOVERED_MODES = ("background", "argmax")


def _check_options(norm_first: object, gather: str, bg_method: str, bg_value: Optional[float], uncovered: str) -> None:
    if isinstance(norm_first, str):
        ok = norm_first in ("double_norm", "no_norm")
    else:
        ok = isinstance(norm_first, (bool, np.bool_))
    if not ok:
        raise ValueError(
            f"norm_first must be True, False, 'double_norm' or 'no_norm', got {norm_first!r} "
            "('gamma_softmax' is not implemented: SPEC §8 does not define how it treats the background)"
        )
    if gather not in _GATHER_MODES:
        raise ValueError(f"gather must be one of {_GATHER_MODES}, got {gather!r}")
    if bg_method not in _BG_METHODS:
        raise ValueError(f"bg_method must be one of {_BG_METHODS}, got {bg_method!r}")
    if bg_method == "thresh" and bg_value is None:
        raise ValueError("bg_method='thresh' needs bg_value (the constant background score)")
    if uncovered not in _UNCOVERED_MODES:
        raise ValueError(f"uncovered must be one of {_UNCOVERED_MODES}, got {uncovered!r}")




# ----------------------------------------------------------------------------------------------------------------
# SAMS


@dataclass(frozen=True, eq=False)
class SamsScores:
    """Per-superpixel intermediates of SAMS (SPEC §8 steps 3–7). Arrays are numpy or torch like the input CAM.

    Attributes:
        scores: ``S×(1+P)`` float, column 0 = background, column ``j`` = positive class ``fg_cls[j−1]``
            (the reference's ``ann_score``); the background column is ``-inf`` for ``bg_method="no_bg"``.
        labels: ``S`` int64 label ids (0 bg, ``c+1`` class ``c``; the reference's ``ann_seed``).
        conf: ``S`` float, the winning score (``ann_conf``).
        paint_order: ``S`` int64 mask indices, first painted first (``paint_order``).
    """

    scores: ArrayLike
    labels: ArrayLike
    conf: ArrayLike
    paint_order: ArrayLike


@dataclass(frozen=True, eq=False)
class _Core:
    scores: torch.Tensor  # (1+P, S)
    labels: torch.Tensor  # (S,)
    conf: torch.Tensor  # (S,)
    order: torch.Tensor  # (S,)
    cam: torch.Tensor  # (C, H*W) resized input
    lut: torch.Tensor  # (1+P,)


def _gather(
    values: torch.Tensor, atoms: DeviceAtoms, how: str, clamp: bool = False, clamp_inplace: bool = False
) -> torch.Tensor:
    """Per-superpixel mean (or sum) of ``values`` (``C×HW``) → ``C×S`` in ``values``' dtype.

    Accumulated in float64 (float32 on MPS): per-atom sums, then ``@ membership``, then ``/ area``, then cast back. On the CPU the
    per-atom sums are sums over the raster-order runs of the atom map (``np.add.reduceat``, sequential within a
    run) added up per atom; elsewhere one ``index_add`` over the pixels. ``clamp=True`` clamps the values at 0
    first (exact, so the same before or after the cast); ``clamp_inplace=True`` allows clamping ``values``
    itself (a buffer the caller owns and no longer needs unclamped), which saves a pass and a copy.
    """
    c, out_dtype = values.shape[0], values.dtype
    wide = accumulation_dtype(values.device)
    acc = torch.zeros((c, atoms.num_atoms), dtype=wide, device=values.device)
    if atoms.run_starts is not None and not values.requires_grad:
        if clamp:  # exact in any floating dtype, so done before the (exact) widening to float64
            values = values.clamp_(min=0) if clamp_inplace else values.clamp(min=0)
        if values.dtype not in (torch.float32, torch.float64):  # e.g. bfloat16, which numpy lacks
            values = values.to(torch.float64)
        if atoms.run_starts.size:  # float32 is widened inside reduceat, without a float64 copy of the map
            run_sums = np.add.reduceat(values.numpy(), atoms.run_starts, axis=1, dtype=np.float64)
            acc.index_add_(1, atoms.run_atom, torch.from_numpy(run_sums))
    else:
        v = values.to(wide)
        if clamp:
            v = v.clamp_(min=0) if v is not values else v.clamp(min=0)
        if atoms.atom_map_flat is not None:
            acc.index_add_(1, atoms.atom_map_flat, v)
        else:  # a CPU index used with a tensor that needs grad: the differentiable form
            acc.index_add_(1, as_tensor(atoms.atom_map_np.reshape(-1)).to(torch.int64), v)
    sums = acc @ atoms.membership_acc
    if how == "mean":
        sums = sums / atoms.mask_areas
    return sums.to(out_dtype)


def _sams_core(
    cam: ArrayLike,
    fg_cls: Union[Sequence[int], ArrayLike],
    atoms: DeviceAtoms,
    bg_power: float,
    norm_first: NormFirst,
    gather: str,
    bg_method: str,
    bg_value: Optional[float],
) -> _Core:
    """SPEC §8 steps 1–7 on the atoms (shared by :func:`sams_seed` and :func:`sams_scores`)."""
    x = float_cam(cam)
    dev = x.device
    fg = fg_cls_tensor(fg_cls, dev)
    p = int(fg.numel())
    want = p + 1 if bg_method == "alpha_bg" else p
    if x.shape[0] != want:
        raise ValueError(
            f"cam has {x.shape[0]} channels, expected {want} for {p} positive classes"
            + (" (bg_method='alpha_bg' needs the background channel first)" if bg_method == "alpha_bg" else "")
        )
    h, w = atoms.shape
    x_in = x
    x = resize_maps(x, (h, w))
    # the resized map is our own buffer: the reference rule may clamp it in place, unless the unclamped values are
    # still needed (uncovered="argmax" with alpha_bg takes the argmax of the channels as given)
    owned = x is not x_in and bg_method != "alpha_bg"
    x = x.reshape(x.shape[0], h * w)
    s = int(atoms.levels.numel())
    if atoms.empty_mask >= 0:
        raise ValueError(f"mask {atoms.empty_mask} is empty: SAMS needs non-empty superpixels")

    # steps 2–4: evidence, gather, normalisation across superpixels
    if s == 0:  # no superpixel at all: nothing to score, every pixel is uncovered
        q = x.new_zeros((x.shape[0], 0))
    elif norm_first == "no_norm":
        q = _gather(x, atoms, gather)
    elif norm_first == "double_norm":
        q = mmnorm(_gather(mmnorm(x, dim=1), atoms, gather), dim=1)
    elif norm_first:  # True: clamp per pixel, gather, min-max across superpixels (the reference rule)
        q = mmnorm(_gather(x, atoms, gather, clamp=True, clamp_inplace=owned), dim=1)
    else:  # False: gather the raw CAM, then clamp + min-max across superpixels
        q = mmnorm(_gather(x, atoms, gather), dim=1)

    # step 5: background row
    if bg_method == "alpha_bg":
        scores = torch.cat([(q[:1] ** bg_power), q[1:]], dim=0)
    else:
        scores = torch.cat([background_row(q, bg_method, bg_power, bg_value)[None], q], dim=0)

    # step 6: argmax (first maximum wins) and confidence
    lut = label_lut(fg)
    if s:
        idx = torch.argmax(scores, dim=0)
        conf = scores.gather(0, idx[None])[0]
    else:
        idx = torch.zeros(0, dtype=torch.int64, device=dev)
        conf = scores.new_zeros(0)
    labels = lut[idx]

    # step 7: stable ascending sort on (level, conf): secondary key first, then primary, both stable
    by_conf = torch.sort(conf, stable=True).indices
    order = by_conf[torch.sort(atoms.levels[by_conf], stable=True).indices]
    return _Core(scores=scores, labels=labels, conf=conf, order=order, cam=x, lut=lut)


def _pixel_labels(
    core: _Core, norm_first: NormFirst, bg_method: str, bg_power: float, bg_value: Optional[float]
) -> torch.Tensor:
    """The input's own per-pixel argmax label (``HW``), used for ``uncovered="argmax"`` (SPEC §13 item 16).

    * ``bg_method="alpha_bg"`` (probability input with a bg channel): argmax of the input channels as given
      (the network's own prediction; α is not applied).
    * otherwise: per-pixel scores (``mmnorm`` over ``H×W`` per class of the clamped CAM, SPEC §3, or the values
      unchanged for ``norm_first="no_norm"``), background by the same ``bg_method``, argmax — with the defaults
      this is :func:`argmax_seed`.
    """
    x = core.cam
    if bg_method == "alpha_bg":
        stack = x
    else:
        fg = x if norm_first == "no_norm" else mmnorm(x, dim=1)
        stack = torch.cat([background_row(fg, bg_method, bg_power, bg_value)[None], fg], dim=0)
    return core.lut[torch.argmax(stack, dim=0)]


def _per_pixel(per_atom: torch.Tensor, atoms: DeviceAtoms, atom_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``per_atom[atom_map]`` as an ``H×W`` tensor: one gather, or on the CPU one ``np.repeat`` over the runs.
    With ``atom_ids`` (``A``, int64), ``per_atom[atom_ids[atom_map]]``."""
    if atoms.run_atom is not None:
        ids = atoms.run_atom if atom_ids is None else atom_ids[atoms.run_atom]
        return torch.from_numpy(np.repeat(per_atom[ids].numpy(), atoms.run_len).reshape(atoms.shape))
    if atom_ids is not None:
        per_atom = per_atom[atom_ids]
    return torch.take(per_atom, atoms.atom_map_flat).reshape(atoms.shape)


def _paint(core: _Core, atoms: DeviceAtoms, fill: Optional[torch.Tensor]) -> torch.Tensor:
    """SPEC §8 steps 7–8: per atom, the label of the last mask in paint order containing it; ``H×W`` uint8."""
    s = int(core.order.numel())
    dev = core.order.device
    rank = torch.empty(s, dtype=torch.int64, device=dev)
    rank[core.order] = torch.arange(1, s + 1, device=dev)
    if s:
        top = (atoms.membership_i64 * rank[None]).amax(dim=1)  # rank of the last painter; 0 = covered by no mask
    else:
        top = torch.zeros(atoms.num_atoms, dtype=torch.int64, device=dev)
    # label by rank, rank 0 (no mask) → background
    by_rank = torch.cat([core.labels.new_zeros(1), core.labels[core.order]]).to(torch.uint8)
    seed = _per_pixel(by_rank, atoms, top).to(dev)
    if fill is not None:
        uncovered = _per_pixel(top == 0, atoms).to(dev)
        seed = torch.where(uncovered, fill.to(torch.uint8).reshape(atoms.shape), seed)
    return seed


def sams_scores(
    cam: ArrayLike,
    fg_cls: Union[Sequence[int], ArrayLike],
    masks: Optional[MasksLike],
    levels: Optional[Union[Sequence[int], ArrayLike]] = None,
    bg_power: float = 0.7,
    *,
    norm_first: NormFirst = True,
    gather: Gather = "mean",
    bg_method: BgMethod = "pow",
    bg_value: Optional[float] = None,
    precomputed: Optional[SeedingIndex] = None,
) -> SamsScores:
    """Per-superpixel SAMS intermediates (scores bg first, labels, confidences, paint order; SPEC §8 steps 1–7).

    Same arguments as :func:`sams_seed` (without ``uncovered``). Outputs are numpy when ``cam`` is numpy.
    """
    _check_options(norm_first, gather, bg_method, bg_value, "background")
    x = as_tensor(cam)
    atoms = atoms_on(index_for(masks, levels, precomputed), x.device)
    core = _sams_core(x, fg_cls, atoms, bg_power, norm_first, gather, bg_method, bg_value)
    return SamsScores(
        scores=output_like(core.scores.T.contiguous(), cam),
        labels=output_like(core.labels, cam),
        conf=output_like(core.conf, cam),
        paint_order=output_like(core.order, cam),
    )


def sams_seed(
    cam: ArrayLike,
    fg_cls: Union[Sequence[int], ArrayLike],
    masks: Optional[MasksLike],
    levels: Optional[Union[Sequence[int], ArrayLike]] = None,
    bg_power: float = 0.7,
    *,
    norm_first: NormFirst = True,
    gather: Gather = "mean",
    bg_method: BgMethod = "pow",
    bg_value: Optional[float] = None,
    uncovered: Uncovered = "background",
    precomputed: Optional[SeedingIndex] = None,
) -> ArrayLike:
    """SAMS seed of one image: ``H×W`` uint8, 0 = background, ``c+1`` = class ``c`` (SPEC §8, Appendix C).

    Args:
        cam: ``C×h×w`` raw CAM (any resolution; resized bilinearly, ``align_corners=False``, to the masks' size
            when it differs), or probabilities. ``C = P``, or ``1 + P`` with the background first for
            ``bg_method="alpha_bg"``. numpy or torch, any device; floating dtypes are kept, others become float32.
        fg_cls: the ``P`` positive classes, 0-based (label id ``c + 1``).
        masks: the quasi-superpixels: an ``S×H×W`` bool mask stack in SAM output order (numpy or torch, any
            device), or a :class:`tag2mask.superpixels.Superpixels` (its stored atoms are used and its masks are
            not decoded); may be ``None`` with ``precomputed``.
        levels: ``S`` ints (0 subpart, 1 part, 2 whole) of a mask stack; with a ``Superpixels`` or
            ``precomputed`` it may be ``None``, and if given must equal their levels (else ``ValueError``).
        bg_power: exponent ``p`` of ``bg = (1 − max_c q_c)^p`` (``pow``), or ``α`` of ``bg ← bg^α``
            (``alpha_bg``). VOC: 0.6 coarse, 0.7 fine (SPEC §8 table).
        norm_first: ``True`` (reference): clamp per pixel, gather, min-max per class across superpixels.
            ``False``: gather the raw CAM, then clamp + min-max across superpixels. ``"double_norm"``: per-pixel
            ``mmnorm`` over ``H×W`` first, gather, then min-max across superpixels again. ``"no_norm"``: gather
            the values unchanged (probability inputs, SPEC §11.2).
        gather: ``"mean"`` (reference) or ``"sum"`` over each superpixel.
        bg_method: ``"pow"`` (reference), ``"thresh"`` (constant ``bg_value``), ``"alpha_bg"`` (input has a bg
            channel: ``bg ← bg^bg_power``; the same normalisation as the classes is applied to it first),
            ``"no_bg"`` (background never wins a covered superpixel).
        bg_value: the constant background score for ``"thresh"``.
        uncovered: ``"background"`` (reference: pixels in no superpixel → 0) or ``"argmax"`` (SPEC §13 item 16:
            keep the input's own per-pixel argmax there — for ``alpha_bg`` the argmax of the input channels as
            given, α not applied, i.e. the network's own prediction; otherwise per-pixel scores (``mmnorm`` over
            ``H×W`` of the clamped CAM, or the values as given for ``"no_norm"``) with the background from the
            same ``bg_method``, which with the defaults is exactly :func:`argmax_seed`).
        precomputed: a :class:`SeedingIndex` of these masks (from :func:`precompute_superpixels` or
            :meth:`SeedingIndex.from_superpixels`); gives the same result as passing the masks, faster.

    Returns:
        ``H×W`` uint8 seed, numpy if ``cam`` is numpy, else a tensor on ``cam``'s device.

    A single superpixel, or a class with the same mean in every superpixel, normalises that class to 0
    everywhere (SPEC §13 item 17), so with ``pow`` the background (score 1) wins. An empty mask is an error.
    """
    _check_options(norm_first, gather, bg_method, bg_value, uncovered)
    x = as_tensor(cam)
    atoms = atoms_on(index_for(masks, levels, precomputed), x.device)
    core = _sams_core(x, fg_cls, atoms, bg_power, norm_first, gather, bg_method, bg_value)
    fill = _pixel_labels(core, norm_first, bg_method, bg_power, bg_value) if uncovered == "argmax" else None
    return output_like(_paint(core, atoms, fill), cam)


def sams_refine(
    prob: ArrayLike,
    fg_cls: Union[Sequence[int], ArrayLike],
    masks: Optional[MasksLike],
    levels: Optional[Union[Sequence[int], ArrayLike]] = None,
    alpha: float = 1.0,
    uncovered: Uncovered = "background",
    *,
    precomputed: Optional[SeedingIndex] = None,
) -> ArrayLike:
    """SAMS refinement of a segmentation network's output (SPEC §11.2): ``H×W`` uint8 label map.

    ``prob`` is ``(1+P)×H×W`` per-pixel class probabilities with the background channel first and channel
    ``j ≥ 1`` holding class ``fg_cls[j−1]``. Superpixel score = mean probability (``norm_first="no_norm"``,
    ``gather="mean"``), background ``bg ← bg^alpha`` (``alpha_bg``), argmax, priority painting. ``uncovered``:
    ``"background"`` (reference) or ``"argmax"`` (keep the network's own argmax in pixels no superpixel covers,
    SPEC §13 item 16). ``masks`` / ``levels`` / ``precomputed`` as in :func:`sams_seed` (a ``Superpixels`` is
    accepted in place of the mask stack). SPEC §13 item 9: the reference searched ``alpha`` on the evaluation
    split's ground truth.
    """
    return sams_seed(
        prob,
        fg_cls,
        masks,
        levels,
        alpha,
        norm_first="no_norm",
        gather="mean",
        bg_method="alpha_bg",
        uncovered=uncovered,
        precomputed=precomputed,
    )


