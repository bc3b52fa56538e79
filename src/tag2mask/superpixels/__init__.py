"""SAM quasi-superpixels (SPEC §7): the generator, the hierarchy filter, the per-image container, and the import
of SAM-style annotations made by other tools (:mod:`tag2mask.superpixels.annotations`).

Names are re-exported lazily, so ``tag2mask.superpixels.presets`` (read by the config layer) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Atoms": "atoms",
    "compute_atoms": "atoms",
    "Superpixels": "container",
    "CpuSuperpixelGenerator": "cpu",
    "QuasiSuperpixelGenerator": "generator",
    "hierarchy_filter": "hierarchy",
    "DEFAULT_PRESET": "presets",
    "PARAM_NAMES": "presets",
    "PRESETS": "presets",
    "resolve_params": "presets",
    "find_sam_annotations": "annotations",
    "read_sam_annotations": "annotations",
    "superpixels_from_sam_annotations": "annotations",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
