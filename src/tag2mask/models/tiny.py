"""Tiny random CLIP and SAM models of the real code (writers of the official checkpoint layouts: :mod:`tag2mask.testing`).

They exist for tests and the offline demo: no weights can be downloaded there, so the loaders are tested
by round trip (build a random model, save it as the official file would be, load it back through the
public loader) and the pipeline runs end to end on these tiny models.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


OPENAI_VOCAB_SIZE = 49408
OPENAI_CONTEXT_LENGTH = 77
OPENAI_HEAD_WIDTH = 64
"""OpenAI checkpoints do not store head counts; loaders infer ``heads = width // 64`` for both towers."""

TINY_SAM_IMG_SIZE = 256
"""Default input side of :func:`tiny_sam` (the real SAM uses 1024)."""


def tiny_clip(
    seed: int = 0,
    width: int = 128,
    layers: int = 2,
    heads: int = 2,
    patch: int = 16,
    image_size: int = 224,
    embed_dim: int = 32,
    text_width: int = 128,
    text_layers: int = 2,
    text_heads: int = 2,
) -> CLIP:
    """A random OpenAI-architecture CLIP ViT: QuickGELU, vocabulary 49408, context length 77.

    Deterministic for a given ``seed`` (the global RNG is left untouched). Float32, eval mode,
    ``requires_grad_(False)``, like :func:`tag2mask.models.clip.load_clip`. ``exp(logit_scale)`` is 100, as in
    OpenAI's checkpoints.

    Head counts must be ``width // 64`` (``text_width // 64``): OpenAI checkpoints do not record them, so a
    loader infers them that way, and any other count would not survive a save/load round trip. The real
    ViT-B/16 is ``width=768, layers=12, heads=12, embed_dim=512, text_width=512, text_layers=12, text_heads=8``.
    """
    for tower, w, h in (("vision", width, heads), ("text", text_width, text_heads)):
        if w != h * OPENAI_HEAD_WIDTH:
            raise ValueError(
                f"{tower} width {w} with {h} heads: OpenAI-layout CLIP needs width == 64 * heads "
                f"(head count is inferred as width // 64 on load)"
            )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(
            embed_dim,
            vision_cfg=CLIPVisionCfg(
                layers=layers, width=width, head_width=OPENAI_HEAD_WIDTH, patch_size=patch, image_size=image_size
            ),
            text_cfg=CLIPTextCfg(
                context_length=OPENAI_CONTEXT_LENGTH,
                vocab_size=OPENAI_VOCAB_SIZE,
                width=text_width,
                heads=text_heads,
                layers=text_layers,
            ),
            quick_gelu=True,
        )
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    return model.float().eval().requires_grad_(False)


def tiny_sam(seed: int = 0, img_size: int = TINY_SAM_IMG_SIZE) -> Sam:
    """A random SAM of segment_anything's own classes, small enough to run in milliseconds on CPU.

    Same structure as the real models, scaled down: image encoder ViT with embed dim 32, depth 2, 2 heads,
    windowed attention (window 14) then global attention in the last block, patch 16, relative positions;
    prompt/transformer dim 32 (the real one is 256); two-way transformer depth 2 with 2 heads; 3 multimask
    outputs. ``img_size`` (a multiple of 16) replaces the real 1024: everything in segment_anything
    (``SamPredictor``, ``ResizeLongestSide``, padding, mask post-processing) follows ``image_encoder.img_size``;
    low-resolution masks are ``img_size // 4`` square. Deterministic for a given ``seed``; eval mode.

    :func:`tag2mask.models.sam.load_sam` loads its saved state dict with ``model_type="tiny"`` and reads
    ``img_size`` back from the positional embedding's shape.
    """
    if img_size % 16 != 0 or img_size <= 0:
        raise ValueError(f"img_size must be a positive multiple of 16, not {img_size}")
    dim = 32
    grid = img_size // 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=2,
                embed_dim=dim,
                img_size=img_size,
                mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=2,
                patch_size=16,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=(1,),
                window_size=14,
                out_chans=dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim,
                image_embedding_size=(grid, grid),
                input_image_size=(img_size, img_size),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
                transformer_dim=dim,
                iou_head_depth=3,
                iou_head_hidden_dim=dim,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
        # segment_anything zero-initialises the relative position tables; random ones exercise that code path.
        for block in sam.image_encoder.blocks:
            torch.nn.init.normal_(block.attn.rel_pos_h, std=0.02)
            torch.nn.init.normal_(block.attn.rel_pos_w, std=0.02)
        # pos_embed is zero-initialised too.
        torch.nn.init.normal_(sam.image_encoder.pos_embed, std=0.02)
    return sam.eval()


