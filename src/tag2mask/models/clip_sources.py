"""CLIP weights in other layouts than OpenAI's: Hugging Face ``CLIPModel`` folders and OpenCLIP checkpoints.

tag2mask computes CAMs with one implementation, on open_clip's ``CLIP`` (:mod:`tag2mask.models.clip_cam` for the
image side, :mod:`tag2mask.models.prompts` for the text side). Every source is turned into that model, and
:func:`tag2mask.models.clip.load_clip` is the one entry point:

* **Hugging Face** (``openai/clip-vit-base-patch16`` and any other ``CLIPModel``): ``config.json`` beside
  ``model.safetensors`` or ``pytorch_model.bin``. :func:`read_hf_config` reads the sizes, the head counts, the
  activation (``hidden_act``: ``quick_gelu`` is QuickGELU, ``gelu`` exact GELU, anything else is refused), the
  LayerNorm epsilon and the token the text is pooled at; :func:`hf_to_openai` renames the tensors to OpenAI's key
  layout (the q/k/v projections joined into ``in_proj_weight``/``in_proj_bias``, the two projections transposed);
  :func:`check_hf_config_fits` compares the config with the tensors, so that nothing is built from a config the
  weights contradict; :func:`build_hf_clip` makes the open_clip model of those sizes. The text must be read with
  OpenAI's BPE tokenizer (vocabulary 49,408, context 77) and pooled at the end-of-text token, as tag2mask's
  tokenizer and prompt learner do (HF pools at the first ``eos_token_id``, or at the largest token id when the
  config has the legacy ``eos_token_id`` 2: with OpenAI's vocabulary both are the end-of-text token, id 49,407,
  the largest); other configs are refused.
* **OpenCLIP** (e.g. LAION's ``open_clip_pytorch_model.bin`` of ``ViT-B-16``): a state dict with open_clip's key
  names (which are OpenAI's) and the model name it was trained as, whose built-in config decides everything
  (``ViT-B-16`` is exact GELU, ``ViT-B-16-quickgelu`` QuickGELU). :func:`open_clip_model` builds it; configs
  that would fetch anything (timm or Hugging Face towers) or that the CAM model cannot run are refused before
  anything is built.

:func:`check_cam_ready` says what the CAM model needs of a CLIP, whatever its source.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.transformer import QuickGELU, VisionTransformer
from torch import nn

from tag2mask.errors import Tag2MaskError
from tag2mask.models.checkpoint import read_json_file

OPENAI_VOCAB_SIZE = 49408
OPENAI_CONTEXT_LENGTH = 77
"""What tag2mask's tokenizer (:func:`tag2mask.models.clip.clip_tokenizer`, OpenAI's BPE) produces."""
END_OF_TEXT = 49407
"""OpenAI's end-of-text token id: the largest id of the vocabulary, so ``argmax`` over the ids finds it."""
LEGACY_EOS = 2
"""The ``eos_token_id`` of early HF CLIP configs; transformers then pools at the largest token id (argmax)."""

MAX_CONFIG_BYTES = 1 << 20
"""A ``config.json`` larger than this is refused unread (real ones are about 5 kB)."""

ACTIVATIONS: dict[str, type[nn.Module]] = {"quick_gelu": QuickGELU, "gelu": nn.GELU}
"""HF ``hidden_act`` values tag2mask can build: ``quick_gelu`` (x·σ(1.702x), OpenAI's) and ``gelu`` (exact)."""

# transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults: what transformers itself uses for a key
# that a config.json leaves out (save_pretrained of older versions wrote only the values that differ).
_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "eos_token_id": END_OF_TEXT,
}
_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
_CLIP_DEFAULTS: dict[str, Any] = {"projection_dim": 512}


# ----------------------------------------------------------------------------------------------- Hugging Face


@dataclass(frozen=True)
class Tower:
    """One transformer tower of a HF CLIP config."""

    width: int  # hidden_size
    layers: int  # num_hidden_layers
    heads: int  # num_attention_heads
    mlp_width: int  # intermediate_size
    act: str  # hidden_act
    eps: float  # layer_norm_eps


@dataclass(frozen=True)
class HfClipConfig:
    """What tag2mask reads from a HF ``CLIPModel`` ``config.json`` (checked: every value is one it can build)."""

    embed_dim: int  # projection_dim
    vision: Tower
    patch_size: int
    image_size: int
    text: Tower
    vocab_size: int
    context_length: int  # max_position_embeddings
    eos_token_id: int


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (at most :data:`MAX_CONFIG_BYTES`), or a Tag2MaskError naming the file."""
    obj = read_json_file(path, MAX_CONFIG_BYTES, "the CLIP config")
    if not isinstance(obj, dict):
        raise Tag2MaskError(f"the CLIP config {path} is not a JSON object")
    return obj


def _section(config: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = config.get(key) or {}  # transformers fills a missing tower config with its defaults
    if not isinstance(value, dict):
        raise Tag2MaskError(f"the CLIP config {path}: {key} is not a JSON object")
    return value


def _positive_int(section: dict[str, Any], defaults: dict[str, Any], key: str, where: str) -> int:
    value = section.get(key, defaults.get(key))
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:  # a square (side, side)
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise Tag2MaskError(f"{where}: {key} must be a positive integer, not {value!r}")
    return value


def _tower(section: dict[str, Any], defaults: dict[str, Any], where: str) -> Tower:
    width = _positive_int(section, defaults, "hidden_size", where)
    heads = _positive_int(section, defaults, "num_attention_heads", where)
    if width % heads:
        raise Tag2MaskError(f"{where}: hidden_size {width} is not a multiple of num_attention_heads {heads}")
    act = section.get("hidden_act", defaults["hidden_act"])
    if act not in ACTIVATIONS:
        raise Tag2MaskError(
            f"{where}: hidden_act {act!r} is not one tag2mask can build; it builds {' and '.join(ACTIVATIONS)} "
            f"(QuickGELU and exact GELU), the activations CLIP checkpoints are trained with"
        )
    eps = section.get("layer_norm_eps", defaults["layer_norm_eps"])
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and 0 < eps < 1):
        raise Tag2MaskError(f"{where}: layer_norm_eps must be a number between 0 and 1, not {eps!r}")
    return Tower(
        width=width,
        layers=_positive_int(section, defaults, "num_hidden_layers", where),
        heads=heads,
        mlp_width=_positive_int(section, defaults, "intermediate_size", where),
        act=act,
        eps=float(eps),
    )


def read_hf_config(path: str | Path) -> HfClipConfig:
    """Read and check a HF ``CLIPModel`` ``config.json``; keys it leaves out take transformers' defaults.

    Raises:
        Tag2MaskError: the file is missing, too large or not JSON; it is not a CLIP config; a value cannot be
            built (an activation other than ``quick_gelu``/``gelu``, sizes that are not positive integers); or
            its text side does not read OpenAI's tokens (vocabulary other than 49,408, context other than 77,
            pooling at another token than end-of-text).
    """
    path = Path(path)
    if not path.is_file():
        raise Tag2MaskError(
            f"Hugging Face CLIP weights need their config.json beside them: {path} is missing (it gives the head "
            f"counts and the activation, which the weights alone do not). Copy the repository's config.json there."
        )
    config = _json_object(path)
    model_type = config.get("model_type", "clip")
    if model_type != "clip":
        raise Tag2MaskError(
            f"{path} describes a {model_type!r} model, not a CLIP (model_type 'clip', class CLIPModel)"
        )
    text, vision = _section(config, "text_config", path), _section(config, "vision_config", path)
    result = HfClipConfig(
        embed_dim=_positive_int(config, _CLIP_DEFAULTS, "projection_dim", f"{path}"),
        vision=_tower(vision, _VISION_DEFAULTS, f"{path} vision_config"),
        patch_size=_positive_int(vision, _VISION_DEFAULTS, "patch_size", f"{path} vision_config"),
        image_size=_positive_int(vision, _VISION_DEFAULTS, "image_size", f"{path} vision_config"),
        text=_tower(text, _TEXT_DEFAULTS, f"{path} text_config"),
        vocab_size=_positive_int(text, _TEXT_DEFAULTS, "vocab_size", f"{path} text_config"),
        context_length=_positive_int(text, _TEXT_DEFAULTS, "max_position_embeddings", f"{path} text_config"),
        eos_token_id=_positive_int(text, _TEXT_DEFAULTS, "eos_token_id", f"{path} text_config"),
    )
    _check_tokens(result, path)
    channels = _positive_int(vision, _VISION_DEFAULTS, "num_channels", f"{path} vision_config")
    if channels != 3:
        raise Tag2MaskError(f"{path}: the image tower reads {channels} channels; tag2mask feeds RGB images (3)")
    return result


def _check_tokens(config: HfClipConfig, path: Path) -> None:
    """Refuse a text side that tag2mask's tokenizer and EOT pooling would feed or read wrongly."""
    if (config.vocab_size, config.context_length) != (OPENAI_VOCAB_SIZE, OPENAI_CONTEXT_LENGTH):
        raise Tag2MaskError(
            f"{path}: the text tower has a vocabulary of {config.vocab_size} tokens and a context of "
            f"{config.context_length}; tag2mask tokenises prompts with OpenAI's BPE ({OPENAI_VOCAB_SIZE} tokens, "
            f"context {OPENAI_CONTEXT_LENGTH}), which would feed this model wrong token ids"
        )
    if config.eos_token_id not in (END_OF_TEXT, LEGACY_EOS):
        raise Tag2MaskError(
            f"{path}: the text is pooled at token id {config.eos_token_id}; tag2mask pools at OpenAI's end-of-text "
            f"token ({END_OF_TEXT}, the largest id), as configs with eos_token_id {END_OF_TEXT} or the legacy "
            f"{LEGACY_EOS} do"
        )


def is_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether the keys are a HF ``CLIPModel``'s (``text_model.*``, ``vision_model.*``) rather than OpenAI's."""
    return any(k.startswith(("text_model.", "vision_model.")) for k in state_dict)


# HF name → OpenAI name, per tower prefix and inside every encoder layer.
_TOWER_PREFIXES = {"vision_model.encoder.layers.": "visual.transformer.resblocks.",
                   "text_model.encoder.layers.": "transformer.resblocks."}
_LAYER_RENAMES = {"self_attn.out_proj.": "attn.out_proj.", "layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.",
                  "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}
_RENAMES = {
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: HF's spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
_TRANSPOSED = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}
_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")  # older files; not weights
_QKV = re.compile(r"self_attn\.(?P<which>[qkv])_proj\.(?P<kind>weight|bias)")


def hf_to_openai(state_dict: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """A HF ``CLIPModel`` state dict under OpenAI's key names (the layout open_clip's ``CLIP`` loads).

    Raises:
        Tag2MaskError: a tensor of a full ``CLIPModel`` is missing (e.g. a vision-only model), or a key is not
            one of a ``CLIPModel``'s (naming it).
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key in _BUFFERS:
            continue
        if key in _RENAMES:
            out[_RENAMES[key]] = value
            continue
        if key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
            continue
        prefix = next((p for p in _TOWER_PREFIXES if key.startswith(p)), "")
        index, _, name = key[len(prefix):].partition(".")
        if not prefix or not index.isdigit():
            raise Tag2MaskError(f"CLIP weight file {path}: {key!r} is not a key of a Hugging Face CLIPModel")
        layer = f"{_TOWER_PREFIXES[prefix]}{index}."
        if (m := _QKV.fullmatch(name)) is not None:
            qkv.setdefault((layer, m["kind"]), {})[m["which"]] = value
            continue
        new = next((new + name[len(old):] for old, new in _LAYER_RENAMES.items() if name.startswith(old)), None)
        if new is None:
            raise Tag2MaskError(f"CLIP weight file {path}: {key!r} is not a key of a Hugging Face CLIPModel")
        out[layer + new] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise Tag2MaskError(f"CLIP weight file {path}: layer {layer} lacks a {kind} of q, k or v")
        out[f"{layer}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    needed = [*_RENAMES.values(), *_TRANSPOSED.values()]
    missing = [k for k in needed if k not in out]
    if missing:
        hf_names = {v: k for k, v in {**_RENAMES, **_TRANSPOSED}.items()}
        raise Tag2MaskError(
            f"CLIP weight file {path} is not a full Hugging Face CLIPModel (both towers and both projections): "
            f"{hf_names[missing[0]]!r} is missing" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    return out


def _layer_count(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(m[1]) for k in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(indices) + 1 if indices else 0


def _dim(state_dict: dict[str, torch.Tensor], key: str, axis: int) -> int | None:
    t = state_dict.get(key)
    return int(t.shape[axis]) if t is not None and t.ndim > max(axis, -axis - 1) else None


def check_hf_config_fits(config: HfClipConfig, state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Compare the config's sizes with the (converted) tensors' shapes, before anything is built from them.

    Raises:
        Tag2MaskError: naming the first size on which ``config.json`` and the weights disagree.
    """
    v, t, sd = config.vision, config.text, state_dict
    grid = config.image_size // config.patch_size
    checks = (
        ("vision_config.hidden_size", v.width, _dim(sd, "visual.conv1.weight", 0)),
        ("vision_config.patch_size", config.patch_size, _dim(sd, "visual.conv1.weight", -1)),
        ("vision_config.num_hidden_layers", v.layers, _layer_count(sd, "visual.transformer.resblocks.")),
        ("vision_config.intermediate_size", v.mlp_width, _dim(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", 0)),
        ("vision_config.image_size (as patches + 1)", grid * grid + 1, _dim(sd, "visual.positional_embedding", 0)),
        ("text_config.hidden_size", t.width, _dim(sd, "token_embedding.weight", 1)),
        ("text_config.vocab_size", config.vocab_size, _dim(sd, "token_embedding.weight", 0)),
        ("text_config.max_position_embeddings", config.context_length, _dim(sd, "positional_embedding", 0)),
        ("text_config.num_hidden_layers", t.layers, _layer_count(sd, "transformer.resblocks.")),
        ("text_config.intermediate_size", t.mlp_width, _dim(sd, "transformer.resblocks.0.mlp.c_fc.weight", 0)),
        ("projection_dim (image)", config.embed_dim, _dim(sd, "visual.proj", 1)),
        ("projection_dim (text)", config.embed_dim, _dim(sd, "text_projection", 1)),
    )
    for what, in_config, in_weights in checks:
        if in_config != in_weights:
            raise Tag2MaskError(
                f"{Path(path).parent / 'config.json'} and the weights {path} disagree: {what} is {in_config} in the "
                f"config, {in_weights if in_weights is not None else 'absent'} in the weights"
            )


def _norm_kwargs(eps: float) -> dict[str, float] | None:
    return None if eps == 1e-5 else {"eps": eps}  # 1e-5: open_clip's LayerNorm default


def set_activation(blocks: nn.ModuleList, act: str) -> None:
    """Give every residual block's MLP the activation ``act`` (a key of :data:`ACTIVATIONS`)."""
    for block in blocks:
        block.mlp.gelu = ACTIVATIONS[act]()


def build_hf_clip(config: HfClipConfig) -> CLIP:
    """A random open_clip ``CLIP`` of the config's sizes, head counts, LayerNorm epsilon and activations (float32)."""
    v, t = config.vision, config.text
    for name, tower in (("vision", v), ("text", t)):
        if int(tower.width * (tower.mlp_width / tower.width)) != tower.mlp_width:  # how open_clip sizes its MLP
            raise Tag2MaskError(f"{name} intermediate_size {tower.mlp_width} cannot be built by open_clip as a "
                                f"multiple of hidden_size {tower.width}")
    vision_cfg = CLIPVisionCfg(
        layers=v.layers, width=v.width, head_width=v.width // v.heads, mlp_ratio=v.mlp_width / v.width,
        patch_size=config.patch_size, image_size=config.image_size, norm_kwargs=_norm_kwargs(v.eps),
    )
    text_cfg = CLIPTextCfg(
        context_length=config.context_length, vocab_size=config.vocab_size, width=t.width, heads=t.heads,
        layers=t.layers, mlp_ratio=t.mlp_width / t.width, norm_kwargs=_norm_kwargs(t.eps),
    )
    model = CLIP(config.embed_dim, vision_cfg, text_cfg, quick_gelu=False)
    set_activation(model.visual.transformer.resblocks, v.act)
    set_activation(model.transformer.resblocks, t.act)
    return model.float()


# ----------------------------------------------------------------------------------------------- OpenCLIP

_ARCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_CUSTOM_ATTENTION = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")


def _open_clip_config_problem(config: dict[str, Any]) -> str | None:
    """Why the CAM model cannot run an OpenCLIP config (read before building, so nothing is fetched), or None."""
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if vision.get("timm_model_name"):
        return f"its image tower is the timm model {vision['timm_model_name']!r}, not open_clip's ViT"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "its image tower is a ResNet; the CAM model needs a ViT"
    if text.get("hf_model_name") or text.get("hf_tokenizer_name"):
        return "its text tower or tokenizer is a Hugging Face model; tag2mask reads prompts with OpenAI's BPE"
    if config.get("custom_text") or "multimodal_cfg" in config:
        return "it has a custom text tower (CustomTextCLIP or CoCa); tag2mask's prompt learner needs open_clip's CLIP"
    if vision.get("attentional_pool"):
        return "its image tower pools with attention, which the CAM model (patch-token mean) does not reproduce"
    for tower, cfg in (("image", vision), ("text", text)):
        custom = [k for k in _CUSTOM_ATTENTION if cfg.get(k)]
        if custom or cfg.get("block_type") == "custom":
            return f"its {tower} tower uses custom attention blocks ({', '.join(custom) or 'block_type custom'})"
    return None


@contextlib.contextmanager
def _without_random_init_warning() -> Iterator[None]:
    """Hide open_clip's "No pretrained weights loaded ... initialized randomly" (weights are loaded right after)."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def open_clip_model(arch: str) -> CLIP:
    """A random open_clip model of the built-in config ``arch`` (e.g. ``"ViT-B-16"``), float32; never fetches.

    Raises:
        Tag2MaskError: ``arch`` is not a built-in model name (the message lists close ones), or a model the CAM
            model cannot run (see :func:`check_cam_ready`).
    """
    import open_clip

    if not _ARCH.fullmatch(arch):
        raise Tag2MaskError(
            f"OpenCLIP model name {arch!r}: give a built-in name such as 'ViT-B-16' (no schema or path)"
        )
    config = open_clip.get_model_config(arch)
    if config is None:
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.6)
        raise Tag2MaskError(
            f"{arch!r} is not an OpenCLIP model name" + (f"; close ones: {', '.join(close)}" if close else "")
            + " (open_clip.list_models() lists them all)"
        )
    problem = _open_clip_config_problem(config)
    if problem is not None:
        raise Tag2MaskError(f"OpenCLIP model {arch!r} cannot be used for CAMs: {problem}")
    with _without_random_init_warning():
        model = open_clip.create_model(arch, pretrained=None, precision="fp32", device="cpu")
    check_cam_ready(model, f"OpenCLIP model {arch!r}")
    return model


def open_clip_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """An OpenCLIP checkpoint's state dict as its model loads it: the ``module.`` prefix of a training checkpoint
    (DDP) removed, ``logit_scale`` shaped like the model's (scalar or 1-element)."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    scale = state_dict.get("logit_scale")
    if scale is not None and scale.numel() == 1 and hasattr(model, "logit_scale"):
        state_dict["logit_scale"] = scale.reshape(model.logit_scale.shape)
    return state_dict


# ----------------------------------------------------------------------------------------------- any source


def cam_problems(model: nn.Module) -> list[str]:
    """Why tag2mask's CAM model (:func:`tag2mask.models.clip_cam.vit_forward`, the prompt learner and
    :func:`tag2mask.models.prompts.encode_prompts`) cannot run ``model``; empty when it can."""
    if not isinstance(model, CLIP):
        return [f"it is a {type(model).__name__}, not open_clip's CLIP (a custom text tower)"]
    problems = []
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        problems.append(f"its image tower is a {type(visual).__name__} (a ResNet or timm tower), not a ViT")
    else:
        if getattr(visual, "attn_pool", None) is not None:
            problems.append("its image tower pools with attention")
        if not isinstance(getattr(visual, "proj", None), torch.Tensor):
            problems.append("its image tower has no projection (proj)")
        patches = int(visual.positional_embedding.shape[0]) - 1
        if round(patches**0.5) ** 2 != patches:
            problems.append(f"its positional embedding ({patches} patches) is not a square grid")
    blocks = [*getattr(getattr(visual, "transformer", None), "resblocks", []), *model.transformer.resblocks]
    if any(not isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in blocks):
        problems.append("it uses custom attention blocks, not nn.MultiheadAttention")
    if not isinstance(model.text_projection, torch.Tensor):
        problems.append("its text projection is not a matrix")
    if model.text_pool_type != "argmax" or model.attn_mask is None:
        problems.append("its text tower is not pooled at the end-of-text token under a causal mask")
    context, vocab = int(model.positional_embedding.shape[0]), int(model.token_embedding.weight.shape[0])
    if (vocab, context) != (OPENAI_VOCAB_SIZE, OPENAI_CONTEXT_LENGTH):
        problems.append(f"its text tower reads {vocab} tokens in a context of {context}, not OpenAI's BPE "
                        f"({OPENAI_VOCAB_SIZE}, {OPENAI_CONTEXT_LENGTH})")
    return problems


def check_cam_ready(model: nn.Module, source: str) -> None:
    """Raise a Tag2MaskError naming ``source`` and every reason when the CAM model cannot run ``model``."""
    problems = cam_problems(model)
    if problems:
        raise Tag2MaskError(f"{source}: tag2mask's CAM model cannot run this CLIP: {'; '.join(problems)}")
