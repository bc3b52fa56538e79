"""CAMs: Softmax-GradCAM on CLIP with learned prompts (SPEC §3) and class-aware attention affinity (CAA, SPEC §6)."""

from __future__ import annotations

from tag2mask.cam.affinity import (
    apply_affinity,
    box_masks,
    caa_refine,
    cam_to_score,
    class_boxes,
    merge_attention,
    propagate_affinity,
    sinkhorn_affinity,
    sinkhorn_normalise,
)
from tag2mask.cam.gradcam import CamOutput, GradCAMClip, masked_softmax

__all__ = [
    "CamOutput",
    "GradCAMClip",
    "masked_softmax",
    "apply_affinity",
    "box_masks",
    "caa_refine",
    "cam_to_score",
    "class_boxes",
    "merge_attention",
    "propagate_affinity",
    "sinkhorn_affinity",
    "sinkhorn_normalise",
]
