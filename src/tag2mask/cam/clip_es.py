"""Training-free CAMs: CLIP-ES (Lin et al., CVPR 2023) as its own code computes them (CONTEXT §2).

A frozen CLIP and hand-written prompts, no training: the text features of ``"a clean origami {name}."`` (a list of
templates is averaged), Softmax-GradCAM over the image's tagged classes plus the background names, ReLU and
min-max **twice**, CAA with 3 Sinkhorn rounds and the box threshold (0.4 VOC, 0.7 COCO), a min-max of the refined
map and a bilinear resize to the photo. Seeds are ``bg = (1 − max fg)^α`` on those maps, in float16 as CLIP-ES
saves them. FMA-WSSS starts from this recipe; the pieces are FMA's own with CLIP-ES's settings:

* :class:`~tag2mask.cam.GradCAMClip` with fixed prompts (``num_fg``), the exact softmax over the image's classes
  (``softmax="clean"``), and the float16-rounded positional embedding (``pos_embed_f16``);
* the batched gradient of all positive classes (one per class in CLIP-ES: the same numbers to float rounding);
* :func:`~tag2mask.cam.caa_refine` on the once-normalised CAM, whose own ReLU + min-max is the second pass;
* seeds: :func:`~tag2mask.seeding.argmax_seed` on ``attn_highres`` (float16) with ``normalise=False``.

:func:`clip_es_cams` is one image's whole computation with every intermediate, to hold against CLIP-ES itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from tag2mask.cam.affinity import BoxMode, box_masks, caa_refine, cam_to_score, minmax_norm
from tag2mask.cam.gradcam import CamOutput, GradCAMClip
from tag2mask.cam.image import prepare_image

CLIP_ES_TEMPLATES: tuple[str, ...] = ("a clean origami {}.",)
"""CLIP-ES's prompt template (its code keeps "a rendering of a weird {}." commented out)."""


def clip_es_text_features(clip_model: Any, names: Sequence[str], templates: Sequence[str] = CLIP_ES_TEMPLATES
                          ) -> torch.Tensor:
    """``G×E`` class embeddings: each name's L2-normalised text embedding per template, averaged over the templates
    and normalised again (CLIP-ES's zero-shot classifier; with one template the mean is the row itself)."""
    from tag2mask.models.clip import clip_tokenizer
    from tag2mask.models.prompts import encode_prompts

    if not names:
        raise ValueError("no class names")
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise ValueError(f"templates must each hold one '{{}}' for the class name, got {list(templates)}")
    device = clip_model.token_embedding.weight.device
    tokens = clip_tokenizer()([t.format(name) for name in names for t in templates]).to(device)
    with torch.no_grad():
        raw = encode_prompts(clip_model, clip_model.token_embedding(tokens), tokens).float()
    per_template = raw / raw.norm(dim=-1, keepdim=True)
    mean = per_template.reshape(len(names), len(templates), -1).mean(dim=1)
    return mean / mean.norm(dim=-1, keepdim=True)


def clip_es_model(clip_model: Any, num_fg: int, pos_embed_f16: bool = True, att_layers: int = 8) -> GradCAMClip:
    """Softmax-GradCAM with fixed prompts as CLIP-ES runs it: ``num_fg`` foreground rows first, then background."""
    return GradCAMClip(clip_model, None, softmax="clean", att_layers=att_layers, num_fg=num_fg,
                       pos_embed_f16=pos_embed_f16).eval()


def clip_es_refine(
    out: CamOutput,
    *,
    box_thresh: float = 0.4,
    boxes: BoxMode = "reference",
    sinkhorn_iters: int = 3,
    power: int = 2,
) -> dict[str, np.ndarray]:
    """CLIP-ES's post-processing of one image's Softmax-GradCAM output (``out``: one image, attention asked for),
    on the patch grid: the normalised CAMs, the box masks and the CAA-refined CAMs (``cam_refined``)."""
    if out.att is None or out.att.shape[0] != 1:
        raise ValueError("clip_es_refine needs one image's output with its attention (need_attention=True)")
    with torch.no_grad():
        cam_raw = out.cam.detach().float()
        cam_norm1 = cam_to_score(cam_raw)  # ReLU + min-max once ...
        cam_norm = cam_to_score(cam_norm1)  # ... and once more (CLIP-ES's layer aggregation repeats it)
        att = out.att[0].float()
        # caa_refine min-maxes its input once more itself: given cam_norm1 it boxes and propagates cam_norm
        refined = caa_refine(cam_norm1, att, sinkhorn_iters=sinkhorn_iters, power=power, box_thresh=box_thresh,
                             propagate="score", boxes=boxes)
    return {
        "cam_raw": cam_raw.cpu().numpy(),
        "cam_norm1": cam_norm1.cpu().numpy(),
        "cam_norm": cam_norm.cpu().numpy(),
        "attn_merged8": att.cpu().numpy(),
        "box_mask": box_masks(cam_norm, box_thresh, boxes).astype(np.float32),
        "cam_refined": refined.cpu().numpy(),
    }


def clip_es_highres(cam_refined: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """CLIP-ES's saved maps (``attn_highres``): the refined CAMs min-maxed on the grid, resized bilinearly by
    OpenCV to ``size = (H, W)``, in float16. What its seeds are computed from."""
    refined = minmax_norm(torch.as_tensor(np.asarray(cam_refined, np.float32))).numpy()
    h, w = int(size[0]), int(size[1])
    if len(refined) == 0:
        return np.zeros((0, h, w), np.float16)
    return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in refined]).astype(np.float16)


def clip_es_cams(
    clip_model: Any,
    image: np.ndarray,
    fg_names: Sequence[str],
    bg_names: Sequence[str],
    *,
    templates: Sequence[str] = CLIP_ES_TEMPLATES,
    box_thresh: float = 0.4,
    boxes: BoxMode = "reference",
    sinkhorn_iters: int = 3,
    power: int = 2,
    att_layers: int = 8,
    pos_embed_f16: bool = True,
) -> dict[str, np.ndarray]:
    """One image's training-free CAMs, every intermediate of CLIP-ES's computation included.

    Args:
        clip_model: a CLIP from :func:`~tag2mask.models.clip.load_clip` (float32).
        image: ``H×W×3`` uint8 RGB.
        fg_names: the image's tagged classes (their prompt names, e.g. ``"bird avian"``), in label order.
        bg_names: the background names (CLIP-ES: 25 for VOC, 23 for COCO).
        templates: prompt templates, averaged; ``box_thresh``: 0.4 VOC, 0.7 COCO; ``boxes="inclusive"`` fixes the
            clipped-box quirk (CONTEXT §2.4); ``pos_embed_f16=False`` skips the float16 rounding (CONTEXT §2.1).

    Returns:
        ``text_features`` (G×E, G = fg + bg), ``image_embedding`` (E, before normalisation), ``logits`` and
        ``probs`` (G), ``cam_raw``, ``cam_norm1``, ``cam_norm``, ``box_mask``, ``cam_refined``, ``cam_refined_norm`` (P×h×w on the patch grid,
        P = number of fg names), ``attn_merged8`` (L×L) and ``attn_highres`` (P×H×W float16: what the seeds use).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H×W×3 uint8 RGB, got {image.shape} {image.dtype}")
    device = clip_model.token_embedding.weight.device
    text = clip_es_text_features(clip_model, [*fg_names, *bg_names], templates)
    model = clip_es_model(clip_model, len(fg_names), pos_embed_f16, att_layers)
    x = prepare_image(image).to(device)
    labels = torch.ones(1, len(fg_names), device=device)
    out = model(x, labels, need_attention=True, text_features=text)
    arrays = clip_es_refine(out, box_thresh=box_thresh, boxes=boxes, sinkhorn_iters=sinkhorn_iters, power=power)
    arrays["cam_refined_norm"] = minmax_norm(torch.from_numpy(arrays["cam_refined"])).numpy()
    arrays["attn_highres"] = clip_es_highres(arrays["cam_refined"], image.shape[:2])
    return {
        "text_features": text.cpu().numpy(),
        "image_embedding": out.image_embedding[0].cpu().numpy(),
        "logits": out.logits[0].detach().cpu().numpy(),
        "probs": out.probs[0].detach().cpu().numpy(),
        **arrays,
    }
