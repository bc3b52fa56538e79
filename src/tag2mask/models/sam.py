"""Loading Segment Anything (SAM) weights into segment_anything's own model classes.

``model_type`` is a key of ``segment_anything.sam_model_registry`` (``"vit_h"``, ``"vit_l"``, ``"vit_b"``;
``"default"`` is ``"vit_h"``) or ``"tiny"``, the tiny random SAM of :func:`tag2mask.models.tiny.tiny_sam`
(its input size is read back from the checkpoint; it has no official file, so pass its path).
"""

from __future__ import annotations

import os

import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import Sam

from tag2mask.errors import ConfigError, Tag2MaskError
from tag2mask.models.checkpoint import read_state_dict, short_reason
from tag2mask.models.tiny import tiny_sam
from tag2mask.models.weights import resolve_weight

TINY = "tiny"

# Image-encoder width of each official model, to say which model a mismatching file holds.
_TYPE_BY_WIDTH = {1280: "vit_h", 1024: "vit_l", 768: "vit_b", 32: TINY}


def sam_model_types() -> list[str]:
    """Every ``model_type`` :func:`load_sam` accepts."""
    return [*sam_model_registry, TINY]


def load_sam(
    model_type: str = "vit_h",
    name_or_path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> Sam:
    """Build SAM of ``model_type`` and load its weights (strictly): frozen (``requires_grad_(False)``), in eval
    mode, on ``device``.

    Args:
        model_type: ``"vit_h"``, ``"vit_l"``, ``"vit_b"``, ``"default"`` (= ``"vit_h"``) or ``"tiny"``.
        name_or_path: a weight file path, or a known name (``"vit_h"``, ``"vit_l"``, ``"vit_b"``, or the official
            file name) looked up in the weights folder. Defaults to the official file of ``model_type``
            (e.g. ``sam_vit_h_4b8939.pth``); required for ``"tiny"``.
        device: where the returned model lives.

    Raises:
        ConfigError: unknown ``model_type``, or ``"tiny"`` without a path.
        MissingWeightsError: the file is not there (the message says where to get it).
        Tag2MaskError: the file is unreadable or holds another model than ``model_type``.
    """
    if model_type not in sam_model_types():
        raise ConfigError(f"unknown SAM model_type {model_type!r}; choose one of {', '.join(sam_model_types())}")
    if name_or_path is None:
        if model_type == TINY:
            raise ConfigError("SAM model_type 'tiny' has no official file: pass the path of a saved tiny SAM")
        name_or_path = "vit_h" if model_type == "default" else model_type
    path = resolve_weight(name_or_path, kind="sam")
    state_dict = read_state_dict(path, what="SAM")  # read before the (slow) build, so a bad file fails fast
    try:
        sam = _build(model_type, state_dict)
        sam.load_state_dict(state_dict, strict=True)
    except (RuntimeError, KeyError, ValueError, IndexError, AssertionError, TypeError) as e:
        width = _encoder_width(state_dict)
        guess = _TYPE_BY_WIDTH.get(width) if width is not None else None
        hint = f"; it looks like a {guess!r} checkpoint" if guess and guess != model_type else ""
        raise Tag2MaskError(
            f"SAM weight file {path} does not fit model_type {model_type!r}{hint}: {short_reason(e)}"
        ) from e
    sam.eval().requires_grad_(False)
    return sam.to(device)


def sam_predictor(sam: Sam) -> SamPredictor:
    """segment_anything's ``SamPredictor`` on ``sam`` (``set_image`` once, then ``predict`` per prompt)."""
    return SamPredictor(sam)


def _build(model_type: str, state_dict: dict[str, torch.Tensor]) -> Sam:
    """A randomly initialised SAM of ``model_type``, shaped for ``state_dict`` when it is the tiny one."""
    if model_type == TINY:
        pos = state_dict.get("image_encoder.pos_embed")
        if pos is None or pos.ndim != 4:
            raise KeyError("image_encoder.pos_embed (1, H/16, W/16, C) is missing: not a SAM state dict")
        return tiny_sam(img_size=int(pos.shape[1]) * 16)
    return sam_model_registry[model_type](checkpoint=None)


def _encoder_width(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Embedding width of the checkpoint's image encoder, or None when it has no SAM image encoder."""
    w = state_dict.get("image_encoder.patch_embed.proj.weight")
    return int(w.shape[0]) if w is not None and w.ndim == 4 else None
