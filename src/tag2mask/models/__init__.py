"""Model loading: CLIP (open_clip; OpenAI, Hugging Face and OpenCLIP weights), Segment Anything, and tiny random stand-ins.

- :mod:`tag2mask.models.weights` — weights folder, known files, name → path (no torch import);
- :mod:`tag2mask.models.clip` — :func:`load_clip`, :func:`clip_tokenizer`;
- :mod:`tag2mask.models.clip_sources` — Hugging Face ``CLIPModel`` and OpenCLIP checkpoints into the same model;
- :mod:`tag2mask.models.sam` — :func:`load_sam`, :func:`sam_predictor`;
- :mod:`tag2mask.models.sam_hf` — SAM, SAM-HQ, SAM 2.1 and EdgeTAM through transformers behind segment_anything's
  predictor interface: :class:`HFSamPredictor`, :func:`load_hf_sam`, :func:`hf_sam_predictor`;
- :mod:`tag2mask.models.tiny` — tiny random CLIP/SAM and writers of the official checkpoint layouts;
- :mod:`tag2mask.models.prompts` — the CoOp :class:`PromptLearner` and the text encoder over embedded prompts;
- :mod:`tag2mask.models.clip_cam` — the CAM-ready forward of the CLIP vision transformer.

The names below are re-exported lazily, so ``import tag2mask.models.weights`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "weights_dir": "weights",
    "resolve_weight": "weights",
    "find_weights": "weights",
    "load_clip": "clip",
    "clip_tokenizer": "clip",
    "load_sam": "sam",
    "sam_predictor": "sam",
    "HFSamPredictor": "sam_hf",
    "load_hf_sam": "sam_hf",
    "hf_sam_predictor": "sam_hf",
    "tiny_clip": "tiny",
    "tiny_sam": "tiny",
    "save_openai_state_dict": "tiny",
    "save_openai_torchscript": "tiny",
    "save_sam_state_dict": "tiny",
    "PromptLearner": "prompts",
    "encode_prompts": "prompts",
    "vit_forward": "clip_cam",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
