"""Loading CLIP weights into an open_clip model, and the matching tokenizer.

The files are OpenAI's official ones (``ViT-B-16.pt`` and friends: TorchScript archives holding fp16 weights)
or plain state dicts with the same key names, as ``torch.save`` or safetensors files. The architecture is read
off the tensor shapes (patch size from ``visual.conv1.weight``, input side from the positional embedding), so any
OpenAI-layout checkpoint loads, including the tiny random ones of :mod:`tag2mask.models.tiny` and the packaged
``"tiny-synthetic"`` model of the demo (a safetensors file, see :mod:`tag2mask.models.weights`).

Two other sources load into the same model (:mod:`tag2mask.models.clip_sources`): a Hugging Face ``CLIPModel``
(a folder, a weight file with its ``config.json`` beside it, or a hub repository name such as
``openai/clip-vit-base-patch16`` found in the weights folder or the hub cache), and an OpenCLIP checkpoint with
its model name (``arch="ViT-B-16"``).
"""

from __future__ import annotations

import os

import torch
from open_clip.model import CLIP, build_model_from_openai_state_dict
from open_clip.tokenizer import SimpleTokenizer

from tag2mask.errors import Tag2MaskError
from tag2mask.models.checkpoint import read_state_dict, short_reason
from tag2mask.models.clip_sources import (
    build_hf_clip,
    check_cam_ready,
    check_hf_config_fits,
    hf_to_openai,
    is_hf_state_dict,
    open_clip_model,
    open_clip_state_dict,
    read_hf_config,
)
from tag2mask.models.weights import resolve_clip

CONTEXT_LENGTH = 77
"""Tokens per prompt for every OpenAI CLIP model."""

# Entries of OpenAI's TorchScript archives that are metadata, not parameters.
_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Keys every OpenAI-layout CLIP state dict has (the visual tower is checked separately: ViT or ResNet).
_REQUIRED_KEYS = ("text_projection", "token_embedding.weight", "positional_embedding", "ln_final.weight")


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` starts like a safetensors file: an 8-byte little-endian header size, then ``{``."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8


def _read_safetensors(path: os.PathLike[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        state_dict = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ...
        raise Tag2MaskError(
            f"cannot read CLIP weight file {path} ({type(e).__name__}): a corrupt or truncated safetensors file"
        ) from e
    if not state_dict:
        raise Tag2MaskError(f"CLIP weight file {path} holds no tensors.")
    return expand_token_embedding(state_dict)


SPARSE_ROWS, SPARSE_VALUES, SPARSE_SHAPE = (
    "token_embedding.sparse_rows", "token_embedding.sparse_values", "token_embedding.sparse_shape"
)


def compact_token_embedding(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Store only the non-zero rows of ``token_embedding.weight`` (a small model trained on a few words leaves
    most of the 49,408 rows zero); :func:`expand_token_embedding` restores the full matrix on load."""
    out = dict(state_dict)
    weight = out.pop("token_embedding.weight")
    rows = weight.abs().sum(dim=1).nonzero().flatten()
    out[SPARSE_ROWS], out[SPARSE_VALUES] = rows.to(torch.int64), weight[rows].contiguous()
    out[SPARSE_SHAPE] = torch.tensor(weight.shape, dtype=torch.int64)
    return out


def expand_token_embedding(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo :func:`compact_token_embedding` (a no-op for ordinary state dicts)."""
    if SPARSE_ROWS not in state_dict:
        return state_dict
    rows, values = state_dict.pop(SPARSE_ROWS), state_dict.pop(SPARSE_VALUES)
    weight = values.new_zeros(tuple(int(v) for v in state_dict.pop(SPARSE_SHAPE)))
    weight[rows] = values
    state_dict["token_embedding.weight"] = weight
    return state_dict


def load_clip(
    name_or_path: str | os.PathLike[str] = "ViT-B/16", device: str | torch.device = "cpu", *, arch: str = ""
) -> CLIP:
    """Load a CLIP checkpoint as a frozen float32 open_clip model that tag2mask's CAM model can run.

    Args:
        name_or_path: one of
            - a known name (``"ViT-B/16"``, ``"ViT-B/32"``, ``"ViT-L/14"``, ``"ViT-L/14@336px"``), looked up in the
              weights folder (see :func:`tag2mask.models.weights.resolve_weight`), or ``"tiny-synthetic"``, the
              tiny CLIP packaged with tag2mask for the offline demo;
            - the path of an OpenAI-layout file: OpenAI's TorchScript archive, a ``torch.save`` state dict with
              OpenAI key names (bare or under ``"state_dict"``), or a safetensors file with those key names;
            - a Hugging Face ``CLIPModel``: its folder (``config.json`` with ``model.safetensors`` or
              ``pytorch_model.bin``, or a sharded checkpoint's ``*.index.json`` with its shards), one of those
              weight files with its ``config.json`` beside it, or its hub repository name
              (``"openai/clip-vit-base-patch16"``), found as a folder of that name in the weights folder or in the
              Hugging Face hub cache (:func:`tag2mask.models.weights.resolve_clip`);
            - with ``arch``: an OpenCLIP checkpoint (a file, or a folder / hub repository holding
              ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``).
            fp16 or fp32. Nothing is ever downloaded.
        device: where the returned model lives.
        arch: the OpenCLIP model name the checkpoint was trained as (``"ViT-B-16"``, ``"ViT-B-16-quickgelu"``, ...);
            its built-in config decides the architecture and activation. Empty: OpenAI or Hugging Face layout,
            told apart by the key names.

    Returns:
        The open_clip ``CLIP`` model, float32, in eval mode, with ``requires_grad_(False)`` on every parameter. Its
        activation is QuickGELU for OpenAI-layout files, the config's ``hidden_act`` for Hugging Face ones and the
        model config's for OpenCLIP ones.

    Raises:
        MissingWeightsError: the file is not there (the message says where to get it).
        Tag2MaskError: the file is unreadable, is not a checkpoint of the layout given, disagrees with its config,
            or holds a CLIP that the CAM model cannot run (a ResNet image tower, attentional pooling, custom
            attention, another tokenizer).
    """
    path = resolve_clip(name_or_path, arch)
    sharded = path.name.endswith(".index.json")  # a sharded Hugging Face checkpoint: read_state_dict joins it
    state_dict = _read_safetensors(path) if is_safetensors(path) and not sharded else read_state_dict(path, "CLIP")
    for key in _METADATA_KEYS:
        state_dict.pop(key, None)
    if arch:
        if is_hf_state_dict(state_dict):
            raise Tag2MaskError(
                f"CLIP weight file {path} holds a Hugging Face CLIPModel; an OpenCLIP model name ({arch!r}) applies to "
                f"OpenCLIP checkpoints only: leave it empty (models.clip_arch=) and pass the folder with config.json"
            )
        model = open_clip_model(arch)
        state_dict = open_clip_state_dict(state_dict, model)
        source = f"OpenCLIP {arch!r} weight file {path}"
    elif is_hf_state_dict(state_dict):
        config = read_hf_config(path.parent / "config.json")
        state_dict = hf_to_openai(state_dict, path)
        check_hf_config_fits(config, state_dict, path)
        model = build_hf_clip(config)
        source = f"Hugging Face CLIP weight file {path}"
    else:
        model = _build_openai(state_dict, path)
        source = f"CLIP weight file {path}"
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, KeyError, ValueError, IndexError, TypeError) as e:
        raise Tag2MaskError(f"{source} does not fit its architecture: {short_reason(e)}") from e
    check_cam_ready(model, source)
    model.eval().requires_grad_(False)
    return model.to(device)


def _build_openai(state_dict: dict[str, torch.Tensor], path: os.PathLike[str]) -> CLIP:
    """The float32 open_clip model (QuickGELU) of an OpenAI-layout state dict, its sizes read off the shapes."""
    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    if missing or not ("visual.proj" in state_dict or "visual.attnpool.positional_embedding" in state_dict):
        raise Tag2MaskError(
            f"CLIP weight file {path} is not an OpenAI-format CLIP checkpoint (missing keys such as "
            f"{(missing or ['visual.proj'])[0]!r}); expected OpenAI's official file (e.g. ViT-B-16.pt), a state "
            f"dict with its key names, or a Hugging Face CLIPModel (with its config.json); an OpenCLIP checkpoint "
            f"needs its model name (models.clip_arch)."
        )
    try:
        # QuickGELU (x * sigmoid(1.702 x)) is the activation OpenAI trained every CLIP MLP with. open_clip's
        # plain configs use exact GELU; the weights load into either without complaint, but with exact GELU
        # every feature is silently (slightly) wrong, and the CAMs with them. So quick_gelu=True, always.
        model = build_model_from_openai_state_dict(state_dict, quick_gelu=True, cast_dtype=None)
    except (RuntimeError, KeyError, ValueError, IndexError, AssertionError, TypeError) as e:
        raise Tag2MaskError(
            f"CLIP weight file {path} does not fit an OpenAI CLIP architecture: {short_reason(e)}"
        ) from e
    # open_clip builds some layers in fp16 before loading; make every tensor float32 and load again (the caller),
    # so an fp32 checkpoint keeps its full precision (for fp16 files the second load changes nothing).
    return model.float()


def clip_tokenizer() -> SimpleTokenizer:
    """open_clip's tokenizer for OpenAI's BPE vocabulary (ships with open_clip); ``tok(["a dog"])`` gives
    a ``LongTensor`` of shape ``(1, 77)``."""
    return SimpleTokenizer()
