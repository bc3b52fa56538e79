"""What every stage-II segmentation network looks like to tag2mask.

A :class:`Segmenter` wraps an off-the-shelf network (segmentation-models-pytorch's DeepLabV3+, Hugging Face
transformers' Mask2Former) behind three methods, so that training, prediction and refinement never need to know
which network they drive:

* :meth:`Segmenter.loss` — the network's own training loss for a batch of normalised images and label maps
  (``0`` background, ``c+1`` class ``c``, ``255`` ignore);
* :meth:`Segmenter.scores` / :meth:`Segmenter.to_probabilities` — per-pixel class scores at the input size
  (resized to the image before normalising, as MMSegmentation does) and their per-pixel probabilities, background
  channel first; :meth:`Segmenter.probabilities` is the two together;
* :meth:`Segmenter.param_groups` — the optimiser parameter groups of the network's MMSegmentation recipe
  (learning-rate multipliers, parameters without weight decay).

Images enter as ``B×3×H×W`` float tensors normalised with the ImageNet mean and standard deviation
(:func:`normalise`), as MMSegmentation's data pre-processor does for both networks.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (123.675, 116.28, 103.53)
"""ImageNet RGB mean on the 0..255 scale (MMSegmentation's ``data_preprocessor``)."""
IMAGENET_STD = (58.395, 57.12, 57.375)
"""ImageNet RGB standard deviation on the 0..255 scale."""
IGNORE_INDEX = 255
STAGE2_MISSING = 'stage II needs the optional extra: pip install -e ".[stage2]" (segmentation-models-pytorch, transformers)'


def normalise(images: torch.Tensor) -> torch.Tensor:
    """``B×3×H×W`` (or ``3×H×W``) RGB on the 0..255 scale (uint8 or float) → float32, ImageNet-normalised."""
    x = images.float()
    shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(shape)
    return (x - mean) / std


class Segmenter(nn.Module):
    """Base class of the stage-II network wrappers; see the module docstring.

    ``num_classes`` counts the background: ``1 + len(class_names)``.
    """

    num_classes: int

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss; ``forward`` so that DistributedDataParallel sees the call."""
        return self.loss(images, labels)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar training loss. ``images``: ``B×3×H×W`` normalised; ``labels``: ``B×H×W`` int64 with 255 = ignore."""
        raise NotImplementedError

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """``B×num_classes×H×W`` float32 per-pixel class scores at the input size, before normalisation: what
        MMSegmentation resizes to the image size before taking the argmax (logits, or Mask2Former's semantic scores)."""
        raise NotImplementedError

    def to_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores (``B×K×H×W``, any size) → probabilities summing to one over ``K``; the argmax is unchanged."""
        raise NotImplementedError

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``B×num_classes×H×W`` float32 class probabilities at the input size (background first, sum 1)."""
        return self.to_probabilities(self.scores(images))

    def param_groups(self, lr: float, weight_decay: float, backbone_lr_mult: float) -> list[dict]:
        """Optimiser parameter groups (each a dict with ``params``, ``lr``, ``weight_decay``)."""
        raise NotImplementedError
