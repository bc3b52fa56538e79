"""Mask2Former from Hugging Face transformers behind the :class:`~tag2mask.segmenters.base.Segmenter` interface.

The network is ``transformers``' ``Mask2FormerForUniversalSegmentation`` on its Swin backbone (``SwinBackbone``,
all four stages out, each with its own output LayerNorm), built from a config without downloading anything.
transformers is imported only when a network is built, so this module imports without it; building without it
raises :class:`~tag2mask.errors.Tag2MaskError` with the install command.

Architecture (MMSegmentation's Mask2Former configs, which equal transformers' defaults): a 6-layer
multi-scale deformable-attention pixel decoder with 256 channels, a 9-layer masked-attention transformer decoder
(transformers counts the initial prediction, ``decoder_layers=10``), 100 queries; loss weights class 2, mask 5,
dice 5, no-object 0.1, 12544 sampled points (oversample 3, importance 0.75), auxiliary losses on every decoder
layer. The Swin variants are those of MMSeg's Mask2Former configs (:data:`SWIN_VARIANTS`); ``"tiny"`` is a very
small one, and ``small_head=True`` a very small decoder, for tests and demos.

Backbone weights are Microsoft's Hugging Face Swin checkpoints (``SwinForImageClassification`` with ``swin.`` /
``classifier.`` keys, or a bare ``SwinModel``), in the legacy layout of the published files
(``attention.self.query`` …) or in the layout of this transformers version (``attention.q_proj`` …). The
classifier, the final LayerNorm and the pooler are dropped; every other backbone tensor must be in the file with
the right shape, except the per-stage output norms that the backbone adds (``hidden_states_norms``, freshly
initialised, as MMSeg's ``norm0..3``). Relative position bias tables are not interpolated: a window-7 file does
not fit a window-12 model. The SwinModel's own final LayerNorm (``swin.layernorm``) is part of the backbone
module but never used by it; it is frozen (``requires_grad=False``) so that DistributedDataParallel does not
wait for its gradients.

Semantic labels become Mask2Former targets as in MMSeg (``seg_data_to_instance_data``): one binary mask per label
id present (background, id 0, is an ordinary class; "no object" is the extra class ``num_classes``), and ignore
pixels (255) belong to no mask — they count as negatives of every mask in the mask and dice losses.

Semantic inference is MMSeg's: ``softmax`` over the ``K+1`` class scores without the no-object column, times the
``sigmoid`` of the mask logits upsampled to the input size, summed over the queries; tag2mask then divides by the
per-pixel sum so that the scores are probabilities (the argmax is unchanged).

Optimiser groups follow MMSeg's Mask2Former ``paramwise_cfg`` (:meth:`Mask2FormerSegmenter.param_groups`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tag2mask.errors import ConfigError, DataError, Tag2MaskError
from tag2mask.segmenters.base import IGNORE_INDEX, STAGE2_MISSING, Segmenter


OUT_FEATURES = ("stage1", "stage2", "stage3", "stage4")


@dataclass(frozen=True)
class SwinVariant:
    """One Swin backbone size (MMSeg's ``SwinTransformer`` arguments in the Mask2Former configs)."""

    embed_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    window_size: int
    pretrain_image_size: int
    drop_path_rate: float


SWIN_VARIANTS: dict[str, SwinVariant] = {
    "swin-t": SwinVariant(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224, 0.3),
    "swin-b": SwinVariant(128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384, 0.3),
    "swin-l": SwinVariant(192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384, 0.3),
    "tiny": SwinVariant(16, (1, 1, 1, 1), (1, 1, 2, 2), 4, 64, 0.0),
}
"""Backbone name → Swin size. ``swin-b``/``swin-l`` fit Microsoft's window-12, 384 px checkpoints; ``swin-t`` the
window-7, 224 px ones; ``tiny`` (no pretrained weights) is for tests and demos."""

SMALL_HEAD: dict[str, int] = dict(
    feature_size=32,
    mask_feature_size=32,
    hidden_dim=32,
    encoder_feedforward_dim=64,
    encoder_layers=1,
    decoder_layers=2,
    dim_feedforward=64,
    num_attention_heads=4,
    train_num_points=256,
)
"""Mask2FormerConfig overrides of ``small_head=True``: a very small pixel and transformer decoder."""
SMALL_HEAD_QUERIES = 8


def _transformers() -> Any:
    """The transformers module, or :class:`Tag2MaskError` saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise Tag2MaskError(STAGE2_MISSING) from None
    return transformers


def swin_config(backbone: str = "swin-b") -> Any:
    """transformers ``SwinConfig`` of a :data:`SWIN_VARIANTS` name, all four stages as outputs."""
    if backbone not in SWIN_VARIANTS:
        raise ConfigError(f"unknown Mask2Former backbone {backbone!r}; backbones: {', '.join(SWIN_VARIANTS)}")
    v = SWIN_VARIANTS[backbone]
    return _transformers().SwinConfig(
        image_size=v.pretrain_image_size,
        patch_size=4,
        embed_dim=v.embed_dim,
        depths=list(v.depths),
        num_heads=list(v.num_heads),
        window_size=v.window_size,
        mlp_ratio=4.0,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=v.drop_path_rate,
        use_absolute_embeddings=False,
        out_features=list(OUT_FEATURES),
    )


def mask2former_config(
    num_classes: int, backbone: str = "swin-b", *, num_queries: int | None = None, small_head: bool = False
) -> Any:
    """transformers ``Mask2FormerConfig``: ``num_classes`` labels (background included) on a Swin ``backbone``.

    ``num_queries`` defaults to 100 (8 with ``small_head``). Everything else is transformers' default, which is
    MMSeg's Mask2Former, unless ``small_head`` shrinks the decoders (:data:`SMALL_HEAD`).
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, not {num_classes}")
    if num_queries is None:
        num_queries = SMALL_HEAD_QUERIES if small_head else 100
    if num_queries < 1:
        raise ConfigError(f"num_queries must be at least 1, not {num_queries}")
    head: dict[str, int] = dict(SMALL_HEAD) if small_head else {}
    return _transformers().Mask2FormerConfig(
        backbone_config=swin_config(backbone), num_labels=int(num_classes), num_queries=int(num_queries), **head
    )


def semantic_targets(
    labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mask2Former targets of ``B×H×W`` semantic label maps: ``(class_labels, mask_labels)``, one entry per image.

    ``class_labels[i]``: the label ids present in image ``i`` except ``ignore_index``, ascending, int64;
    ``mask_labels[i]``: ``N_i×H×W`` float32 binary masks, mask ``n`` is where the label is ``class_labels[i][n]``.
    Ignore pixels are 0 in every mask (MMSeg's behaviour), and an image without any labelled pixel gets
    ``N_i = 0``.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be BxHxW, got shape {tuple(labels.shape)}")
    class_labels: list[torch.Tensor] = []
    mask_labels: list[torch.Tensor] = []
    for label in labels.long():
        ids = torch.unique(label)
        ids = ids[ids != ignore_index]
        class_labels.append(ids)
        mask_labels.append((label[None] == ids[:, None, None]).float())
    return class_labels, mask_labels


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``B×K×H×W`` float32 semantic scores from Mask2Former's query outputs (MMSeg's inference, its ``seg_logits``).

    ``class_logits``: ``B×Q×(K+1)`` (the last column is "no object"); ``mask_logits``: ``B×Q×h×w``;
    ``size``: the output ``(H, W)``. The mask logits are upsampled bilinearly (``align_corners=False``) and then
    squashed with a sigmoid, as MMSeg does; ``score[b,k] = Σ_q softmax(class)[b,q,k] · sigmoid(mask)[b,q]`` over
    the ``K`` real classes.
    """
    height, width = int(size[0]), int(size[1])
    with torch.autocast(device_type=mask_logits.device.type, enabled=False):  # float32 even under AMP
        masks = mask_logits.float()
        if masks.shape[-2:] != (height, width):
            masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
        classes = torch.softmax(class_logits.float(), dim=-1)[..., :-1]
        return torch.einsum("bqk,bqhw->bkhw", classes, masks.sigmoid())


def normalise_scores(scores: torch.Tensor) -> torch.Tensor:
    """Semantic scores divided by their per-pixel sum over the classes (at least 1e-12): probabilities with the
    same argmax."""
    scores = scores.float()
    return scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-12)


def semantic_probabilities(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, size: Sequence[int]
) -> torch.Tensor:
    """``B×K×H×W`` float32 per-pixel class probabilities: :func:`semantic_scores` then :func:`normalise_scores`
    (every pixel's probabilities sum to one; the argmax is MMSeg's)."""
    return normalise_scores(semantic_scores(class_logits, mask_logits, size))


# Legacy (published Microsoft files) → this transformers version's Swin parameter names, applied in order.
_LEGACY_SWIN_RENAMES: tuple[tuple[str, str], ...] = (
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (r"\.attention\.self\.relative_position_bias_table$",
     ".attention.relative_position_bias.relative_position_bias_table"),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"(\.blocks\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
)
# File tensors that the backbone does not use: classifier head, final norm, pooler, recomputed index buffers.
_DROPPED_SWIN_KEYS = re.compile(
    r"^(classifier\.|layernorm\.|pooler\.)|\.relative_position_index$|\.attn_mask$|^embeddings\.mask_token$"
)


def swin_backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face Swin checkpoint's tensors under the names of ``SwinBackbone.state_dict()``.

    Strips the ``swin.`` prefix, renames the legacy attention/MLP names, drops the classifier, the final
    LayerNorm, the pooler and index buffers, and puts the ``swin.`` prefix of ``SwinBackbone`` back on (the
    backbone's own ``hidden_states_norms.*``, present in a saved ``SwinBackbone``, keep their names).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("swin."):] if key.startswith("swin.") else key
        if _DROPPED_SWIN_KEYS.search(name):
            continue
        for pattern, repl in _LEGACY_SWIN_RENAMES:
            name = re.sub(pattern, repl, name)
        out[name if name.startswith("hidden_states_norms.") else "swin." + name] = value
    return out


# The inverse of _LEGACY_SWIN_RENAMES, for transformers versions whose SwinBackbone still uses the legacy names.
_CURRENT_TO_LEGACY: tuple[tuple[str, str], ...] = (
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.relative_position_bias\.relative_position_bias_table$",
     ".attention.self.relative_position_bias_table"),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)


def _legacy_name(name: str) -> str:
    for pattern, repl in _CURRENT_TO_LEGACY:
        name = re.sub(pattern, repl, name)
    return name


def _first(keys: list[str], n: int = 4) -> str:
    """``a, b, c, d (+k more)``."""
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_swin_weights(backbone: nn.Module, path: str | os.PathLike[str]) -> None:
    """Copy a Hugging Face Swin checkpoint file into a transformers ``SwinBackbone``.

    Every backbone tensor except ``hidden_states_norms.*`` (the backbone's own output norms) and the unused
    ``swin.layernorm.*`` must be in the file with the same shape, and the file may hold no other backbone
    tensors; otherwise :class:`Tag2MaskError` names the file and the first offending keys.
    """
    from tag2mask.models.checkpoint import read_state_dict

    state = swin_backbone_state(read_state_dict(path, "Swin backbone"))
    own = backbone.state_dict()
    if any(".attention.self.query." in k for k in own):  # transformers < 5 names its Swin tensors the legacy way
        state = {_legacy_name(k): v for k, v in state.items()}
    optional = re.compile(r"^(hidden_states_norms\.|swin\.layernorm\.)")
    missing = [k for k in own if k not in state and not optional.search(k)]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    unexpected = [k for k in state if k not in own]
    if missing or wrong or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} backbone tensors missing ({_first(missing)})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape, file vs model ({_first(wrong, 3)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown tensors ({_first(unexpected)})")
        raise Tag2MaskError(
            f"weight file {path} does not fit this Swin backbone: {'; '.join(parts)}. Give a Hugging Face Swin "
            "checkpoint of the same size and window (swin-b/swin-l: window 12, swin-t: window 7)."
        )
    backbone.load_state_dict(state, strict=False)


def global_num_masks(class_labels: Sequence[torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """The loss normaliser: target masks per rank, averaged over the ranks under torchrun, at least 1.

    MMDetection's Mask2Former divides its mask and dice losses by ``reduce_mean(number of target masks)``;
    transformers does that only inside an accelerate launch and otherwise divides by each rank's own count. This
    replaces transformers' ``Mask2FormerLoss.get_num_masks`` so that plain DDP normalises as MMDet does.
    """
    import torch.distributed as dist

    count = torch.as_tensor(float(sum(len(c) for c in class_labels)), dtype=torch.float, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return torch.clamp(count, min=1)


class Mask2FormerSegmenter(Segmenter):
    """transformers ``Mask2FormerForUniversalSegmentation`` (in :attr:`model`); ``num_classes`` counts the background.

    Build it with :func:`build_mask2former`.
    """

    def __init__(self, config: Any, backbone_name: str = "") -> None:
        super().__init__()
        transformers = _transformers()
        self.num_classes = int(config.num_labels)
        self.backbone_name = backbone_name
        self.model = transformers.Mask2FormerForUniversalSegmentation(config)
        self.backbone.swin.layernorm.requires_grad_(False)  # built by SwinModel, unused by SwinBackbone
        self.model.criterion.get_num_masks = global_num_masks  # MMDet's normalisation under torchrun too

    @property
    def backbone(self) -> nn.Module:
        """The Swin backbone (transformers ``SwinBackbone``)."""
        return self.model.model.pixel_level_module.encoder

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mask2Former's weighted loss (class + mask + dice, last and auxiliary decoder layers), summed.

        ``labels`` become targets with :func:`semantic_targets`: one mask per label id present, background
        (id 0) an ordinary class, ignore pixels (255) a negative of every mask. An image with no labelled pixel
        has no targets: all its queries learn "no object".
        """
        class_labels, mask_labels = semantic_targets(labels)
        for ids in class_labels:
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_classes):
                raise DataError(
                    f"label ids {ids.tolist()} out of range for {self.num_classes} classes (0..{self.num_classes - 1}"
                    f", {IGNORE_INDEX} = ignore)"
                )
        out = self.model(pixel_values=images, mask_labels=mask_labels, class_labels=class_labels)
        return out.loss

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """``B×K×H×W`` float32 semantic scores at the input size (:func:`semantic_scores`, MMSeg's ``seg_logits``)."""
        out = self.model(pixel_values=images)
        return semantic_scores(out.class_queries_logits, out.masks_queries_logits, images.shape[-2:])

    def to_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Semantic scores divided by their sum over the classes (at least 1e-12)."""
        return normalise_scores(scores)

    def param_groups(self, lr: float, weight_decay: float, backbone_lr_mult: float) -> list[dict]:
        """MMSeg's Mask2Former optimiser groups: backbone × ``backbone_lr_mult``, no decay on norms and embeddings.

        Name rules on the transformers model (``self.model``):

        * backbone: every parameter under ``model.pixel_level_module.encoder.`` gets ``lr × backbone_lr_mult``;
        * no weight decay: the weight and bias of every normalisation layer (LayerNorm, GroupNorm, BatchNorm —
          MMSeg's ``norm_decay_mult=0``), Swin's ``relative_position_bias_table`` and absolute
          ``position_embeddings``, and the transformer decoder's ``queries_embedder`` / ``queries_features`` /
          ``level_embed`` (MMSeg's ``query_embed``, ``query_feat``, ``level_embed``). The pixel decoder's level
          embedding keeps its weight decay: in MMSeg it is called ``level_encoding`` and no custom key matches it.

        Every trainable parameter lands in exactly one group; empty groups are dropped. Each group carries its
        ``lr_mult`` for learning-rate schedules.
        """
        norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
        norm_params = {
            id(p) for m in self.model.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)
        }
        no_decay_name = re.compile(
            r"relative_position_bias_table$|embeddings\.position_embeddings$"
            r"|^model\.transformer_module\.(queries_embedder|queries_features|level_embed)\."
        )
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {
            (b, d): [] for b in (True, False) for d in (True, False)
        }
        seen: set[int] = set()
        for name, p in self.model.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            in_backbone = name.startswith("model.pixel_level_module.encoder.")
            decay = id(p) not in norm_params and not no_decay_name.search(name)
            groups[(in_backbone, decay)].append(p)
        out = []
        for (in_backbone, decay), params in groups.items():
            mult = backbone_lr_mult if in_backbone else 1.0
            out.append({"params": params, "lr": lr * mult, "weight_decay": weight_decay if decay else 0.0,
                        "lr_mult": mult})
        return [g for g in out if g["params"]]


def build_mask2former(
    num_classes: int,
    backbone: str = "swin-b",
    weights: str | os.PathLike[str] | None = None,
    *,
    num_queries: int | None = None,
    small_head: bool | None = None,
) -> Mask2FormerSegmenter:
    """Mask2Former on a Swin ``backbone`` (:data:`SWIN_VARIANTS`) for ``num_classes`` classes (background included).

    ``weights``: None (random initialisation, train from scratch), a known backbone name (``swin-b``,
    ``swin-b-in22k``, ``swin-l-in22k``) or a Hugging Face Swin checkpoint file, loaded into the backbone with
    :func:`load_swin_weights`. ``small_head``: a very small decoder (:data:`SMALL_HEAD`); None means True for the
    ``tiny`` backbone only. ``num_queries``: 100, or 8 with the small head, unless given.
    """
    if small_head is None:
        small_head = backbone == "tiny"
    config = mask2former_config(num_classes, backbone, num_queries=num_queries, small_head=small_head)
    path = None
    if weights is not None:  # resolved first: a missing file fails before a large model is allocated
        from tag2mask.models.weights import resolve_weight

        path = resolve_weight(weights, "backbone")
    model = Mask2FormerSegmenter(config, backbone)
    if path is not None:
        load_swin_weights(model.backbone, path)
    return model


__all__ = [
    "SWIN_VARIANTS",
    "SMALL_HEAD",
    "Mask2FormerSegmenter",
    "SwinVariant",
    "build_mask2former",
    "load_swin_weights",
    "mask2former_config",
    "semantic_probabilities",
    "semantic_targets",
    "swin_backbone_state",
    "swin_config",
]
