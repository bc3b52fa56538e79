"""Parameter sets of the quasi-superpixel generator (SPEC §7.2). No torch import: the config layer reads them."""

from __future__ import annotations

import copy
from typing import Any

from tag2mask.errors import ConfigError

DEFAULT_PRESET = "l2_nmsf_s1_rsw3"

# The generator's parameters; the names equal the keys of tag2mask.config.SuperpixelsConfig (minus source/preset).
PARAM_NAMES: tuple[str, ...] = (
    "points_per_side",
    "points_per_batch",
    "crop_n_layers",
    "crop_n_points_downscale_factor",
    "crop_overlap_ratio",
    "crop_nms_thresh",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "box_nms_thresh",
    "min_mask_region_area",
    "score_thresh_offset",
    "score_nms_offset",
    "stability_score_bias",
    "hierarchy_recall_thresh",
)

_L2_NMSF_S1_RSW3: dict[str, Any] = {  # SPEC §7.2
    "points_per_side": 32,
    "points_per_batch": 256,
    "crop_n_layers": 1,
    "crop_n_points_downscale_factor": 2,
    "crop_overlap_ratio": 512 / 1500,
    "crop_nms_thresh": 0.7,
    "pred_iou_thresh": 0.86,
    "stability_score_thresh": 0.92,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "min_mask_region_area": 100,
    "score_thresh_offset": [0.0, 0.0, 0.1],
    "score_nms_offset": [0.0, 0.0, 1.0],
    "stability_score_bias": [0.0, 0.0, 0.0],
    "hierarchy_recall_thresh": 0.3,
}

PRESETS: dict[str, dict[str, Any]] = {
    # The final pipeline's pattern (SPEC §7.2).
    "l2_nmsf_s1_rsw3": _L2_NMSF_S1_RSW3,
    # SAM's own defaults (SamAutomaticMaskGenerator.__init__): no crops, no min-area, no offsets, no hierarchy.
    "official_default": {
        "points_per_side": 32,
        "points_per_batch": 64,
        "crop_n_layers": 0,
        "crop_n_points_downscale_factor": 1,
        "crop_overlap_ratio": 512 / 1500,
        "crop_nms_thresh": 0.7,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        "stability_score_offset": 1.0,
        "box_nms_thresh": 0.7,
        "min_mask_region_area": 0,
        "score_thresh_offset": [0.0, 0.0, 0.0],
        "score_nms_offset": [0.0, 0.0, 0.0],
        "stability_score_bias": [0.0, 0.0, 0.0],
        "hierarchy_recall_thresh": None,
    },
    # Whole masks only: levels 0 and 1 are dropped by a -1 IoU-threshold offset (SPEC §7.2). Assumed: no s1 (+0.1)
    # and no nmsf (+1.0) offsets for level 2, no hierarchy filter (with one level it would keep everything).
    "l2_only": {
        **_L2_NMSF_S1_RSW3,
        "score_thresh_offset": [-1.0, -1.0, 0.0],
        "score_nms_offset": [0.0, 0.0, 0.0],
        "hierarchy_recall_thresh": None,
    },
    # l2_nmsf_s1_rsw3 without the hierarchy filter.
    "l2_nmsf_s1": {**_L2_NMSF_S1_RSW3, "hierarchy_recall_thresh": None},
    # l2_nmsf_s1 without crops.
    "l2_nmsf_s1_c0": {**_L2_NMSF_S1_RSW3, "hierarchy_recall_thresh": None, "crop_n_layers": 0},
}

_PER_LEVEL = ("score_thresh_offset", "score_nms_offset", "stability_score_bias")


def resolve_params(preset: str = DEFAULT_PRESET, **overrides: Any) -> dict[str, Any]:
    """The parameter set of ``preset`` with ``overrides`` applied (SPEC §7.2). Unknown names raise ConfigError."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown superpixel preset {preset!r}; choose one of {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - set(PARAM_NAMES))
    if unknown:
        raise ConfigError(f"unknown superpixel parameter(s) {unknown}; known: {list(PARAM_NAMES)}")
    params = copy.deepcopy(PRESETS[preset])
    params.update(copy.deepcopy(overrides))
    for name in _PER_LEVEL:
        values = [float(v) for v in params[name]]
        if len(values) != 3:
            raise ConfigError(f"{name} needs one value per level (0, 1, 2), got {params[name]!r}")
        params[name] = values
    if params["hierarchy_recall_thresh"] is not None:
        params["hierarchy_recall_thresh"] = float(params["hierarchy_recall_thresh"])
    return params
