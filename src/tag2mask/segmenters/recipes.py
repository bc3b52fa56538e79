"""Training and test recipes of the stage-II networks (App. G; SPEC §11.1), as typed settings.

App. G: "DeepLab V3+ batch 16, Mask2Former batch 4, 512×512 crops, 120 epochs on PASCAL VOC and 32 on MS COCO;
everything else per MMSegmentation defaults". Those defaults, written out here so that nothing hides in a
framework config:

===================  =====================================  =========================================
                     DeepLabV3+ R101 (``deeplabv3plus``)     Mask2Former Swin-B/L (``mask2former``)
===================  =====================================  =========================================
optimiser            SGD, lr 0.01, momentum 0.9, wd 5e-4     AdamW, lr 1e-4, betas (0.9, 0.999), wd 0.05
backbone lr          × 1                                     × 0.1; no decay on norms and embeddings
schedule             poly, power 0.9, floor 1e-4             poly, power 0.9, floor 0
gradient clipping    none                                    L2 norm 0.01
train pipeline       resize to (2048, 512) × U(0.5, 2.0), 512 crop (at most 75 % one class for DeepLabV3+),
                     horizontal flip, photometric distortion
test                 whole image, short side 512 (long side at most 2048), single scale
===================  =====================================  =========================================

The iteration count is ``ceil(epochs × images / batch)`` unless ``max_iter`` is set. Two places where we differ
from MMSegmentation, on purpose: DeepLabV3+ comes from segmentation-models-pytorch (a torchvision ResNet with
dilation, output stride 8 as MMSeg's "D8", and no auxiliary FCN head), and Mask2Former's random short-edge choice
among 16 sizes is drawn from the same continuous range instead. The README's Mask2Former configs of the reference
trained for 80k (VOC) / 100k (COCO) iterations at batch 4 — about 30 VOC epochs; ``max_iter=80000``
reproduces that length.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from tag2mask.config import apply_overrides, update_dataclass
from tag2mask.errors import ConfigError

NETS = ("deeplabv3plus", "mask2former")
Net = Literal["deeplabv3plus", "mask2former"]


@dataclass
class SegmenterRecipe:
    """Everything that decides a stage-II training run; change any field with ``key=value`` overrides."""

    net: Net = "deeplabv3plus"
    backbone: str = "resnet101"
    """DeepLabV3+: any segmentation-models-pytorch encoder (``resnet101``, ``resnet50``, ``resnet18``…);
    Mask2Former: ``swin-b``, ``swin-l``, ``swin-t`` or ``tiny``."""
    backbone_weights: str = "auto"
    """``auto`` (the known ImageNet file of ``backbone`` and ``pretrain``), ``none`` (train from scratch), a known
    weight name (``tag2mask info`` lists them) or a file path."""
    pretrain: Literal["in1k", "in22k"] = "in1k"
    epochs: int = 120
    max_iter: int = 0
    """0: derived from ``epochs``."""
    batch_size: int = 16
    """Global batch: split over the ranks under torchrun."""
    crop_size: int = 512
    base_size: list[int] = field(default_factory=lambda: [2048, 512])
    """Training/test resize target (long side at most, short side); ``[0, 0]`` keeps the image size."""
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    flip: bool = True
    photometric: bool = True
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    min_lr: float = 1e-4
    poly_power: float = 0.9
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-4
    backbone_lr_mult: float = 1.0
    grad_clip: float = 0.0
    """Clip the gradients' global L2 norm at this value; 0 = no clipping."""
    output_stride: int = 8
    """DeepLabV3+ only: encoder output stride (8 = MMSeg's D8, 16 = smp's default)."""
    num_queries: int = 100
    """Mask2Former only."""
    small_head: bool = False
    """Mask2Former only: a very small pixel/transformer decoder (tests, demos)."""
    amp: bool = True
    """Mixed precision (float16 autocast + gradient scaling) on CUDA; ignored on CPU."""
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 2000
    """Save ``checkpoints/iter_<n>.safetensors`` and the resume state every this many iterations; the last
    iteration's weights are ``model.safetensors``."""
    keep_resume: bool = False
    """Keep the resume state (the weights again plus the optimiser's state, about 2× the model) once the training
    has finished; by default only ``model.safetensors`` keeps the weights then."""
    val_every: int = 4000
    """Validation mIoU every this many iterations (and at the end) when the val split has ground truth; 0 = never
    (default 4000, 16000 on COCO, whose val split has 40,137 images; under torchrun the ranks share the work)."""
    val_split: str = ""
    """Split used for validation (default: the dataset's ``data.eval_split`` or ``val``)."""
    val_limit: int = 0
    """Validate on the first this many images only; 0 = all."""
    test_flip: bool = False
    test_scales: list[float] = field(default_factory=lambda: [1.0])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, width=120)


_NET_DEFAULTS: dict[str, dict[str, Any]] = {
    "deeplabv3plus": dict(backbone="resnet101", batch_size=16, optimizer="sgd", lr=0.01, min_lr=1e-4,
                          weight_decay=5e-4, backbone_lr_mult=1.0, grad_clip=0.0, cat_max_ratio=0.75),
    "mask2former": dict(backbone="swin-b", batch_size=4, optimizer="adamw", lr=1e-4, min_lr=0.0,
                        weight_decay=0.05, backbone_lr_mult=0.1, grad_clip=0.01, cat_max_ratio=1.0),
}
_EPOCHS = {"voc": 120, "coco": 32}


def default_recipe(net: str, dataset: str = "voc") -> SegmenterRecipe:
    """The App. G recipe of ``net`` for a dataset kind (``coco`` → 32 epochs; every other kind → VOC's 120).

    The synthetic demo dataset gets a CPU-sized recipe that needs no weight file: the image size kept, 64-px crops,
    and a small network trained from scratch: DeepLabV3+ on ResNet-18 at output stride 16, batch 8, 40 epochs;
    Mask2Former on the ``tiny`` Swin with a small head and 8 queries, lr 1e-3 everywhere, 160 epochs.
    """
    if net not in NETS:
        raise ConfigError(f"unknown network {net!r}; networks: {', '.join(NETS)}")
    recipe = SegmenterRecipe(net=net)  # type: ignore[arg-type]
    update_dataclass(recipe, dict(_NET_DEFAULTS[net]))
    recipe.epochs = _EPOCHS.get(dataset, 120)
    recipe.val_every = 16000 if dataset == "coco" else 4000  # MMSeg's intervals for its 160k / 40k schedules
    if dataset == "synthetic":
        recipe.base_size, recipe.crop_size, recipe.epochs, recipe.backbone_weights = [0, 0], 64, 40, "none"
        if net == "deeplabv3plus":
            recipe.backbone, recipe.output_stride, recipe.batch_size = "resnet18", 16, 8
        else:  # a from-scratch transformer learns slowly: more epochs, a larger step, no backbone slow-down
            recipe.backbone, recipe.small_head, recipe.num_queries = "tiny", True, 8
            recipe.epochs, recipe.lr, recipe.backbone_lr_mult = 160, 1e-3, 1.0
    return recipe


def load_recipe(net: str, dataset: str = "voc", overrides: list[str] | tuple[str, ...] = ()) -> SegmenterRecipe:
    """:func:`default_recipe` with ``key=value`` overrides applied and checked."""
    recipe = apply_overrides(default_recipe(net, dataset), overrides)
    if recipe.net != net:
        raise ConfigError("choose the network with --net, not net=")
    check_recipe(recipe)
    return recipe


def recipe_from_dict(values: dict[str, Any]) -> SegmenterRecipe:
    """Rebuild a recipe from :meth:`SegmenterRecipe.to_dict` output (e.g. a checkpoint's ``model.json``)."""
    recipe = SegmenterRecipe()
    update_dataclass(recipe, values)
    check_recipe(recipe)
    return recipe


def check_recipe(r: SegmenterRecipe) -> None:
    """Cross-field checks that the types cannot express."""
    if r.batch_size < 1 or r.crop_size < 1 or r.epochs < 0 or r.max_iter < 0:
        raise ConfigError("batch_size and crop_size must be positive; epochs and max_iter not negative")
    if r.crop_size % 32:
        raise ConfigError(f"crop_size must be a multiple of 32 (the networks' largest stride), not {r.crop_size}")
    if r.log_every < 1 or r.checkpoint_every < 1:
        raise ConfigError("log_every and checkpoint_every must be at least 1 (val_every=0 turns validation off)")
    if r.val_every < 0 or r.val_limit < 0 or r.lr <= 0 or r.min_lr < 0 or r.weight_decay < 0 or r.grad_clip < 0:
        raise ConfigError("val_every, val_limit, min_lr, weight_decay and grad_clip must not be negative; lr must be "
                          "positive")
    if r.epochs == 0 and r.max_iter == 0:
        raise ConfigError("set epochs or max_iter")
    if len(r.base_size) != 2 or len(r.scale_range) != 2 or not 0 < r.scale_range[0] <= r.scale_range[1]:
        raise ConfigError("base_size needs [long, short] and scale_range [low, high] with 0 < low <= high")
    if r.output_stride not in (8, 16):
        raise ConfigError("output_stride must be 8 or 16")
    if not r.test_scales or min(r.test_scales) <= 0:
        raise ConfigError("test_scales needs positive numbers")
    if len(r.betas) != 2:
        raise ConfigError("betas needs two numbers")


def total_iterations(recipe: SegmenterRecipe, n_images: int) -> int:
    """``max_iter`` if set, else ``ceil(epochs × n_images / batch_size)``."""
    if recipe.max_iter:
        return recipe.max_iter
    return max(1, math.ceil(recipe.epochs * n_images / recipe.batch_size))


def backbone_weight_name(recipe: SegmenterRecipe) -> str | None:
    """The weight file to load for the backbone: None for ``none``; ``auto`` → the registry name of the
    ImageNet variant (``resnet101``; ``swin-b``, ``swin-b-in22k``, ``swin-l-in22k``)."""
    w = recipe.backbone_weights
    if w == "none":
        return None
    if w != "auto":
        return w
    if recipe.net == "deeplabv3plus":
        if recipe.pretrain != "in1k":
            raise ConfigError("DeepLabV3+ backbones have ImageNet-1k weights only (pretrain=in1k)")
        return recipe.backbone
    if recipe.backbone == "swin-l" and recipe.pretrain == "in1k":
        raise ConfigError("Swin-L is published with ImageNet-21k pre-training only: set pretrain=in22k")
    if recipe.backbone in ("swin-b", "swin-l"):
        return recipe.backbone + ("-in22k" if recipe.pretrain == "in22k" else "")
    raise ConfigError(f"no known pretrained weights for backbone {recipe.backbone!r}: "
                      "give a file with backbone_weights=PATH or train from scratch with backbone_weights=none")
