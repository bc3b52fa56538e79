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


def model_class(kind: str) -> type:
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
    from tag2mask.models.weights import hf_model_file, resolve_hf_folder

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
    cls = model_class(spec.kind)
    weights = hf_model_file(folder)
    assert weights is not None  # resolve_hf_folder checked it
    if weights.name.endswith((".safetensors", ".safetensors.index.json")):  # transformers reads shards itself
        try:
            model, info = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                              output_loading_info=True)
        except Exception as e:  # noqa: BLE001
            raise Tag2MaskError(f"{spec.what}: cannot load {weights}: {e}") from e
        problems = [f"{k}: {info[k][:5]}" for k in ("missing_keys", "mismatched_keys") if info.get(k)]
        if problems:
            raise Tag2MaskError(f"{spec.what} weights {weights} do not fit {folder / 'config.json'}: "
                                + "; ".join(problems))
    else:  # pytorch_model.bin (or its shards): the project's reader (weights_only), never unpickled as code
        from tag2mask.models.checkpoint import read_state_dict, short_reason

        state = read_state_dict(weights, what=spec.what)
        model = cls(config)
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a tensor of another shape than the config gives
            raise Tag2MaskError(f"{spec.what} weights {weights} do not fit {folder / 'config.json'}: "
                                f"{short_reason(e)}") from e
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
