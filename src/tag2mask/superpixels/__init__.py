"""SAM quasi-superpixels (SPEC §7): the generator, the hierarchy filter and the per-image container."""

from __future__ import annotations

from .atoms import Atoms, compute_atoms
from .container import Superpixels
from .generator import DEFAULT_PRESET, PARAM_NAMES, PRESETS, QuasiSuperpixelGenerator, resolve_params
from .hierarchy import hierarchy_filter

__all__ = [
    "Atoms",
    "DEFAULT_PRESET",
    "PARAM_NAMES",
    "PRESETS",
    "QuasiSuperpixelGenerator",
    "Superpixels",
    "compute_atoms",
    "hierarchy_filter",
    "resolve_params",
]
