"""Writers of the official checkpoint layouts, for tests and benchmarks (no weights can be downloaded there): a
random model saved as OpenAI's ``ViT-*.pt`` (TorchScript archive or state dict) or as Meta's ``sam_vit_*.pth``
file would be, so that the real loaders are tested by round trip. Nothing in the pipeline imports this module."""

from __future__ import annotations

import copy
import os
import warnings

import torch
from open_clip.model import CLIP
from segment_anything.modeling import Sam

from tag2mask.io import atomic_write


def openai_state_dict(model: CLIP, dtype: torch.dtype | None = torch.float16) -> dict[str, torch.Tensor]:
    """The model's parameters under OpenAI's key names, floating tensors cast to ``dtype`` (None keeps them).

    open_clip's ``CLIP`` (the non-"custom text" class) uses OpenAI's module names, so its persistent state dict
    *is* the OpenAI layout; this checks the marker keys rather than renaming anything.
    """
    sd = model.state_dict()
    for key in ("visual.proj", "text_projection", "token_embedding.weight", "visual.conv1.weight"):
        if key not in sd:
            raise ValueError(f"model has no {key!r}: not an OpenAI-layout open_clip CLIP ViT")
    return {
        k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).cpu().contiguous()
        for k, v in sd.items()
    }


def save_openai_state_dict(
    model: CLIP, path: str | os.PathLike[str], dtype: torch.dtype | None = torch.float16
) -> None:
    """Write ``model`` as a plain ``torch.save`` state dict with OpenAI key names (atomically).

    With the default fp16 this matches what TorchScript's ``state_dict()`` of the official file holds, minus the
    three metadata entries of the TorchScript archive.
    """
    sd = openai_state_dict(model, dtype)
    with atomic_write(path, "wb") as f:
        torch.save(sd, f)


def save_openai_torchscript(
    model: CLIP, path: str | os.PathLike[str], dtype: torch.dtype | None = torch.float16
) -> None:
    """Write ``model`` as a TorchScript archive laid out like OpenAI's official ``ViT-*.pt`` files (atomically).

    How close it is: OpenAI's files are ``torch.jit.trace`` archives of their CLIP module with methods
    ``forward``, ``encode_image`` and ``encode_text``, fp16 weights, and ``input_resolution``,
    ``context_length`` and ``vocab_size`` as int64 scalar tensors in the state dict. This one is a trace of the
    open_clip model with the same three methods and the same state-dict keys (the causal attention mask is
    baked into the graph as a constant, as in OpenAI's, rather than stored), floating tensors cast to
    ``dtype``. The traced graphs differ from OpenAI's (open_clip's code, traced in float32 at batch 1), which
    no loader of ours uses: :func:`tag2mask.models.clip.load_clip` reads only ``state_dict()``.
    """
    m = copy.deepcopy(model).float().eval()
    mask = getattr(m, "attn_mask", None)
    if isinstance(mask, torch.Tensor):  # a non-persistent buffer, which TorchScript would store: make it a constant
        delattr(m, "attn_mask")
        m.attn_mask = mask
    size = m.visual.image_size
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    context_length = int(m.positional_embedding.shape[0])
    vocab_size = int(m.token_embedding.weight.shape[0])
    for name, value in (("input_resolution", height), ("context_length", context_length), ("vocab_size", vocab_size)):
        if hasattr(m, name):  # open_clip keeps the last two as plain int attributes
            delattr(m, name)
        m.register_buffer(name, torch.tensor(value, dtype=torch.int64))
    image = torch.zeros(1, 3, height, width)
    text = torch.zeros(1, context_length, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 flags torch.jit as deprecated
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace_module(
            m,
            {"forward": (image, text), "encode_image": (image,), "encode_text": (text,)},
            check_trace=False,  # open_clip's attention fast paths make repeated traces differ textually
        )
        if dtype is not None:
            traced = traced.to(dtype)  # floating tensors only; the int64 metadata stays int64
        with atomic_write(path, "wb") as f:
            torch.jit.save(traced, f)


def save_sam_state_dict(sam: Sam, path: str | os.PathLike[str]) -> None:
    """Write ``sam.state_dict()`` with ``torch.save`` (atomically): the layout of Meta's ``sam_vit_*.pth`` files."""
    sd = {k: v.detach().cpu().contiguous() for k, v in sam.state_dict().items()}
    with atomic_write(path, "wb") as f:
        torch.save(sd, f)
