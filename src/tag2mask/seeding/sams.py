"""CAM → seed conversion: SAMS seeding on quasi-superpixels and plain argmax seeds (SPEC §3, §8, §9, §11.2).

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
grouped into *atoms* — maximal sets of pixels covered by exactly the same set of masks. A :class:`SeedingIndex`
holds the ``H×W`` atom map, the ``A×S`` atom/mask membership and the atom areas (``A`` is a few hundred on a VOC
image, against ``H·W ≈ 190k`` pixels). Then

* per-mask sums = (per-atom sums of the evidence, one ``index_add`` over the pixels) @ membership;
* painting = each atom's label is the label of the *last* mask in paint order that contains it (an ``A×S``
  reduction), and the seed is one gather ``atom_label[atom_map]``.

The index depends only on the masks, so it can be computed once per image (:func:`precompute_superpixels`) and
reused for every CAM / hyper-parameter (the SPEC §8 grid has 16 combinations per image). Without it,
:func:`sams_seed` builds it on the fly (one pass over the ``S×H×W`` masks), so both paths run the same arithmetic
and give identical results.

Numerics: the per-superpixel sums are accumulated in float64 and the means cast back to the CAM's floating dtype
(float32 in the pipeline, Appendix C); everything after that (min-max, background power, argmax, sort) runs in the
CAM's dtype as the reference does. The reference sums in float32 with a summation order that depends on the torch
build and the CPU's vector width, so its scores are only reproducible to within a few float32 ulps; our means are
the (nearly always) correctly rounded float32 values. Seeds, labels and paint orders of the reference cases match
exactly.

Plain argmax seeds (SPEC §3 "Downstream conversion", §9): :func:`argmax_seed`.

Everything is torch and device-agnostic (the computation runs on the CAM's device); numpy or torch in, and the
output type follows the type of ``cam``. Pure functions: no file IO, inputs are never modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BgMethod",
    "Gather",
    "NormFirst",
    "SamsScores",
    "SeedingIndex",
    "Uncovered",
    "argmax_seed",
    "precompute_superpixels",
    "sams_refine",
    "sams_scores",
    "sams_seed",
]

ArrayLike = Union[np.ndarray, torch.Tensor]
NormFirst = Union[bool, Literal["double_norm", "no_norm"]]
Gather = Literal["mean", "sum"]
BgMethod = Literal["pow", "thresh", "alpha_bg", "no_bg"]
Uncovered = Literal["background", "argmax"]

MMNORM_EPS = 1e-7  # SPEC notation: (v - min) / (max - min + 1e-7)
_GATHER_MODES = ("mean", "sum")
_BG_METHODS = ("pow", "thresh", "alpha_bg", "no_bg")
_UNCOVERED_MODES = ("background", "argmax")


# ----------------------------------------------------------------------------------------------------------------
# small helpers


def _as_tensor(x: ArrayLike, device: Optional[torch.device] = None) -> torch.Tensor:
    """A torch view of ``x`` (no copy for a writeable, positively strided numpy array), moved to ``device``."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if not arr.flags.writeable or any(s < 0 for s in arr.strides):
            arr = np.array(arr, order="C", copy=True)
        t = torch.from_numpy(arr)
    return t if device is None else t.to(device)


def _float_cam(cam: ArrayLike) -> torch.Tensor:
    """``cam`` as a floating tensor: floating dtypes are kept (Appendix C), anything else becomes float32."""
    t = _as_tensor(cam)
    if t.ndim != 3:
        raise ValueError(f"cam must be P×h×w, got shape {tuple(t.shape)}")
    return t if t.is_floating_point() else t.to(torch.float32)


def _resize(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a ``C×h×w`` map to ``size`` (``align_corners=False``; SPEC notation); no-op if equal."""
    if tuple(cam.shape[-2:]) == tuple(size):
        return cam
    if cam.shape[0] == 0:
        return cam.new_zeros((0, *size))
    return F.interpolate(cam[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def _mmnorm(x: torch.Tensor, dim: int) -> torch.Tensor:
    """SPEC notation ``mmnorm``: clamp below at 0, then ``(v − min) / (max − min + 1e-7)`` along ``dim``."""
    x = x.clamp(min=0)
    lo = x.amin(dim=dim, keepdim=True)
    hi = x.amax(dim=dim, keepdim=True)
    return (x - lo) / (hi - lo + MMNORM_EPS)


def _fg_cls_tensor(fg_cls: Union[Sequence[int], ArrayLike], device: torch.device) -> torch.Tensor:
    """Positive classes (0-based) as an int64 tensor, checked so that ``c + 1`` fits a uint8 label."""
    if isinstance(fg_cls, torch.Tensor):
        t = fg_cls.to(device=device, dtype=torch.int64).reshape(-1)
    else:
        t = torch.as_tensor(np.asarray(fg_cls, dtype=np.int64).reshape(-1), device=device)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > 253):
        raise ValueError(f"fg_cls must be 0-based class ids in [0, 253], got {t.tolist()}")
    return t


def _label_lut(fg: torch.Tensor) -> torch.Tensor:
    """Score-row index → label id: row 0 → 0 (background), row k → ``fg_cls[k−1] + 1`` (SPEC §3)."""
    return torch.cat([fg.new_zeros(1), fg + 1])


def _background_row(
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


def _output(x: torch.Tensor, like: ArrayLike) -> ArrayLike:
    """Return ``x`` as numpy when ``like`` is numpy, else as a tensor (on the computing device)."""
    return x if isinstance(like, torch.Tensor) else x.cpu().numpy()


# ----------------------------------------------------------------------------------------------------------------
# atom decomposition of a mask stack


@dataclass(frozen=True, eq=False)
class SeedingIndex:
    """Atom decomposition of one image's quasi-superpixels, for fast SAMS (SPEC §8, §13 item 18).

    An *atom* is a maximal set of pixels covered by exactly the same set of masks (pixels covered by no mask form
    one atom with an empty membership row). The decomposition is exact: ``masks[k] == membership[atom_map, k]``.

    Attributes:
        atom_map: ``H×W`` int32, the atom id of every pixel.
        membership: ``A×S`` bool, ``membership[a, k]`` is True when atom ``a`` lies inside mask ``k``.
        atom_area: ``A`` int64, pixel count per atom.
        levels: ``S`` int64, the superpixel levels (0 subpart, 1 part, 2 whole; SPEC §7).

    Atom ids are canonical (sorted by their membership bit pattern), so equal mask stacks give equal indexes.
    Size on a VOC image: ``A`` is a few hundred, so about ``4·H·W`` bytes for the map plus a few kB — a lossless
    and ~``S/4`` times smaller stand-in for the ``S×H×W`` bool stack (:meth:`masks` rebuilds it).
    Only plain numpy arrays: ``np.savez(path, **index.to_arrays())`` and
    ``SeedingIndex.from_arrays(np.load(path, allow_pickle=False))`` round-trip without pickle.
    """

    atom_map: np.ndarray
    membership: np.ndarray
    atom_area: np.ndarray
    levels: np.ndarray

    def __post_init__(self) -> None:
        if self.atom_map.ndim != 2 or self.atom_map.dtype != np.int32:
            raise ValueError(f"atom_map must be H×W int32, got {self.atom_map.shape} {self.atom_map.dtype}")
        if self.membership.ndim != 2 or self.membership.dtype != np.bool_:
            raise ValueError(f"membership must be A×S bool, got {self.membership.shape} {self.membership.dtype}")
        a, s = self.membership.shape
        if self.atom_area.shape != (a,) or self.atom_area.dtype != np.int64:
            raise ValueError(f"atom_area must be ({a},) int64, got {self.atom_area.shape} {self.atom_area.dtype}")
        if self.levels.shape != (s,) or self.levels.dtype != np.int64:
            raise ValueError(f"levels must be ({s},) int64, got {self.levels.shape} {self.levels.dtype}")
        if int(self.atom_area.sum()) != self.atom_map.size:
            raise ValueError("atom_area does not sum to the number of pixels")
        if self.atom_map.size and (int(self.atom_map.min()) < 0 or int(self.atom_map.max()) >= a):
            raise ValueError(f"atom_map holds ids outside [0, {a})")

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return (int(self.atom_map.shape[0]), int(self.atom_map.shape[1]))

    @property
    def num_masks(self) -> int:
        return int(self.membership.shape[1])

    @property
    def num_atoms(self) -> int:
        return int(self.membership.shape[0])

    def mask_areas(self) -> np.ndarray:
        """``S`` int64: ``|M_k|`` for every mask."""
        return self.atom_area @ self.membership.astype(np.int64)

    def masks(self) -> np.ndarray:
        """Rebuild the ``S×H×W`` bool mask stack (exact)."""
        return np.ascontiguousarray(np.moveaxis(self.membership[self.atom_map], -1, 0))

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The four arrays by ``prefix`` + field name (for ``np.savez``; no pickle needed)."""
        return {
            prefix + "atom_map": self.atom_map,
            prefix + "membership": self.membership,
            prefix + "atom_area": self.atom_area,
            prefix + "levels": self.levels,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> SeedingIndex:
        """Inverse of :meth:`to_arrays` (``prefix`` allows several indexes in one ``.npz``)."""
        return cls(
            atom_map=np.asarray(arrays[prefix + "atom_map"], dtype=np.int32),
            membership=np.asarray(arrays[prefix + "membership"], dtype=np.bool_),
            atom_area=np.asarray(arrays[prefix + "atom_area"], dtype=np.int64),
            levels=np.asarray(arrays[prefix + "levels"], dtype=np.int64),
        )


@dataclass(frozen=True, eq=False)
class _Atoms:
    """Torch form of a :class:`SeedingIndex` on the computing device (internal)."""

    atom_map: torch.Tensor  # (H*W,) int64
    membership: torch.Tensor  # (A, S) bool
    atom_area: torch.Tensor  # (A,) int64
    levels: torch.Tensor  # (S,) int64
    shape: tuple[int, int]

    def mask_areas(self) -> torch.Tensor:
        return self.atom_area @ self.membership.to(torch.int64)


def _unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(rows, dim=0, return_inverse=True)`` for an ``N×K`` int64 matrix, by stable sorts per column.

    Rows come out in lexicographic order (signed int64 per column). Much faster than ``unique_dim`` on CPU.
    """
    n, k = rows.shape
    perm = torch.arange(n, device=rows.device)
    for j in reversed(range(k)):
        perm = perm[torch.sort(rows[perm, j], stable=True).indices]
    ordered = rows[perm]
    new = torch.ones(n, dtype=torch.bool, device=rows.device)
    if n > 1:
        new[1:] = (ordered[1:] != ordered[:-1]).any(dim=1)
    inverse = torch.empty(n, dtype=torch.int64, device=rows.device)
    inverse[perm] = torch.cumsum(new, dim=0) - 1
    return ordered[new], inverse


def _build_atoms(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Atom decomposition of an ``S×H×W`` mask stack: ``(atom_map (H*W,) int64, membership (A,S), area (A,))``.

    Each pixel's membership set is packed into bits (byte ``k >> 3``, bit ``k & 7`` for mask ``k``); pixels equal
    to their left neighbour in raster order form runs; only the run codes (a few thousand rows instead of ``H·W``)
    are uniqued, and the run ids are expanded back to pixels. Device-agnostic torch.
    """
    s, h, w = masks.shape
    hw = h * w
    dev = masks.device
    flat = masks.reshape(s, hw)
    if flat.dtype != torch.bool:
        flat = flat != 0
    u8 = flat.view(torch.uint8)
    nb = max(1, (s + 7) // 8)
    packed = torch.zeros((nb, hw), dtype=torch.uint8, device=dev)
    for k in range(s):  # bits are disjoint, so adding 2^b is setting bit b (one fused kernel per mask)
        packed[k >> 3].add_(u8[k], alpha=1 << (k & 7))
    change = torch.ones(hw, dtype=torch.bool, device=dev)
    if hw > 1:
        change[1:] = packed[0, 1:] != packed[0, :-1]
        for j in range(1, nb):
            change[1:] |= packed[j, 1:] != packed[j, :-1]
    starts = change.nonzero().squeeze(1)
    nbytes = -(-nb // 8) * 8  # whole int64 words
    run_bytes = torch.zeros((starts.numel(), nbytes), dtype=torch.uint8, device=dev)
    run_bytes[:, :nb] = packed[:, starts].T
    uniq, run_atom = _unique_rows(run_bytes.view(torch.int64))
    run_len = torch.diff(starts, append=starts.new_full((1,), hw))
    atom_map = torch.repeat_interleave(run_atom, run_len, output_size=hw)
    n_atoms = uniq.shape[0]
    atom_area = torch.zeros(n_atoms, dtype=torch.int64, device=dev).index_add_(0, run_atom, run_len)
    ubytes = uniq.contiguous().view(torch.uint8)  # (A, nbytes)
    bits = (ubytes[:, :, None] >> torch.arange(8, dtype=torch.uint8, device=dev)) & 1
    membership = bits.reshape(n_atoms, nbytes * 8)[:, :s].to(torch.bool)
    return atom_map, membership, atom_area


def _levels_tensor(levels: Union[Sequence[int], ArrayLike], s: int, device: torch.device) -> torch.Tensor:
    lv = levels.to(device=device, dtype=torch.int64) if isinstance(levels, torch.Tensor) else torch.as_tensor(
        np.asarray(levels, dtype=np.int64), device=device
    )
    lv = lv.reshape(-1)
    if lv.numel() != s:
        raise ValueError(f"levels has {lv.numel()} entries for {s} masks")
    return lv


def _masks_tensor(masks: ArrayLike, device: torch.device) -> torch.Tensor:
    m = _as_tensor(masks, device)
    if m.ndim != 3:
        raise ValueError(f"masks must be S×H×W, got shape {tuple(m.shape)}")
    return m if m.dtype == torch.bool else m != 0


def precompute_superpixels(masks: ArrayLike, levels: Union[Sequence[int], ArrayLike]) -> SeedingIndex:
    """Atom decomposition of one image's quasi-superpixels (``S×H×W`` bool masks + ``S`` levels; SPEC §8).

    Costs about one pass over the masks; reuse the result with ``sams_seed(..., precomputed=index)`` for every
    CAM and hyper-parameter of that image. Runs on the masks' device; the result is numpy.
    """
    m = _masks_tensor(masks, None)
    lv = _levels_tensor(levels, m.shape[0], m.device)
    atom_map, membership, atom_area = _build_atoms(m)
    h, w = int(m.shape[1]), int(m.shape[2])
    return SeedingIndex(
        atom_map=atom_map.reshape(h, w).to(torch.int32).cpu().numpy(),
        membership=membership.cpu().numpy(),
        atom_area=atom_area.cpu().numpy().astype(np.int64),
        levels=lv.cpu().numpy().astype(np.int64),
    )


def _atoms_for(
    masks: Optional[ArrayLike],
    levels: Optional[Union[Sequence[int], ArrayLike]],
    precomputed: Optional[SeedingIndex],
    device: torch.device,
) -> _Atoms:
    """The atoms on ``device``: from ``precomputed`` when given, else built from ``masks``."""
    if precomputed is not None:
        if levels is not None:
            lv = np.asarray(levels.cpu() if isinstance(levels, torch.Tensor) else levels, dtype=np.int64).reshape(-1)
            if not np.array_equal(lv, precomputed.levels):
                raise ValueError("levels differ from precomputed.levels")
        if masks is not None and tuple(masks.shape) != (precomputed.num_masks, *precomputed.shape):
            raise ValueError(
                f"masks shape {tuple(masks.shape)} does not match the precomputed index "
                f"{(precomputed.num_masks, *precomputed.shape)}"
            )
        return _Atoms(
            atom_map=_as_tensor(precomputed.atom_map.reshape(-1)).to(device=device, dtype=torch.int64),
            membership=_as_tensor(precomputed.membership, device),
            atom_area=_as_tensor(precomputed.atom_area, device),
            levels=_as_tensor(precomputed.levels, device),
            shape=precomputed.shape,
        )
    if masks is None or levels is None:
        raise ValueError("give masks and levels, or precomputed=")
    m = _masks_tensor(masks, device)
    lv = _levels_tensor(levels, m.shape[0], device)
    atom_map, membership, atom_area = _build_atoms(m)
    return _Atoms(atom_map, membership, atom_area, lv, (int(m.shape[1]), int(m.shape[2])))


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


def _gather(values: torch.Tensor, atoms: _Atoms, areas: torch.Tensor, how: str, clamp: bool = False) -> torch.Tensor:
    """Per-superpixel mean (or sum) of ``values`` (``C×HW``) → ``C×S`` in ``values``' dtype.

    Accumulated in float64: per-atom sums (one ``index_add`` over the pixels), then ``@ membership``, then
    ``/ area``, then cast back. ``clamp=True`` clamps the values at 0 first (exact, so done after the cast).
    """
    c = values.shape[0]
    v = values.to(torch.float64)
    if clamp:
        v = v.clamp_(min=0) if v is not values else v.clamp(min=0)
    acc = torch.zeros((c, atoms.membership.shape[0]), dtype=torch.float64, device=values.device)
    acc.index_add_(1, atoms.atom_map, v)
    sums = acc @ atoms.membership.to(torch.float64)
    if how == "mean":
        sums = sums / areas.to(torch.float64)
    return sums.to(values.dtype)


def _sams_core(
    cam: ArrayLike,
    fg_cls: Union[Sequence[int], ArrayLike],
    atoms: _Atoms,
    bg_power: float,
    norm_first: NormFirst,
    gather: str,
    bg_method: str,
    bg_value: Optional[float],
) -> _Core:
    """SPEC §8 steps 1–7 on the atoms (shared by :func:`sams_seed` and :func:`sams_scores`)."""
    x = _float_cam(cam)
    dev = x.device
    fg = _fg_cls_tensor(fg_cls, dev)
    p = int(fg.numel())
    want = p + 1 if bg_method == "alpha_bg" else p
    if x.shape[0] != want:
        raise ValueError(
            f"cam has {x.shape[0]} channels, expected {want} for {p} positive classes"
            + (" (bg_method='alpha_bg' needs the background channel first)" if bg_method == "alpha_bg" else "")
        )
    h, w = atoms.shape
    x = _resize(x, (h, w)).reshape(x.shape[0], h * w)
    areas = atoms.mask_areas()
    s = int(areas.numel())
    if s and int(areas.min()) == 0:
        raise ValueError(f"mask {int(torch.argmin(areas))} is empty: SAMS needs non-empty superpixels")

    # steps 2–4: evidence, gather, normalisation across superpixels
    if s == 0:  # no superpixel at all: nothing to score, every pixel is uncovered
        q = x.new_zeros((x.shape[0], 0))
    elif norm_first == "no_norm":
        q = _gather(x, atoms, areas, gather)
    elif norm_first == "double_norm":
        q = _mmnorm(_gather(_mmnorm(x, dim=1), atoms, areas, gather), dim=1)
    elif norm_first:  # True: clamp per pixel, gather, min-max across superpixels (the reference rule)
        q = _mmnorm(_gather(x, atoms, areas, gather, clamp=True), dim=1)
    else:  # False: gather the raw CAM, then clamp + min-max across superpixels
        q = _mmnorm(_gather(x, atoms, areas, gather), dim=1)

    # step 5: background row
    if bg_method == "alpha_bg":
        scores = torch.cat([(q[:1] ** bg_power), q[1:]], dim=0)
    else:
        scores = torch.cat([_background_row(q, bg_method, bg_power, bg_value)[None], q], dim=0)

    # step 6: argmax (first maximum wins) and confidence
    lut = _label_lut(fg)
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
        fg = x if norm_first == "no_norm" else _mmnorm(x, dim=1)
        stack = torch.cat([_background_row(fg, bg_method, bg_power, bg_value)[None], fg], dim=0)
    return core.lut[torch.argmax(stack, dim=0)]


def _paint(core: _Core, atoms: _Atoms, fill: Optional[torch.Tensor]) -> torch.Tensor:
    """SPEC §8 steps 7–8: per atom, the label of the last mask in paint order containing it; ``H×W`` uint8."""
    s = int(core.order.numel())
    dev = core.order.device
    n_atoms = int(atoms.membership.shape[0])
    if s:
        rank = torch.empty(s, dtype=torch.int64, device=dev)
        rank[core.order] = torch.arange(1, s + 1, device=dev)
        top = (atoms.membership.to(torch.int64) * rank[None]).amax(dim=1)  # 0 = atom covered by no mask
        painted_labels = core.labels[core.order]
        atom_label = torch.where(top > 0, painted_labels[(top - 1).clamp(min=0)], 0)
    else:
        top = torch.zeros(n_atoms, dtype=torch.int64, device=dev)
        atom_label = torch.zeros(n_atoms, dtype=torch.int64, device=dev)
    seed = torch.take(atom_label.to(torch.uint8), atoms.atom_map)
    if fill is not None:
        uncovered = torch.take(top == 0, atoms.atom_map)
        seed = torch.where(uncovered, fill.to(torch.uint8), seed)
    return seed.reshape(atoms.shape)


def sams_scores(
    cam: ArrayLike,
    fg_cls: Union[Sequence[int], ArrayLike],
    masks: Optional[ArrayLike],
    levels: Optional[Union[Sequence[int], ArrayLike]],
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
    x = _as_tensor(cam)
    atoms = _atoms_for(masks, levels, precomputed, x.device)
    core = _sams_core(x, fg_cls, atoms, bg_power, norm_first, gather, bg_method, bg_value)
    return SamsScores(
        scores=_output(core.scores.T.contiguous(), cam),
        labels=_output(core.labels, cam),
        conf=_output(core.conf, cam),
        paint_order=_output(core.order, cam),
    )


def sams_seed(
    cam: ArrayLike,
    fg_cls: Union[Sequence[int], ArrayLike],
    masks: Optional[ArrayLike],
    levels: Optional[Union[Sequence[int], ArrayLike]],
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
        masks: ``S×H×W`` bool quasi-superpixels in SAM output order (may be ``None`` with ``precomputed``).
        levels: ``S`` ints (0 subpart, 1 part, 2 whole); may be ``None`` with ``precomputed``.
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
        precomputed: a :class:`SeedingIndex` of these masks (from :func:`precompute_superpixels`); gives the same
            result as passing the masks, faster.

    Returns:
        ``H×W`` uint8 seed, numpy if ``cam`` is numpy, else a tensor on ``cam``'s device.

    A single superpixel, or a class with the same mean in every superpixel, normalises that class to 0
    everywhere (SPEC §13 item 17), so with ``pow`` the background (score 1) wins. An empty mask is an error.
    """
    _check_options(norm_first, gather, bg_method, bg_value, uncovered)
    x = _as_tensor(cam)
    atoms = _atoms_for(masks, levels, precomputed, x.device)
    core = _sams_core(x, fg_cls, atoms, bg_power, norm_first, gather, bg_method, bg_value)
    fill = _pixel_labels(core, norm_first, bg_method, bg_power, bg_value) if uncovered == "argmax" else None
    return _output(_paint(core, atoms, fill), cam)


def sams_refine(
    prob: ArrayLike,
    fg_cls: Union[Sequence[int], ArrayLike],
    masks: Optional[ArrayLike],
    levels: Optional[Union[Sequence[int], ArrayLike]],
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
    SPEC §13 item 16). SPEC §13 item 9: the reference searched ``alpha`` on the evaluation split's ground truth.
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


# ----------------------------------------------------------------------------------------------------------------
# plain argmax seeds


def argmax_seed(
    cam: ArrayLike,
    fg_cls: Union[Sequence[int], ArrayLike],
    size: tuple[int, int],
    bg_power: float = 1.0,
) -> ArrayLike:
    """Plain CAM → seed (SPEC §3 "Downstream conversion", §9): ``H×W`` uint8, 0 bg, ``c+1`` class ``c``.

    Resize to ``size = (H, W)`` first (bilinear, ``align_corners=False``), then clamp at 0 and min-max per class
    over ``H×W`` (+1e-7), ``bg = (1 − max_c score_c)^bg_power``, argmax over ``[bg, classes]`` (first maximum
    wins), row 0 → 0 and row ``k`` → ``fg_cls[k−1] + 1``. numpy or torch in; the output type follows ``cam``.
    """
    x = _float_cam(cam)
    fg = _fg_cls_tensor(fg_cls, x.device)
    if x.shape[0] != fg.numel():
        raise ValueError(f"cam has {x.shape[0]} channels for {fg.numel()} positive classes")
    h, w = int(size[0]), int(size[1])
    score = _mmnorm(_resize(x, (h, w)).reshape(x.shape[0], h * w), dim=1)
    stack = torch.cat([_background_row(score, "pow", bg_power, None)[None], score], dim=0)
    seed = _label_lut(fg)[torch.argmax(stack, dim=0)].to(torch.uint8).reshape(h, w)
    return _output(seed, cam)
