"""DeepLabV3+ from segmentation-models-pytorch behind the :class:`~tag2mask.segmenters.base.Segmenter` interface.

The network is smp's ``DeepLabV3Plus`` (ASPP with rates 12/24/36, separable convolutions, 4× decoder upsampling)
on a ResNet encoder, built without downloading anything (``encoder_weights=None``). ImageNet weights for the
encoder come from torchvision's own ResNet files (``resnet101-63fe2227.pth`` …), found by
:func:`tag2mask.models.weights.resolve_weight` in the tag2mask weights folder or torch hub's cache; smp's ResNet
encoders are torchvision ResNets, so the file loads key for key (its ``fc`` classifier is dropped).

Loss: pixel cross-entropy with ``ignore_index=255``, summed over the labelled pixels and divided by the number of
*all* pixels, ignored and padded ones included: MMSeg's ``CrossEntropyLoss`` with its default ``avg_non_ignore=False``.
Other differences from MMSeg's DeepLabV3+ (on purpose: we use smp's network as it is): a 256-channel decoder
(MMSeg: 512), ASPP dropout 0.5 (MMSeg: 0.1 before the classifier), torchvision's ResNet (MMSeg: ResNetV1c with a
deep stem), no auxiliary FCN head.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tag2mask.errors import ConfigError, Tag2MaskError
from tag2mask.segmenters.base import IGNORE_INDEX, STAGE2_MISSING, Segmenter

def _smp() -> Any:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise Tag2MaskError(STAGE2_MISSING) from None
    return smp


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike[str]) -> None:
    """Copy a torchvision-layout ResNet state dict into smp's ResNet ``encoder``; every encoder tensor must match."""
    from tag2mask.models.checkpoint import read_state_dict

    state = {k: v for k, v in read_state_dict(path, "ResNet backbone").items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    unexpected = [k for k in state if k not in own]  # e.g. the extra blocks of a deeper ResNet
    if missing or wrong or unexpected:
        detail = ", ".join((missing + wrong + unexpected)[:4])
        raise Tag2MaskError(
            f"weight file {path} does not fit the {type(encoder).__name__} encoder: {len(missing)} tensors "
            f"missing, {len(wrong)} of another shape, {len(unexpected)} unexpected (first: {detail}); "
            "is it the torchvision file of the same ResNet depth?"
        )
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)


class DeepLabV3PlusSegmenter(Segmenter):
    """smp ``DeepLabV3Plus``; ``num_classes`` includes the background."""

    def __init__(self, num_classes: int, encoder: str = "resnet101", output_stride: int = 8) -> None:
        super().__init__()
        smp = _smp()
        self.num_classes = int(num_classes)
        try:
            self.net = smp.DeepLabV3Plus(
                encoder_name=encoder, encoder_weights=None, encoder_output_stride=output_stride,
                classes=self.num_classes,
            )
        except KeyError:
            raise ConfigError(f"segmentation-models-pytorch has no encoder {encoder!r} (e.g. resnet101, resnet50, "
                              "resnet18; see smp's encoder list)") from None

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``B×K×H×W`` class logits at the input size (H and W multiples of 32 are needed by smp; see inference)."""
        return self.net(images)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.logits(images)
        per_pixel = F.cross_entropy(logits.float(), labels.long(), ignore_index=IGNORE_INDEX, reduction="none")
        return per_pixel.sum() / labels.numel()  # ignored pixels count 0 in the sum and 1 in the mean (MMSeg)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).float()

    def to_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores.float(), dim=1)

    def param_groups(self, lr: float, weight_decay: float, backbone_lr_mult: float) -> list[dict]:
        backbone = list(self.net.encoder.parameters())
        ids = {id(p) for p in backbone}
        head = [p for p in self.parameters() if id(p) not in ids]
        groups = [
            {"params": backbone, "lr": lr * backbone_lr_mult, "weight_decay": weight_decay, "lr_mult": backbone_lr_mult},
            {"params": head, "lr": lr, "weight_decay": weight_decay, "lr_mult": 1.0},
        ]
        return [g for g in groups if g["params"]]


def build_deeplabv3plus(
    num_classes: int, encoder: str = "resnet101", weights: str | os.PathLike[str] | None = None, output_stride: int = 8
) -> DeepLabV3PlusSegmenter:
    """DeepLabV3+ with an smp ResNet ``encoder``; ``weights``: None (random init), a known name or a file path."""
    from tag2mask.models.weights import resolve_weight

    path = resolve_weight(weights, "backbone") if weights is not None else None  # a missing file fails before building
    model = DeepLabV3PlusSegmenter(num_classes, encoder, output_stride)
    if path is not None:
        load_encoder_weights(model.net.encoder, path)
    return model
