"""A CAM-ready forward of open_clip's CLIP vision transformer (SPEC §1.3, Appendix C).

The ViT itself is unchanged; the forward differs from ``CLIP.encode_image`` in four ways:

1. the patch positional embedding is resized bilinearly (``align_corners=False``) to the actual patch grid,
   the class position kept as is, so any input whose sides are multiples of the patch size works;
2. the last block is unrolled: its ``ln_1`` output ``A`` is a fresh leaf tensor that requires grad (the
   GradCAM activation), then ``x = x + attn(A)`` and ``x = x + mlp(ln_2(x))`` as usual;
3. the image embedding is the mean over the *patch* tokens of ``ln_post(tokens) @ proj`` (class token excluded);
4. optionally the head-averaged attention map of every block is collected (for CAA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VisionOutput:
    """What :func:`vit_forward` returns for ``N`` images on an ``h×w`` patch grid (``L = 1 + h·w`` tokens)."""

    embedding: torch.Tensor  # N×E: mean of projected patch tokens
    activation: torch.Tensor  # N×L×D: ln_1 output of the last block (leaf, requires grad)
    grid: tuple[int, int]  # (h, w)
    attentions: list[torch.Tensor] | None  # per block N×L×L head-averaged attention (rows are queries)


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a ``(1 + g·g)×D`` positional embedding to ``(1 + h·w)×D`` (SPEC §1.3 item 1).

    The class position is kept; the patch part is resized bilinearly with ``align_corners=False``. No
    resize (the same tensor) when the grid already matches.
    """
    n_patch = pos.shape[0] - 1
    side = int(round(n_patch**0.5))
    if side * side != n_patch:
        raise ValueError(f"positional embedding of {n_patch} patches is not a square grid")
    h, w = grid
    if (h, w) == (side, side):
        return pos
    patch = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(h, w), mode="bilinear", align_corners=False)
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(h * w, -1)], dim=0)


def _attend(block: nn.Module, x: torch.Tensor, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``block.attn`` on N×L×D input, returning N×L×D output and the head-averaged N×L×L weights."""
    attn: nn.MultiheadAttention = block.attn
    q = x if attn.batch_first else x.transpose(0, 1)
    out, weights = attn(q, q, q, need_weights=need_weights, average_attn_weights=True)
    return (out if attn.batch_first else out.transpose(0, 1)), weights


def _block(block: nn.Module, x: torch.Tensor, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    out, weights = _attend(block, block.ln_1(x), need_weights)
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, weights


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is in half precision (float16 / bfloat16); float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def vit_forward(
    visual: nn.Module, images: torch.Tensor, need_attention: bool = False, pos_embed_f16: bool = False
) -> VisionOutput:
    """The CAM-ready forward of an open_clip ``VisionTransformer`` on N×3×H×W images (H, W multiples of the patch).

    ``pos_embed_f16`` rounds the resized positional embedding to float16 before it is added, as CLIP-ES does even
    in float32 (CONTEXT §2.1; about 1e-5 relative on the CAMs)."""
    patch = visual.conv1.kernel_size
    if images.shape[-2] % patch[0] or images.shape[-1] % patch[1]:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {patch}")
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    n, d, h, w = x.shape
    x = x.reshape(n, d, h * w).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, d).expand(n, -1, -1)
    x = torch.cat([cls, x], dim=1)
    pos = resize_pos_embed(visual.positional_embedding, (h, w))
    if pos_embed_f16:
        pos = pos.half()
    x = x + pos.to(x.dtype)
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)

    blocks = list(visual.transformer.resblocks)
    attentions: list[torch.Tensor] = []
    for block in blocks[:-1]:
        x, weights = _block(block, x, need_attention)
        if need_attention:
            attentions.append(weights)

    last = blocks[-1]
    # From the GradCAM tap on, float32 even under mixed precision: the CAM is a gradient through this part (and,
    # in training, a gradient of that gradient), which half precision would round away. No-op in float32.
    with torch.autocast(x.device.type, enabled=False):
        x = upcast(x)
        activation = last.ln_1(x).detach().requires_grad_(True)  # the GradCAM tap (SPEC §1.3 item 4)
        # the explicit attention path (need_weights=True) is twice differentiable; the fused kernels are not
        out, weights = _attend(last, activation, True)
        if need_attention:
            attentions.append(weights)
        x = x.detach() + last.ls_1(out)
        x = x + last.ls_2(last.mlp(last.ln_2(x)))
        tokens = visual.ln_post(x) @ visual.proj
        embedding = tokens[:, 1:].mean(dim=1)
    return VisionOutput(embedding, activation, (h, w), attentions if need_attention else None)

