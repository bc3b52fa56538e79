"""Transformers mask models without weight files: the official architectures with random weights (benchmarks,
the device check), tiny ones (tests and CPU checks), and segment_anything's SAM converted to transformers'
``SamModel`` (the proof that :class:`tag2mask.models.sam_hf.HFSamPredictor` equals segment_anything's predictor on the
same weights). Nothing in the pipeline imports this module."""

from __future__ import annotations

from typing import Any

import torch

from tag2mask.models.sam_hf import mask_source, model_class

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
    cls = model_class(mask_source(source).kind)
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
