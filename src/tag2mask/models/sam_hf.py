"""Segment Anything variants through Hugging Face ``transformers``, behind segment_anything's ``SamPredictor`` interface.

The quasi-superpixel generator (:class:`tag2mask.superpixels.QuasiSuperpixelGenerator`) drives a predictor with
segment_anything's interface: ``set_image`` (the image embedding, once per crop), ``transform.apply_coords``,
``predict_torch`` on a batch of single-point prompts (three masks per point with their predicted IoU, low-res
logits), ``reset_image``, ``model.mask_threshold`` and ``device``. :class:`HFSamPredictor` gives that interface to
four ``transformers`` models, so the generator's multi-level pattern, NMS and hierarchy filter run unchanged on
each. ``superpixels.source`` picks one (:data:`MASK_SOURCES`):

``sam`` — ``SamModel`` (weights ``facebook/sam-vit-huge``; ViT-L / ViT-B: ``facebook/sam-vit-large`` / ``-base``).
    Only when ``models.sam`` names a transformers folder or repository; a ``.pth`` file (the default) goes to
    segment_anything's own model (:func:`tag2mask.models.sam.load_sam`). Preprocessing exactly as
    segment_anything's ``SamPredictor``: the longer side resized to 1024 (``ResizeLongestSide``: PIL bilinear on the
    uint8 image), ``(x - mean) / std`` on 0..255 values with ImageNet's mean and std × 255 (``123.675, 116.28,
    103.53`` / ``58.395, 57.12, 57.375``, what ``SamImageProcessor`` also uses), zero padding at the bottom and right
    to 1024×1024. Points are scaled by ``ResizeLongestSide.apply_coords``. Masks: the 256×256 logits are enlarged to
    1024×1024 (bilinear, ``align_corners=False``), the padding is cut off and the rest enlarged to the image size
    (bilinear): segment_anything's ``Sam.postprocess_masks``.
``sam-hq`` — ``SamHQModel`` (``syscv-community/sam-hq-vit-huge``, the SysCV weights converted by the transformers
    team). SAM-HQ is a fork of segment_anything: same pre- and post-processing as SAM. Its decoder adds an HQ output
    token whose mask, computed from fused early (first global ViT block) and final image features, corrects SAM's
    mask: ``hq_token_only=False``, the setting SAM-HQ's authors advise for images with several objects, adds the HQ
    logits to SAM's. SAM-HQ's own predictor then keeps one mask per point (the best-scored of the three); here the HQ
    correction is added to each of the three multimask outputs (what ``SamHQModel`` computes) and the three are
    returned in SAM's order (``SamHQModel`` sorts them by score; the order is restored), so mask ``i`` is still level
    ``i`` (0 subpart, 1 part, 2 whole). Its predicted IoU is the SAM IoU head's score of that mask (the HQ token has
    no score of its own).
``sam2`` — ``Sam2Model`` (``facebook/sam2.1-hiera-large``, SAM 2.1 Hiera-L). Preprocessing as SAM 2's
    ``SAM2Transforms`` (and ``Sam2ImageProcessor``): the image as floats in [0, 1], resized to a 1024×1024 square
    (aspect not kept; bilinear, antialiased), normalised with ImageNet's mean and std. Points: ``x·1024/W``,
    ``y·1024/H`` (``SAM2Transforms.transform_coords``). Masks: the 256×256 logits enlarged straight to the image size
    (bilinear), as ``SAM2ImagePredictor`` does (no hole filling: SAM 2's automatic generator disables it too); the
    returned low-res logits are clamped to ±32 as there. The image embedding is three maps (the 64×64 embedding with
    SAM 2's "no memory" embedding added, and two high-resolution maps for the mask decoder), computed once.
    Multimask output gives three masks per point, as SAM's.
``edgetam`` — ``EdgeTamModel`` (``yonigozlan/EdgeTAM-hf``, the EdgeTAM weights in transformers' layout, the
    repository transformers' documentation loads). EdgeTAM is SAM 2 with a RepViT-M1 image encoder (a timm model,
    built from its config without any download) and a lighter video memory; on single images it is a SAM 2 image
    predictor: same pre- and post-processing as ``sam2``.

The weights are a transformers folder (``config.json`` + ``model.safetensors``), found by
:func:`tag2mask.models.weights.resolve_hf_folder` in ``$TAG2MASK_WEIGHTS`` or the Hugging Face cache, never
downloaded. :func:`sam_to_hf_state_dict` and :func:`hf_sam_config` convert a segment_anything SAM into
``SamModel``'s layout; ``tests/test_mask_sources.py`` uses them to prove that :class:`HFSamPredictor` on
``SamModel`` equals segment_anything's ``SamPredictor`` on the same weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from tag2mask.errors import ConfigError, Tag2MaskError
from tag2mask.models.weights import HF_MASK_SOURCES

ModelKind = Literal["sam", "sam_hq", "sam2", "edgetam"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MaskSource:
    """One ``superpixels.source`` value served through transformers."""

    source: str
    kind: ModelKind  # the transformers ``model_type`` of its config
    what: str  # its name in messages
    hub_repo: str  # the default weights


_KINDS: dict[str, ModelKind] = {"sam": "sam", "sam-hq": "sam_hq", "sam2": "sam2", "edgetam": "edgetam"}
MASK_SOURCES: dict[str, MaskSource] = {
    source: MaskSource(source, _KINDS[source], what, repo) for source, (what, repo) in HF_MASK_SOURCES.items()
}
"""The transformers mask sources by ``superpixels.source`` value."""

_SQUARE_KINDS = ("sam2", "edgetam")


def _model_class(kind: str) -> type:
    import transformers

    names = {"sam": "SamModel", "sam_hq": "SamHQModel", "sam2": "Sam2Model", "edgetam": "EdgeTamModel"}
    if kind not in names:
        raise Tag2MaskError(f"not a Segment Anything model of transformers: model_type {kind!r}; "
                            f"supported: {', '.join(names)}")
    return getattr(transformers, names[kind])


class ResizeSquare:
    """SAM 2's image geometry: the image is resized to ``target_length`` squared (aspect not kept), so a point's x
    scales by ``target_length / W`` and its y by ``target_length / H`` (``SAM2Transforms.transform_coords``)."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        h, w = original_size
        coords = np.array(coords, dtype=float)
        coords[..., 0] = coords[..., 0] / w * self.target_length
        coords[..., 1] = coords[..., 1] / h * self.target_length
        return coords

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        h, w = original_size
        coords = coords.clone().to(torch.float)
        coords[..., 0] = coords[..., 0] / w * self.target_length
        coords[..., 1] = coords[..., 1] / h * self.target_length
        return coords


class HFSamPredictor:
    """segment_anything's ``SamPredictor`` interface over a transformers ``SamModel``, ``SamHQModel``,
    ``Sam2Model`` or ``EdgeTamModel`` (the module docstring says each one's pre- and post-processing).

    ``set_image`` computes the image embedding once; ``predict_torch`` runs the prompt encoder and mask decoder on a
    batch of point prompts, passed as one image with ``B`` prompts (``(1, B, N, 2)``: the decoder expands the image
    embedding per prompt itself, so nothing is copied before it). ``model`` is the transformers model (frozen, eval
    mode) with a ``mask_threshold`` attribute (0.0, the logit threshold of every SAM variant) added for the generator.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        kind = getattr(getattr(model, "config", None), "model_type", None)
        if kind not in ("sam", "sam_hq", "sam2", "edgetam"):
            raise Tag2MaskError(f"HFSamPredictor needs a transformers SAM / SAM-HQ / SAM 2 / EdgeTAM model, got "
                                f"{type(model).__name__} (model_type {kind!r})")
        self.kind: ModelKind = kind
        self.model = model
        model.mask_threshold = 0.0  # type: ignore[attr-defined]  # what SamPredictor's users read
        config = model.config
        if kind in _SQUARE_KINDS:
            self.image_size = int(config.prompt_encoder_config.image_size)
            self.transform: ResizeLongestSide | ResizeSquare = ResizeSquare(self.image_size)
        else:
            self.image_size = int(config.vision_config.image_size)
            self.transform = ResizeLongestSide(self.image_size)
        self._raw_iou: torch.Tensor | None = None
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------------------------------------------------
    # Image
    # ---------------------------------------------------------------------------------------------------------

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """The model's input ``1×3×S×S`` float for an ``H×W×3`` uint8 RGB image, and the resized image's size before
        padding (SAM, SAM-HQ; the full ``S×S`` for SAM 2 and EdgeTAM)."""
        device = self.device
        if self.kind in _SQUARE_KINDS:
            from torchvision.transforms.functional import resize

            x = torch.as_tensor(image, device=device).permute(2, 0, 1).contiguous()[None].float() / 255.0
            x = resize(x, [self.image_size, self.image_size], antialias=True)
            mean = torch.tensor(IMAGENET_MEAN, device=device).view(-1, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=device).view(-1, 1, 1)
            return (x - mean) / std, (self.image_size, self.image_size)
        resized = self.transform.apply_image(image)  # type: ignore[union-attr]
        x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
        mean = torch.tensor([255 * m for m in IMAGENET_MEAN], device=device).view(-1, 1, 1)
        std = torch.tensor([255 * s for s in IMAGENET_STD], device=device).view(-1, 1, 1)
        x = (x - mean) / std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h)), (int(h), int(w))

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the image embedding of an ``H×W×3`` uint8 image (``image_format`` ``"RGB"`` or ``"BGR"``)."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}")
        image = np.asarray(image)
        if image_format == "BGR":
            image = np.ascontiguousarray(image[..., ::-1])
        self.reset_image()
        pixel_values, self.input_size = self.preprocess(image)
        pixel_values = pixel_values.to(next(self.model.parameters()).dtype)
        self.original_size = (int(image.shape[0]), int(image.shape[1]))
        if self.kind == "sam_hq":
            out = self.model.vision_encoder(pixel_values)
            self.features = {"image_embeddings": out.last_hidden_state,
                             "intermediate_embeddings": out.intermediate_embeddings}
        else:  # SAM: one map; SAM 2 / EdgeTAM: three (high-resolution first, "no memory" embedding added)
            self.features = {"image_embeddings": self.model.get_image_embeddings(pixel_values)}
        self.is_image_set = True

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: dict[str, Any] | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def get_image_embedding(self) -> torch.Tensor:
        """The (lowest-resolution) image embedding, ``1×C×64×64``."""
        if not self.is_image_set or self.features is None:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        emb = self.features["image_embeddings"]
        return emb[-1] if isinstance(emb, (list, tuple)) else emb

    # ---------------------------------------------------------------------------------------------------------
    # Prompts
    # ---------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for ``B`` point prompts, as ``SamPredictor.predict_torch``.

        Args:
            point_coords: ``B×N×2`` points in the model's input frame (``transform.apply_coords``).
            point_labels: ``B×N``, 1 foreground, 0 background.
            boxes, mask_input: not supported (the generator prompts with points only).
            multimask_output: three masks per prompt (else one).
            return_logits: logits instead of masks thresholded at ``model.mask_threshold``.

        Returns:
            masks ``B×C×H×W`` at the image size, predicted IoU ``B×C``, low-res logits ``B×C×256×256``.
        """
        if not self.is_image_set or self.features is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        if boxes is not None or mask_input is not None:
            raise NotImplementedError("HFSamPredictor takes point prompts only")
        kwargs: dict[str, Any] = dict(self.features)
        hook = None
        if self.kind == "sam_hq":
            kwargs["hq_token_only"] = False
            # the IoU head's unsorted output, to undo SamHQModel's sorting of the three masks
            self._raw_iou = None
            hook = self.model.mask_decoder.iou_prediction_head.register_forward_hook(self._keep_raw_iou)
        try:
            out = self.model(
                input_points=point_coords.to(self.device)[None],
                input_labels=point_labels.to(self.device)[None],
                multimask_output=multimask_output,
                **kwargs,
            )
        finally:
            if hook is not None:
                hook.remove()
        low_res, iou = out.pred_masks[0], out.iou_scores[0]
        if self.kind == "sam_hq" and multimask_output:
            low_res, iou = self._sam_order(low_res, iou)
        masks = self.postprocess_masks(low_res)
        if self.kind in _SQUARE_KINDS:
            low_res = torch.clamp(low_res, -32.0, 32.0)  # as SAM2ImagePredictor returns them
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def predict(
        self,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One prompt of ``N`` points in image coordinates (``N×2``, labels ``N``), as ``SamPredictor.predict``:
        masks ``C×H×W``, scores ``C``, low-res logits ``C×256×256`` as numpy arrays."""
        if self.original_size is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        coords = self.transform.apply_coords(np.asarray(point_coords, dtype=float), self.original_size)
        masks, iou, low_res = self.predict_torch(
            torch.as_tensor(coords, dtype=torch.float, device=self.device)[None],
            torch.as_tensor(point_labels, dtype=torch.int, device=self.device)[None],
            multimask_output=multimask_output,
            return_logits=return_logits,
        )
        return masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    def postprocess_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits ``B×C×h×w`` → logits at the image size (each model's own post-processing)."""
        assert self.original_size is not None and self.input_size is not None
        if self.kind in _SQUARE_KINDS:
            return F.interpolate(low_res, self.original_size, mode="bilinear", align_corners=False)
        masks = F.interpolate(low_res, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        masks = masks[..., : self.input_size[0], : self.input_size[1]]
        return F.interpolate(masks, self.original_size, mode="bilinear", align_corners=False)

    def _keep_raw_iou(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._raw_iou = output

    def _sam_order(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SamHQModel returns the three multimask outputs sorted by predicted IoU; put them back in SAM's order
        (mask ``i`` = level ``i``), using the IoU head's unsorted output caught by a forward hook."""
        raw = self._raw_iou
        if raw is None or raw.shape[-1] != iou.shape[-1] + 1:
            raise Tag2MaskError("SAM-HQ: the IoU head's output was not seen; this transformers version is not supported")
        raw = raw[0, :, 1:]  # B×3, SAM's order (token 0 is the single-mask output)
        if torch.equal(raw, iou):
            return masks, iou
        scores, order = torch.sort(raw, dim=-1, descending=True)  # what SamHQModel does
        if not torch.equal(scores, iou):
            raise Tag2MaskError("SAM-HQ: cannot restore the order of the three masks with this transformers version")
        restored = torch.empty_like(masks)
        restored.scatter_(1, order[:, :, None, None].expand_as(masks), masks)
        return restored, raw


# -------------------------------------------------------------------------------------------------------------
# Loading
# -------------------------------------------------------------------------------------------------------------


def mask_source(source: str) -> MaskSource:
    """The transformers mask source of a ``superpixels.source`` value (ConfigError for any other)."""
    if source not in MASK_SOURCES:
        raise ConfigError(f"superpixels.source={source!r} is not a transformers mask source; choose one of "
                          f"{', '.join(MASK_SOURCES)}")
    return MASK_SOURCES[source]


def load_hf_sam(
    source: str,
    name_or_path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Load the transformers model of mask source ``source`` (``"sam"``, ``"sam-hq"``, ``"sam2"``, ``"edgetam"``):
    frozen (``requires_grad_(False)``), in eval mode, on ``device``.

    ``name_or_path``: a transformers folder (``config.json`` + ``model.safetensors``), a file inside one, or a
    Hugging Face repository id looked up in ``$TAG2MASK_WEIGHTS`` and the Hugging Face cache, never downloaded;
    None, ``""`` or ``"default"``: the source's official repository (:data:`MASK_SOURCES`).

    Raises:
        MissingWeightsError: no such folder (the message says which repository to fetch, how and where to put it).
        Tag2MaskError: the folder holds another model than ``source``, or its weights do not fit its config.
    """
    from tag2mask.models.weights import hf_weight_file, resolve_hf_folder

    spec = mask_source(source)
    folder = resolve_hf_folder(name_or_path or "", what=spec.what, default_repo=spec.hub_repo)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad config.json
        raise Tag2MaskError(f"{spec.what}: cannot read {folder / 'config.json'}: {e}") from e
    if config.model_type != spec.kind:
        found = next((s.source for s in MASK_SOURCES.values() if s.kind == config.model_type), None)
        hint = f" (that is superpixels.source={found})" if found else ""
        raise Tag2MaskError(f"superpixels.source={source} needs a {spec.kind!r} model, but {folder} holds a "
                            f"{config.model_type!r} one{hint}")
    cls = _model_class(spec.kind)
    weights = hf_weight_file(folder)
    assert weights is not None  # resolve_hf_folder checked it
    if weights.suffix == ".safetensors":
        try:
            model, info = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                              output_loading_info=True)
        except Exception as e:  # noqa: BLE001
            raise Tag2MaskError(f"{spec.what}: cannot load {weights}: {e}") from e
        problems = [f"{k}: {info[k][:5]}" for k in ("missing_keys", "mismatched_keys") if info.get(k)]
        if problems:
            raise Tag2MaskError(f"{spec.what} weights {weights} do not fit {folder / 'config.json'}: "
                                + "; ".join(problems))
    else:  # pytorch_model.bin: through the project's reader (weights_only), never unpickled as code
        from tag2mask.models.checkpoint import read_state_dict

        state = read_state_dict(weights, what=spec.what)
        model = cls(config)
        result = model.load_state_dict(state, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or {})
        missing = [k for k in result.missing_keys if k not in tied]
        if missing:
            raise Tag2MaskError(f"{spec.what} weights {weights} do not fit {folder / 'config.json'}: missing "
                                f"{missing[:5]}")
        if hasattr(model, "tie_weights"):
            model.tie_weights()
    if spec.kind in ("sam", "sam_hq"):
        original_layer_norm_eps(model)
    model.eval().requires_grad_(False)
    return model.to(device)


SEGMENT_ANYTHING_DECODER_EPS = 1e-5
"""The epsilon of the LayerNorms of segment_anything's (and SAM-HQ's) two-way transformer: ``nn.LayerNorm``'s
default."""


def original_layer_norm_eps(model: torch.nn.Module) -> None:
    """Give the four LayerNorms of each two-way attention block of a transformers ``SamModel`` / ``SamHQModel`` the
    epsilon of the original code (1e-5), in place.

    transformers builds them with ``mask_decoder_config.layer_norm_eps``, whose default (1e-6, which the converted
    checkpoints' configs carry) is not segment_anything's. On random tiny weights that changes predicted IoUs by about
    1.5e-5 and thresholded masks at about 1 pixel in 20,000 (``tests/test_mask_sources.py``); with trained weights,
    whose LayerNorm inputs have variances far above 1e-5, much less. SAM 2's transformers blocks already use 1e-5."""
    for module in model.mask_decoder.transformer.modules():  # (the final one is built with 1e-5 already)
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = SEGMENT_ANYTHING_DECODER_EPS
    model.config.mask_decoder_config.layer_norm_eps = SEGMENT_ANYTHING_DECODER_EPS


def hf_sam_predictor(
    source: str,
    name_or_path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> HFSamPredictor:
    """:class:`HFSamPredictor` on :func:`load_hf_sam`'s model."""
    return HFSamPredictor(load_hf_sam(source, name_or_path, device))


# -------------------------------------------------------------------------------------------------------------
# Architectures: the official ones (random weights, for benchmarks) and tiny ones (tests, CPU checks)
# -------------------------------------------------------------------------------------------------------------

_VIT_H = {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16, "global_attn_indexes": [7, 15, 23, 31]}
_REPVIT_M1 = {"architecture": "repvit_m1.dist_in1k",
              "model_args": {"in_chans": 3, "features_only": True, "out_indices": (0, 1, 2, 3)}}


def official_config(source: str) -> Any:
    """The transformers config of the architecture of ``source``'s default weights (:data:`MASK_SOURCES`): SAM ViT-H,
    SAM-HQ ViT-H, SAM 2.1 Hiera-L (``sam2.1_hiera_l.yaml``: embed dim 144, 2 heads, stages 2-6-36-4, global blocks
    23/33/43, windows 8-4-16-8) or EdgeTAM (timm's RepViT-M1 image encoder: EdgeTAM's config names it; transformers'
    own ``EdgeTamConfig()`` default builds a ResNet-50 instead, because its ``architecture`` key is misspelt)."""
    import transformers as tf

    kind = mask_source(source).kind
    if kind == "sam":
        return tf.SamConfig(vision_config=dict(_VIT_H))
    if kind == "sam_hq":
        return tf.SamHQConfig(vision_config=dict(_VIT_H), mask_decoder_config={"vit_dim": 1280})
    if kind == "sam2":
        hiera = tf.Sam2HieraDetConfig(hidden_size=144, num_attention_heads=2, blocks_per_stage=[2, 6, 36, 4],
                                      embed_dim_per_stage=[144, 288, 576, 1152],
                                      num_attention_heads_per_stage=[2, 4, 8, 16],
                                      window_size_per_stage=[8, 4, 16, 8], global_attention_blocks=[23, 33, 43],
                                      window_positional_embedding_background_size=[7, 7])
        return tf.Sam2Config(vision_config=tf.Sam2VisionConfig(backbone_config=hiera,
                                                               backbone_channel_list=[1152, 576, 288, 144]))
    return tf.EdgeTamConfig(vision_config=tf.EdgeTamVisionConfig(backbone_config=tf.TimmWrapperConfig(**_REPVIT_M1)))


_TINY_PROMPT = {"hidden_size": 32, "image_size": 256, "patch_size": 16, "mask_input_channels": 4}
_TINY_DECODER = {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32}


def tiny_config(source: str) -> Any:
    """A tiny transformers config of ``source``'s model at 256 px with a 32-wide prompt encoder and mask decoder:
    ViT of width 32 and 2 blocks (SAM, SAM-HQ), a 5-block Hiera of width 16 (SAM 2), the real RepViT-M1 image encoder
    (EdgeTAM: timm builds it from its name, no download; it is small already)."""
    import transformers as tf

    kind = mask_source(source).kind
    vit = {"hidden_size": 32, "output_channels": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "image_size": 256, "global_attn_indexes": [1], "window_size": 14, "mlp_dim": 64, "num_pos_feats": 16}
    if kind == "sam":
        return tf.SamConfig(vision_config=vit, prompt_encoder_config=_TINY_PROMPT, mask_decoder_config=_TINY_DECODER)
    if kind == "sam_hq":
        return tf.SamHQConfig(vision_config=vit, prompt_encoder_config=_TINY_PROMPT,
                              mask_decoder_config={**_TINY_DECODER, "vit_dim": 32})
    sizes = {"backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]], "fpn_hidden_size": 32}
    if kind == "sam2":
        hiera = tf.Sam2HieraDetConfig(hidden_size=16, image_size=[256, 256], blocks_per_stage=[1, 1, 2, 1],
                                      embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 2, 2],
                                      window_size_per_stage=[8, 4, 4, 4], global_attention_blocks=[3],
                                      window_positional_embedding_background_size=[4, 4])
        vision = tf.Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16], **sizes)
        return tf.Sam2Config(vision_config=vision, prompt_encoder_config=_TINY_PROMPT,
                             mask_decoder_config=_TINY_DECODER)
    vision = tf.EdgeTamVisionConfig(backbone_config=tf.TimmWrapperConfig(**_REPVIT_M1), **sizes)
    return tf.EdgeTamConfig(vision_config=vision, prompt_encoder_config=_TINY_PROMPT, mask_decoder_config=_TINY_DECODER)


def random_hf_sam(source: str, tiny: bool = False, seed: int = 0, torch_init: bool = True) -> torch.nn.Module:
    """A randomly initialised transformers model of ``source`` (:func:`official_config`, or :func:`tiny_config` when
    ``tiny``), frozen, in eval mode; deterministic for a given ``seed`` (the global RNG is left untouched).

    ``torch_init``: re-initialise every layer with PyTorch's defaults (what segment_anything's random models have),
    then positional tables with std 0.02. transformers' own initialisation gives near-zero mask logits, so every
    mask of a random model covers all or nothing; with PyTorch's the masks vary (still random, not objects)."""
    cls = _model_class(mask_source(source).kind)
    config = tiny_config(source) if tiny else official_config(source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
        if torch_init:
            with torch.no_grad():
                for module in model.modules():
                    if module is not model and hasattr(module, "reset_parameters"):
                        module.reset_parameters()
                for name, param in model.named_parameters():
                    if "pos_embed" in name or "rel_pos" in name:
                        param.normal_(0, 0.02)
    return model.eval().requires_grad_(False)


# -------------------------------------------------------------------------------------------------------------
# segment_anything → transformers (SamModel)
# -------------------------------------------------------------------------------------------------------------


def hf_sam_config(sam: torch.nn.Module) -> Any:
    """A transformers ``SamConfig`` with the shapes of segment_anything SAM ``sam`` (any size, the tiny one too).

    The two-way transformer's LayerNorm epsilon is read from ``sam`` (segment_anything: 1e-5; ``SamConfig``'s
    default, and the official ``facebook/sam-vit-*`` configs, say 1e-6)."""
    from transformers import SamConfig

    enc, prompt, dec = sam.image_encoder, sam.prompt_encoder, sam.mask_decoder
    blocks = list(enc.blocks)
    window = next((b.window_size for b in blocks if b.window_size > 0), 0)
    transformer = dec.transformer
    layer = transformer.layers[0]
    return SamConfig(
        vision_config={
            "hidden_size": enc.patch_embed.proj.out_channels,
            "output_channels": enc.neck[0].out_channels,
            "num_hidden_layers": len(blocks),
            "num_attention_heads": blocks[0].attn.num_heads,
            "image_size": enc.img_size,
            "patch_size": enc.patch_embed.proj.kernel_size[0],
            "layer_norm_eps": blocks[0].norm1.eps,
            "qkv_bias": blocks[0].attn.qkv.bias is not None,
            "mlp_dim": blocks[0].mlp.lin1.out_features,
            "use_abs_pos": enc.pos_embed is not None,
            "use_rel_pos": blocks[0].attn.use_rel_pos,
            "window_size": window,
            "global_attn_indexes": [i for i, b in enumerate(blocks) if b.window_size == 0],
            "num_pos_feats": prompt.pe_layer.positional_encoding_gaussian_matrix.shape[1],
        },
        prompt_encoder_config={
            "hidden_size": prompt.embed_dim,
            "image_size": prompt.input_image_size[0],
            "patch_size": prompt.input_image_size[0] // prompt.image_embedding_size[0],
            "mask_input_channels": prompt.mask_downscaling[3].out_channels,
            "num_point_embeddings": prompt.num_point_embeddings,
            "layer_norm_eps": prompt.mask_downscaling[1].eps,
        },
        mask_decoder_config={
            "hidden_size": dec.transformer_dim,
            "mlp_dim": layer.mlp.lin1.out_features,
            "num_hidden_layers": transformer.depth,
            "num_attention_heads": layer.self_attn.num_heads,
            "attention_downsample_rate": transformer.embedding_dim // layer.cross_attn_token_to_image.internal_dim,
            "num_multimask_outputs": dec.num_multimask_outputs,
            "iou_head_depth": dec.iou_prediction_head.num_layers,
            "iou_head_hidden_dim": dec.iou_prediction_head.layers[0].out_features,
            "layer_norm_eps": layer.norm1.eps,
        },
    )


def _mlp_key(rest: str, depth: int) -> str:
    """segment_anything's ``MLP`` (``layers.0 .. layers.{depth-1}``) → transformers' ``proj_in``, ``layers.i``,
    ``proj_out``."""
    index, _, param = rest.partition(".")
    i = int(index)
    if i == 0:
        return f"proj_in.{param}"
    if i == depth - 1:
        return f"proj_out.{param}"
    return f"layers.{i - 1}.{param}"


_NECK = {"0": "conv1", "1": "layer_norm1", "2": "conv2", "3": "layer_norm2"}
_MASK_DOWNSCALING = {"0": "conv1", "1": "layer_norm1", "3": "conv2", "4": "layer_norm2", "6": "conv3"}
_UPSCALING = {"0": "upscale_conv1", "1": "upscale_layer_norm", "3": "upscale_conv2"}
_BLOCK_NORMS = {"norm1": "layer_norm1", "norm2": "layer_norm2", "norm3": "layer_norm3", "norm4": "layer_norm4"}


def sam_to_hf_state_dict(state: dict[str, torch.Tensor], mlp_depth: int = 3,
                         iou_head_depth: int = 3) -> dict[str, torch.Tensor]:
    """A segment_anything SAM state dict (Meta's ``sam_vit_*.pth`` layout) under transformers ``SamModel``'s names.

    ``mlp_depth`` / ``iou_head_depth``: layers of the hypernetwork MLPs (3 in every SAM) and of the IoU head
    (``iou_head_depth``, 3). The random-Fourier positional matrix goes to both of ``SamModel``'s (tied) copies.
    Raises KeyError for a key it does not know.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if key == "image_encoder.pos_embed":
            new = "vision_encoder.pos_embed"
        elif key.startswith("image_encoder.patch_embed.proj."):
            new = "vision_encoder.patch_embed.projection." + parts[-1]
        elif key.startswith("image_encoder.blocks."):
            rest = ".".join(parts[3:])
            for old, name in _BLOCK_NORMS.items():
                if rest.startswith(old + "."):
                    rest = name + rest[len(old):]
            new = f"vision_encoder.layers.{parts[2]}.{rest}"
        elif key.startswith("image_encoder.neck."):
            new = f"vision_encoder.neck.{_NECK[parts[2]]}.{parts[3]}"
        elif key == "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            out["shared_image_embedding.positional_embedding"] = value
            new = "prompt_encoder.shared_embedding.positional_embedding"
        elif key.startswith("prompt_encoder.point_embeddings."):
            new = f"prompt_encoder.point_embed.{parts[2]}.{parts[3]}"
        elif key.startswith("prompt_encoder.mask_downscaling."):
            new = f"prompt_encoder.mask_embed.{_MASK_DOWNSCALING[parts[2]]}.{parts[3]}"
        elif key in ("prompt_encoder.not_a_point_embed.weight", "prompt_encoder.no_mask_embed.weight",
                     "mask_decoder.iou_token.weight", "mask_decoder.mask_tokens.weight"):
            new = key
        elif key.startswith("mask_decoder.transformer."):
            rest = ".".join(parts[2:])
            if rest.startswith("norm_final_attn."):
                rest = "layer_norm_final_attn." + parts[-1]
            elif rest.startswith("layers."):
                head = ".".join(parts[2:4])
                tail = ".".join(parts[4:])
                for old, name in _BLOCK_NORMS.items():
                    if tail.startswith(old + "."):
                        tail = name + tail[len(old):]
                rest = f"{head}.{tail}"
            new = "mask_decoder.transformer." + rest
        elif key.startswith("mask_decoder.output_upscaling."):
            new = f"mask_decoder.{_UPSCALING[parts[2]]}.{parts[3]}"
        elif key.startswith("mask_decoder.output_hypernetworks_mlps."):
            new = f"mask_decoder.output_hypernetworks_mlps.{parts[2]}." + _mlp_key(".".join(parts[4:]), mlp_depth)
        elif key.startswith("mask_decoder.iou_prediction_head."):
            new = "mask_decoder.iou_prediction_head." + _mlp_key(".".join(parts[3:]), iou_head_depth)
        else:
            raise KeyError(f"unknown segment_anything SAM key {key!r}")
        out[new] = value
    return out


def sam_to_hf(sam: torch.nn.Module, attn_implementation: str | None = None) -> torch.nn.Module:
    """transformers ``SamModel`` holding segment_anything SAM ``sam``'s weights (strict: every key of both), in
    eval mode on ``sam``'s device."""
    from transformers import SamModel

    config = hf_sam_config(sam)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    model = SamModel(config)
    state = sam_to_hf_state_dict(sam.state_dict(), iou_head_depth=sam.mask_decoder.iou_prediction_head.num_layers)
    model.load_state_dict(state, strict=True)
    device = next(sam.parameters()).device
    return model.eval().requires_grad_(False).to(device)
