"""Prompt training: losses (SPEC §4).

The training loop and the learning-rate schedule (SPEC §5) live beside this package's losses.
"""

from __future__ import annotations

from tag2mask.prompt_training.losses import (
    IGNORE_INDEX,
    ScaledBCE,
    ScaledSigmoidPixelCE,
    bce_loss,
    cam_activation_loss,
    multilabel_contrastive_loss,
    scaled_bce_loss,
    sigmoid_pixel_ce_loss,
)

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
