"""The atom index of one image's quasi-superpixels: what SAMS seeds with (SPEC §8, §13 item 18).

The pixels are grouped into *atoms*, maximal sets of pixels covered by exactly the same set of masks
(:func:`tag2mask.superpixels.atoms.compute_atoms`, the decomposition every :class:`~tag2mask.superpixels.Superpixels`
stores). A :class:`SeedingIndex` holds the ``H×W`` atom map, the ``A×S`` atom/mask membership, the atom areas and
the levels (``A`` is a few hundred on a VOC image, against ``H·W ≈ 190k`` pixels). It depends only on the masks,
so it is built once per image (:func:`precompute_superpixels`, or :meth:`SeedingIndex.from_superpixels` from a
stored ``Superpixels``) and reused for every CAM and hyper-parameter; :func:`atoms_on` derives, and caches on the
index, the tensors SAMS works with on one device (:class:`DeviceAtoms`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from tag2mask.maps import as_tensor
from tag2mask.superpixels.atoms import as_bool_masks, compute_atoms

if TYPE_CHECKING:  # only for annotations: importing it at run time would pull in pycocotools / segment_anything
    from tag2mask.superpixels.container import Superpixels

__all__ = ["DeviceAtoms", "SeedingIndex", "accumulation_dtype", "atoms_on", "index_for", "is_superpixels",
           "precompute_superpixels"]

ArrayLike = Union[np.ndarray, torch.Tensor]
MasksLike = Union[np.ndarray, torch.Tensor, "Superpixels"]  # an S×H×W mask stack, or a Superpixels


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """The dtype per-superpixel sums accumulate in: float64, except on devices without it (Apple MPS: float32)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


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

    Built by :func:`precompute_superpixels` (with :func:`tag2mask.superpixels.atoms.compute_atoms`, the same
    decomposition every :class:`~tag2mask.superpixels.Superpixels` stores) or taken as is from a ``Superpixels``
    by :meth:`from_superpixels`. Atom ids from ``compute_atoms`` are canonical (sorted by their membership bit
    pattern), so equal mask stacks give equal indexes; SAMS itself does not depend on the numbering.
    Size on a VOC image: ``A`` is a few hundred, so about ``4·H·W`` bytes for the map plus a few kB — a lossless
    and ~``S/4`` times smaller stand-in for the ``S×H×W`` bool stack (:meth:`masks` rebuilds it).
    Only plain numpy arrays: ``np.savez(path, **index.to_arrays())`` and
    ``SeedingIndex.from_arrays(np.load(path, allow_pickle=False))`` round-trip without pickle.

    The index is treated as immutable: the tensors SAMS derives from it (per device) are cached on it, so do not
    modify its arrays in place.
    """

    atom_map: np.ndarray
    membership: np.ndarray
    atom_area: np.ndarray
    levels: np.ndarray
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

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

    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in ("atom_map", "membership", "atom_area", "levels")}  # no cache

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_cache", {})

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

    @classmethod
    def from_superpixels(cls, sp: Superpixels) -> SeedingIndex:
        """The index of a :class:`tag2mask.superpixels.Superpixels`, from the atoms it stores (``sp.atoms``,
        ``sp.atom_membership``, ``sp.atom_area``, ``sp.levels``); the masks are not decoded, the arrays are not
        copied. Equivalent to ``precompute_superpixels(sp.masks, sp.levels)`` up to the atom numbering."""
        if not is_superpixels(sp):
            raise TypeError(f"expected a tag2mask.superpixels.Superpixels, got {type(sp).__name__}")
        return cls(
            atom_map=np.asarray(sp.atoms, dtype=np.int32),
            membership=np.asarray(sp.atom_membership, dtype=np.bool_),
            atom_area=np.asarray(sp.atom_area, dtype=np.int64),
            levels=_vector_int64(sp.levels),
        )


def _vector_int64(x: Any) -> np.ndarray:
    """``x`` as a 1-D int64 array (the same object when it already is one)."""
    a = np.asarray(x, dtype=np.int64)
    return a if a.ndim == 1 else a.reshape(-1)


def is_superpixels(obj: object) -> bool:
    """Duck-typed check for a :class:`tag2mask.superpixels.Superpixels` (no import of that module, which pulls in
    pycocotools and segment_anything, and no import cycle)."""
    return not isinstance(obj, (np.ndarray, torch.Tensor)) and all(
        hasattr(obj, a) for a in ("atoms", "atom_membership", "atom_area", "levels", "rle_counts")
    )


# Superpixels → its SeedingIndex, so that repeated calls on one Superpixels reuse the index and its cached tensors.
_SP_INDEX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _index_of_superpixels(sp: Any) -> SeedingIndex:
    try:
        index = _SP_INDEX.get(sp)
    except TypeError:  # not hashable / weak-referenceable: no caching
        return SeedingIndex.from_superpixels(sp)
    if index is None or not (
        index.atom_map is sp.atoms
        and index.membership is sp.atom_membership
        and index.atom_area is sp.atom_area
        and index.levels is sp.levels
    ):  # first use, or the Superpixels' arrays were replaced
        index = SeedingIndex.from_superpixels(sp)
        try:
            _SP_INDEX[sp] = index
        except TypeError:
            pass
    return index


@dataclass(frozen=True, eq=False)
class DeviceAtoms:
    """A :class:`SeedingIndex` in the form SAMS uses on one device (internal; cached on the index)."""

    shape: tuple[int, int]
    levels: torch.Tensor  # (S,) int64
    membership_acc: torch.Tensor  # (A, S) in the accumulation dtype (float64; float32 on MPS), for the per-mask sums
    membership_i64: torch.Tensor  # (A, S) int64, for painting
    mask_areas: torch.Tensor  # (S,) int64
    empty_mask: int  # index of the first empty mask, -1 if none
    # CPU: raster-order runs of equal atom ids (sums by np.add.reduceat, painting by np.repeat)
    atom_map_np: Optional[np.ndarray]  # (H, W) int32
    run_starts: Optional[np.ndarray]  # (R,) int64 (numpy)
    run_len: Optional[np.ndarray]  # (R,) int64 (numpy)
    run_atom: Optional[torch.Tensor]  # (R,) int64
    # other devices: the flat map for index_add / take
    atom_map_flat: Optional[torch.Tensor]  # (H*W,) int64

    @property
    def num_atoms(self) -> int:
        return int(self.membership_acc.shape[0])


# On the CPU, sum and paint through the atom map's runs with numpy (faster); False selects the generic torch form
# used on other devices (index_add / take), e.g. to test it without a GPU.
CPU_RUNS = True


def atoms_on(index: SeedingIndex, device: torch.device) -> DeviceAtoms:
    """The (cached) device form of ``index``."""
    runs = device.type == "cpu" and CPU_RUNS
    key = (device.type, device.index, runs)
    cached = index._cache.get(key)
    if cached is not None:
        return cached
    areas = index.mask_areas()
    empty = np.flatnonzero(areas == 0)
    membership = as_tensor(index.membership, device)
    common = dict(
        shape=index.shape,
        levels=as_tensor(index.levels, device),
        membership_acc=membership.to(accumulation_dtype(membership.device)),
        membership_i64=membership.to(torch.int64),
        mask_areas=torch.from_numpy(areas).to(device),
        empty_mask=int(empty[0]) if empty.size else -1,
    )
    flat = index.atom_map.reshape(-1)
    if runs:
        change = np.empty(flat.shape, dtype=bool)
        change[:1] = True
        np.not_equal(flat[1:], flat[:-1], out=change[1:])
        starts = np.flatnonzero(change)
        atoms = DeviceAtoms(
            **common,
            atom_map_np=np.ascontiguousarray(index.atom_map),
            run_starts=starts,
            run_len=np.diff(starts, append=flat.size),
            run_atom=torch.from_numpy(flat[starts].astype(np.int64)),
            atom_map_flat=None,
        )
    else:
        atoms = DeviceAtoms(
            **common,
            atom_map_np=None,
            run_starts=None,
            run_len=None,
            run_atom=None,
            atom_map_flat=as_tensor(flat).to(device=device, dtype=torch.int64),
        )
    index._cache[key] = atoms
    return atoms


def _levels_array(levels: Union[Sequence[int], ArrayLike], s: int) -> np.ndarray:
    if levels is None:
        raise ValueError("levels are required with a mask stack")
    lv = np.asarray(levels.detach().cpu() if isinstance(levels, torch.Tensor) else levels, dtype=np.int64)
    lv = lv.reshape(-1)
    if lv.size != s:
        raise ValueError(f"levels has {lv.size} entries for {s} masks")
    return lv


def precompute_superpixels(masks: MasksLike, levels: Union[Sequence[int], ArrayLike]) -> SeedingIndex:
    """Atom decomposition of one image's quasi-superpixels (``S×H×W`` bool masks + ``S`` levels; SPEC §8).

    Computed by :func:`tag2mask.superpixels.atoms.compute_atoms` (numpy, on the CPU; torch masks on any device are
    copied there). Costs about one pass over the masks; reuse the result with ``sams_seed(..., precomputed=index)``
    for every CAM and hyper-parameter of that image. ``masks`` may also be a
    :class:`~tag2mask.superpixels.Superpixels` (``levels`` then ``None`` or equal to its levels): its stored atoms
    are used, see :meth:`SeedingIndex.from_superpixels`.
    """
    if is_superpixels(masks):
        return index_for(masks, levels, None)
    m = as_bool_masks(masks)
    lv = _levels_array(levels, m.shape[0])
    dec = compute_atoms(m)
    return SeedingIndex(atom_map=dec.atoms, membership=dec.membership, atom_area=dec.area, levels=lv)


def index_for(
    masks: Optional[MasksLike],
    levels: Optional[Union[Sequence[int], ArrayLike]],
    precomputed: Optional[SeedingIndex],
) -> SeedingIndex:
    """The index to seed with: ``precomputed``, else the atoms stored in a ``Superpixels``, else built from
    ``masks`` (checking that whatever else is given agrees with it)."""
    sp = masks if masks is not None and is_superpixels(masks) else None
    if precomputed is not None:
        index = precomputed
    elif sp is not None:
        index = _index_of_superpixels(sp)
    else:
        if masks is None or levels is None:
            raise ValueError("give masks and levels, a Superpixels, or precomputed=")
        return precompute_superpixels(masks, levels)
    if levels is not None:
        lv = np.asarray(levels.detach().cpu() if isinstance(levels, torch.Tensor) else levels, dtype=np.int64)
        if not np.array_equal(lv.reshape(-1), index.levels):
            raise ValueError(
                "levels differ from the Superpixels' levels" if precomputed is None else
                "levels differ from precomputed.levels"
            )
    if precomputed is not None and masks is not None:
        if sp is not None:
            got = (len(sp.levels), *tuple(int(v) for v in sp.size))
            same_levels = np.array_equal(np.asarray(sp.levels, dtype=np.int64).reshape(-1), index.levels)
        else:
            got, same_levels = tuple(masks.shape), True
        if got != (index.num_masks, *index.shape) or not same_levels:
            raise ValueError(
                f"masks {got} do not match the precomputed index {(index.num_masks, *index.shape)}"
                + ("" if same_levels else " (levels differ)")
            )
    return index
