#!/usr/bin/env python
"""Train the tiny CLIP that tag2mask ships for its offline demo (``load_clip("tiny-synthetic")``).

Why: the demo runs with no downloads and no weights, and a *random* tiny CLIP cannot show the method working.
So tag2mask trains its own tiny OpenAI-architecture CLIP ViT on its own synthetic dataset (coloured shapes on
textured backgrounds), contrastively, on (image, caption) pairs whose captions are built from the image tags —
image-level supervision only, like CLIP's. The masks serve only to tell which tags a *crop* still shows (the
crop's caption); no pixel label reaches a loss.

Model: ``tiny_clip(width=128, layers=2, heads=2, patch=8, image_size=96, embed_dim=64, text_width=64,
text_layers=2, text_heads=1)`` — QuickGELU, OpenAI layout, vocabulary 49408, context 77; a 12×16 patch grid on the
demo's 96×128 images (the 12×12 positional embedding is resized bilinearly, as at inference).

Recipe (all seeded; the defaults are the shipped model):

* data: ``make_synthetic_dataset(tmp, n_train=2000, seed=1001)`` (the demo uses seed 0), held in memory. Each
  step takes 32 images with the demo's colour jitter (half of them), horizontal and vertical flips and one scale
  in the demo's range (0.67..1, sides rounded to multiples of the patch), and one patch-aligned window of each
  (4..8 patches a side) as a second, cropped image. An image shows class ``c`` when it holds at least
  ``MIN_PIXELS`` of its pixels; windows without any class are background images.
* image embedding: the mean over the patch tokens of ``ln_post(tokens) @ proj`` — exactly the pooling of
  :func:`tag2mask.models.clip_cam.vit_forward`, which the CAMs use — so the objective shapes the patch tokens.
* losses, on whole images and windows together:

  1. caption InfoNCE (CLIP's loss, both directions; ``exp(logit_scale)`` fixed at 100, the value GradCAMClip
     uses): captions from random templates and name orders ("a photo of a ring and a circle on a textured
     background."); images and captions with the same tag set are positives of each other (soft targets);
  2. class-prompt loss: the 5 class names and the demo's 4 background words (background, ground, wall, texture)
     as single-name prompts sharing one prefix — a caption template ("a photo of a {}.") or, as the demo's
     :class:`tag2mask.models.prompts.PromptLearner` builds them, a stand-in for a learned context: 1..16 small
     random embedding vectors before (or after) the name ("[SOS] v_1..v_M circle. [EOT]"); soft-target
     cross-entropy over the 9 prompts, the target uniform over the image's tags plus the background group (spread
     over the 4 words). Non-saturated targets keep Softmax-GradCAM's masked softmax away from 0/1;
  3. window consistency: the window's tokens (the last block's ``ln_1`` input features and the projected
     outputs), computed on the crop alone, are targets (held fixed) for the same tokens in the whole image;
  4. attention locality (weight 1): the attention mass that patch queries of every block but the last put
     outside their 3×3 neighbourhood. With it the features GradCAM reads (the last block's ``ln_1`` output) stay
     local; without it the CAMs of 2+ layer models were poor (argmax-seed mIoU ~20 %).

* last-block residual drop (p = 0.5 per image): the last block's attention output *replaces* the residual stream
  instead of being added to it, so the attention branch alone must carry the class evidence — the branch that
  Softmax-GradCAM differentiates (``vit_forward`` detaches the residual there).
* AdamW (lr 2e-3, betas 0.9/0.98, weight decay 0.05 on matrices), 50 warm-up steps, cosine to 2 %, 800 steps,
  gradient clipping at 1.
* output: fp16 safetensors with OpenAI key names (rows of the token embedding for tokens never seen in training
  set to zero: they carry no meaning, and zeros compress in the wheel) plus a JSON with the recipe.

Run ``python scripts/train_tiny_clip.py`` (~8 minutes on 2 free CPU cores; on a machine shared with other work
``--threads 1`` can be much faster), then ``python scripts/check_tiny_clip.py`` for the CAM/seed numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tag2mask.cam.image import clip_normalise
from tag2mask.prompt_training.augment import random_color_jitter
from tag2mask.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_dataset
from tag2mask.models.clip import clip_tokenizer
from tag2mask.models.clip_cam import resize_pos_embed
from tag2mask.models.tiny import tiny_clip
from tag2mask.testing import openai_state_dict

FG_NAMES: tuple[str, ...] = SYNTHETIC_CLASSES
BG_NAMES: tuple[str, ...] = ("background", "ground", "wall", "texture")  # the demo preset's bg_names
ASSET_DIR = Path(__file__).resolve().parents[1] / "src" / "tag2mask" / "models" / "assets"
ASSET_NAME = "tiny_clip_synthetic"

ARCH = dict(width=128, layers=2, heads=2, patch=8, image_size=96, embed_dim=64, text_width=64, text_layers=2,
            text_heads=1)
MIN_PIXELS = 24  # pixels of a class a crop must hold to be tagged with it

CAPTION_TEMPLATES = (
    "a photo of {}.",
    "a picture of {}.",
    "an image of {}.",
    "{}.",
    "{} on a textured background.",
    "a photo of {} on the ground.",
    "{} in front of a wall.",
    "a drawing of {} on a background texture.",
)
BG_CAPTIONS = (
    "a photo of the background.",
    "background.",
    "the ground.",
    "a wall.",
    "a texture.",
    "an empty textured background.",
    "a picture of a plain wall.",
    "nothing but background texture.",
)
PROMPT_TEMPLATES = ("a photo of a {}.", "a {}.", "the {}.", "a picture of a {}.", "{}.", "an image of a {}.")


# ------------------------------------------------------------------------------------------------------- data
def load_training_images(n: int, seed: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic images and masks (N×H×W×3 and N×H×W uint8), generated in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="tiny-clip-data-") as tmp:
        root = make_synthetic_dataset(tmp, n_train=n, n_val=0, size=size, seed=seed)
        stems = [line.split(",")[0] for line in (root / "train.csv").read_text().splitlines()[1:]]
        images = np.stack([np.asarray(Image.open(root / "images" / s).convert("RGB")) for s in stems])
        masks = np.stack([np.asarray(Image.open(root / "masks" / s)) for s in stems])
    return images, masks


def tags_of(mask: np.ndarray) -> np.ndarray:
    """Multi-hot (C,) of the classes with at least MIN_PIXELS pixels in ``mask``."""
    counts = np.bincount(mask.reshape(-1), minlength=len(FG_NAMES) + 1)[1 : len(FG_NAMES) + 1]
    return (counts >= MIN_PIXELS).astype(np.float32)


def make_batch(
    rng: np.random.Generator, images: np.ndarray, masks: np.ndarray, batch: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]:
    """One step's data: ``batch`` augmented whole images and one patch-aligned window of each.

    Augmentation: colour jitter (the demo's, half of the images), horizontal and vertical flips, and one scale
    per batch in the demo's range (0.67..1, the image sides rounded to multiples of the patch). The window has one
    random size per batch (4..8 patches a side) and a random patch-aligned offset per image.

    Returns ``(images N×3×H×W, tags N×C, windows N×4 in patches (top, left, height, width), crops N×3×h×w,
    crop tags N×C)``.
    """
    scale = rng.uniform(0.67, 1.0)
    gh = max(6, round(images.shape[1] * scale / patch))
    gw = max(6, round(images.shape[2] * scale / patch))
    wh = int(rng.integers(4, min(8, gh) + 1))
    ww = int(rng.integers(4, min(8, gw) + 1))
    idx = rng.integers(0, len(images), size=batch)
    out_img, out_tag, out_crop, out_crop_tag, windows = [], [], [], [], []
    for i in idx:
        img, msk = images[i], masks[i]
        if rng.random() < 0.5:
            img = random_color_jitter(img, rng)
        if rng.random() < 0.5:
            img, msk = img[:, ::-1], msk[:, ::-1]
        if rng.random() < 0.5:
            img, msk = img[::-1], msk[::-1]
        size = (gw * patch, gh * patch)
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(size, Image.Resampling.BICUBIC))
        msk = np.asarray(Image.fromarray(np.ascontiguousarray(msk)).resize(size, Image.Resampling.NEAREST))
        top, left = int(rng.integers(0, gh - wh + 1)), int(rng.integers(0, gw - ww + 1))
        rows = slice(top * patch, (top + wh) * patch)
        cols = slice(left * patch, (left + ww) * patch)
        out_img.append(img)
        out_tag.append(tags_of(msk))
        out_crop.append(img[rows, cols])
        out_crop_tag.append(tags_of(msk[rows, cols]))
        windows.append((top, left, wh, ww))
    return (
        clip_normalise(np.stack(out_img)),
        torch.from_numpy(np.stack(out_tag)),
        np.asarray(windows),
        clip_normalise(np.stack(out_crop)),
        torch.from_numpy(np.stack(out_crop_tag)),
    )


def caption_of(rng: np.random.Generator, tags: np.ndarray) -> str:
    names = [FG_NAMES[c] for c in np.flatnonzero(tags)]
    if not names:
        return BG_CAPTIONS[int(rng.integers(len(BG_CAPTIONS)))]
    names = [names[i] for i in rng.permutation(len(names))]
    if rng.random() < 0.25:  # bare names, like the prompts' "... circle."
        return " ".join(names) + "."
    body = " and ".join(f"a {n}" for n in names)
    return CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(body)


# ------------------------------------------------------------------------------------------------- forwards
def image_forward(
    model: torch.nn.Module,
    images: torch.Tensor,
    locality: bool = False,
    residual_drop: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Trainable twin of :func:`tag2mask.models.clip_cam.vit_forward`.

    Returns ``(embedding N×E, activation N×L×D, tokens N×L×E, aux)``: the embedding is the mean of the projected
    patch tokens ``ln_post(x) @ proj`` (the class token excluded), the activation the last block's ``ln_1`` output
    at the patch tokens (where GradCAM taps), the tokens the projected patch tokens. ``aux`` holds the
    regularisers asked for: ``"nonlocal"`` (``locality``) — the attention mass that patch queries of every block
    but the last put outside their 3×3 neighbourhood (the class token allowed). ``residual_drop``: probability, per image, that the last block's attention output
    replaces the residual stream instead of being added to it (the attention branch alone must then carry the
    class evidence, which is the path Softmax-GradCAM differentiates).
    """
    visual = model.visual
    x = visual.conv1(images)
    n, d, h, w = x.shape
    x = x.reshape(n, d, h * w).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.view(1, 1, d).expand(n, -1, -1), x], dim=1)
    x = x + resize_pos_embed(visual.positional_embedding, (h, w))
    x = visual.ln_pre(x)
    blocks = list(visual.transformer.resblocks)
    aux: dict[str, torch.Tensor] = {}
    far = ~neighbourhood((h, w), x.device) if locality else None
    for block in blocks[:-1]:
        if far is None:
            x = block(x)
            continue
        q = block.ln_1(x)
        out, weights = block.attn(q, q, q, need_weights=True, average_attn_weights=True)
        aux["nonlocal"] = aux.get("nonlocal", 0.0) + (weights[:, 1:] * far).sum(dim=-1).mean() / (len(blocks) - 1)
        x = x + block.ls_1(out)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    last = blocks[-1]
    a = last.ln_1(x)
    activation = a[:, 1:]
    out = last.ls_1(last.attn(a, a, a, need_weights=False)[0])
    if residual_drop:
        keep = (torch.rand(n, 1, 1, generator=generator) >= residual_drop).to(x.dtype)
        x = keep * x + out
    else:
        x = x + out
    x = x + last.ls_2(last.mlp(last.ln_2(x)))
    tokens = visual.ln_post(x[:, 1:]) @ visual.proj
    return tokens.mean(dim=1), activation, tokens, aux


def neighbourhood(grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(h·w)×(1+h·w) bool: patch query → keys within its 3×3 neighbourhood, and the class token."""
    h, w = grid
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    yy, xx = yy.reshape(-1), xx.reshape(-1)
    near = ((yy[:, None] - yy[None]).abs() <= 1) & ((xx[:, None] - xx[None]).abs() <= 1)
    return torch.cat([torch.ones(h * w, 1, dtype=torch.bool), near], dim=1).to(device)


def window_of(features: torch.Tensor, grid: tuple[int, int], windows: np.ndarray) -> torch.Tensor:
    """The features (N×(h·w)×D) of each image's window (top, left, height, width in patches), N×(wh·ww)×D."""
    h, w = grid
    f = features.reshape(features.shape[0], h, w, -1)
    out = [f[i, t : t + a, l : l + b].reshape(a * b, -1) for i, (t, l, a, b) in enumerate(windows.tolist())]
    return torch.stack(out)


def consistency_loss(full: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of unit-normalised features, the crop's held fixed: a patch should be described the
    same way whatever else the image holds."""
    return (F.normalize(full, dim=-1) - F.normalize(crop.detach(), dim=-1)).pow(2).sum(dim=-1).mean()


def text_features(model: torch.nn.Module, embedded: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text tower on pre-embedded prompts (as :func:`tag2mask.models.prompts.encode_prompts`), cut to the
    longest prompt: with the causal mask, positions after EOT never reach the EOT feature."""
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1
    x = embedded[:, :length] + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), eot] @ model.text_projection


class Texts:
    """Tokenising and embedding of captions and of the PromptLearner-like class prompts."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.tok = clip_tokenizer()
        self.sot = self.tok.encoder["<start_of_text>"]
        self.eot = self.tok.encoder["<end_of_text>"]
        self.seen: set[int] = set()

    def ids(self, text: str) -> list[int]:
        ids = [self.sot, *self.tok.encode(text), self.eot]
        self.seen.update(ids)
        return ids

    def tokens(self, rows: list[list[int]]) -> torch.Tensor:
        t = torch.zeros(len(rows), self.model.positional_embedding.shape[0], dtype=torch.long)
        for i, r in enumerate(rows):
            t[i, : len(r)] = torch.tensor(r)
        return t

    def captions(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokens([self.ids(t) for t in texts])
        return text_features(self.model, self.model.token_embedding(tokens), tokens)

    def class_prompts(self, rng: np.random.Generator) -> torch.Tensor:
        """G×E features of the 9 single-name prompts, all with one random prefix (template or context stand-in)."""
        names = list(FG_NAMES) + list(BG_NAMES)
        if rng.random() < 0.3:
            template = PROMPT_TEMPLATES[int(rng.integers(len(PROMPT_TEMPLATES)))]
            return self.captions([template.format(n) for n in names])
        # a PromptLearner stand-in: M placeholders "X", replaced by small random vectors
        m = int(rng.integers(1, 17))
        front = rng.random() < 0.25  # name_position="front" ([SOS][name][ctx][.])
        placeholder = " ".join(["X"] * m)
        rows = [self.ids(f"{n} {placeholder}." if front else f"{placeholder} {n}.") for n in names]
        tokens = self.tokens(rows)
        emb = self.model.token_embedding(tokens)
        std = float(rng.uniform(0.005, 0.05))
        width = emb.shape[-1]
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        if rng.random() < 0.7:  # shared context
            ctx = (torch.randn(1, m, width, generator=g) * std).expand(len(names), -1, -1)
        else:  # class-specific contexts
            ctx = torch.randn(len(names), m, width, generator=g) * std
        pieces = []
        for i, n in enumerate(names):
            k = len(self.tok.encode(n)) if front else 0
            start = 1 + k
            pieces.append(torch.cat([emb[i, :start], ctx[i], emb[i, start + m :]], dim=0))
        return text_features(self.model, torch.stack(pieces), tokens)


# --------------------------------------------------------------------------------------------------- losses
def caption_loss(img: torch.Tensor, txt: torch.Tensor, tags: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric InfoNCE; pairs with the same tag set are positives (soft, uniform targets)."""
    logits = scale * img @ txt.t()
    same = (tags[:, None, :] == tags[None, :, :]).all(dim=-1).float()
    target = same / same.sum(dim=1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


def class_prompt_loss(img: torch.Tensor, prompts: torch.Tensor, tags: torch.Tensor, scale: float) -> torch.Tensor:
    """Soft cross-entropy over [5 class prompts, 4 bg prompts]; target uniform over {tags, background group}."""
    logits = scale * img @ prompts.t()
    n_bg = len(BG_NAMES)
    target = torch.cat([tags, torch.full((tags.shape[0], n_bg), 1.0 / n_bg)], dim=1)
    target = target / target.sum(dim=1, keepdim=True)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


# ---------------------------------------------------------------------------------------------------- train
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or name in ("logit_scale",):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    cache = args.data_cache
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            images, masks = z["images"], z["masks"]
    else:
        images, masks = load_training_images(args.n_images, args.data_seed, (96, 128))
        if cache is not None:
            np.savez(cache, images=images, masks=masks)
    t_data = time.time() - t0
    print(f"data: {len(images)} images in {t_data:.1f}s", flush=True)

    arch = dict(ARCH, width=args.width, heads=args.width // 64, layers=args.layers)
    model = tiny_clip(seed=args.seed, **arch).train().requires_grad_(True)
    model.logit_scale.requires_grad_(False)  # exp(logit_scale) stays 100, the value GradCAMClip uses
    scale = float(model.logit_scale.exp())
    texts = Texts(model)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    history = []
    gen = torch.Generator().manual_seed(args.seed)
    t_train = time.time()
    patch = arch["patch"]
    for step in range(args.steps):
        x, tags, windows, xc, tags_c = make_batch(rng, images, masks, args.batch, patch)
        grid = (x.shape[-2] // patch, x.shape[-1] // patch)
        all_tags = torch.cat([tags, tags_c])
        captions = [caption_of(rng, t) for t in all_tags.numpy()]
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        kw = dict(locality=args.locality > 0, residual_drop=args.residual_drop, generator=gen)
        emb, act, tok, aux = image_forward(model, x, **kw)
        emb_c, act_c, tok_c, aux_c = image_forward(model, xc, **kw)
        img = F.normalize(torch.cat([emb, emb_c]), dim=-1)
        cap = F.normalize(texts.captions(captions), dim=-1)
        prompts = F.normalize(texts.class_prompts(rng), dim=-1)
        l_cap = caption_loss(img, cap, all_tags, scale)
        l_cls = class_prompt_loss(img, prompts, all_tags, scale)
        l_con = consistency_loss(window_of(act, grid, windows), act_c) + consistency_loss(
            window_of(tok, grid, windows), tok_c)
        zero = l_cap.new_zeros(())
        l_far = 0.5 * (aux.get("nonlocal", zero) + aux_c.get("nonlocal", zero))
        loss = l_cap + args.cls_weight * l_cls + args.consistency * l_con + args.locality * l_far
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append((l_cap.item(), l_cls.item(), l_con.item(), l_far.item()))
        if step % 25 == 0 or step == args.steps - 1:
            recent = np.mean(history[-25:], axis=0)
            print(f"step {step:4d} {tuple(x.shape[-2:])} lr {lr_at(step):.2e} caption {recent[0]:.3f} "
                  f"prompts {recent[1]:.3f} consistency {recent[2]:.3f} non-local {recent[3]:.3f} "
                  f"({time.time() - t_train:.0f}s)", flush=True)
    train_s = time.time() - t_train

    model.eval().requires_grad_(False)
    with torch.no_grad():  # tokens never seen in training carry no meaning: zero them
        unseen = torch.ones(model.token_embedding.weight.shape[0], dtype=torch.bool)
        unseen[sorted(texts.seen)] = False
        model.token_embedding.weight[unseen] = 0.0
    final = np.mean(history[-50:], axis=0)
    return {
        "model": model,
        "arch": arch,
        "train_s": train_s,
        "data_s": t_data,
        "final_caption_loss": float(final[0]),
        "final_prompt_loss": float(final[1]),
        "final_consistency_loss": float(final[2]),
        "final_nonlocal_attention": float(final[3]),
        "seen_tokens": len(texts.seen),
    }


def save(result: dict, args: argparse.Namespace, out_dir: Path) -> Path:
    from safetensors.torch import save as save_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{ASSET_NAME}.safetensors"
    from tag2mask.models.clip import compact_token_embedding

    sd = openai_state_dict(result["model"], torch.float16)
    # only the token-embedding rows seen in training are stored; load_clip expands them back
    path.write_bytes(save_bytes(compact_token_embedding(sd), metadata={"format": "openai-clip", "name": "tiny-synthetic"}))
    meta = {
        "name": "tiny-synthetic",
        "file": path.name,
        "description": "tiny OpenAI-architecture CLIP ViT (QuickGELU) trained by tag2mask on its synthetic "
                       "dataset, for the offline demo; not a general-purpose model",
        "architecture": {**result["arch"], "vocab_size": 49408, "context_length": 77, "quick_gelu": True,
                         "pooling": "mean of projected patch tokens (tag2mask.models.clip_cam.vit_forward)",
                         "logit_scale": 100.0},
        "parameters": int(sum(v.numel() for v in sd.values())),
        "dtype": "float16",
        "training": {
            "script": "scripts/train_tiny_clip.py",
            "seed": args.seed,
            "data": {"generator": "tag2mask.data.synthetic.make_synthetic_dataset", "seed": args.data_seed,
                     "n_images": args.n_images, "size": [96, 128], "min_pixels_per_tag": MIN_PIXELS},
            "steps": args.steps, "batch": args.batch,
            "optimizer": {"name": "AdamW", "lr": args.lr, "betas": [0.9, 0.98], "weight_decay": args.weight_decay,
                          "warmup_steps": args.warmup, "schedule": "cosine to 2%", "grad_clip": 1.0},
            "losses": {"caption_infonce": 1.0, "class_prompt_soft_ce": args.cls_weight,
                       "window_consistency": args.consistency, "attention_locality": args.locality},
            "last_block_residual_drop": args.residual_drop,
            "fg_names": list(FG_NAMES), "bg_names": list(BG_NAMES),
            "threads": args.threads,
            "train_seconds": round(result["train_s"], 1),
            "final_caption_loss": round(result["final_caption_loss"], 4),
            "final_prompt_loss": round(result["final_prompt_loss"], 4),
            "final_consistency_loss": round(result["final_consistency_loss"], 4),
            "final_nonlocal_attention": round(result["final_nonlocal_attention"], 4),
            "seen_tokens": result["seen_tokens"],
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "date": datetime.date.today().isoformat(),
    }
    (out_dir / f"{ASSET_NAME}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ASSET_DIR, help="output folder (default: the package's assets)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data-seed", type=int, default=1001, help="synthetic dataset seed (the demo uses 0)")
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--data-cache", type=Path, default=None,
                   help="an .npz file holding the generated images (written if missing; for experiments)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=32, help="images per step (each with one window crop)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--cls-weight", type=float, default=1.0)
    p.add_argument("--consistency", type=float, default=1.0, help="weight of the window consistency loss")
    p.add_argument("--residual-drop", type=float, default=0.5,
                   help="probability that an image skips the residual of the last block's attention")
    p.add_argument("--locality", type=float, default=1.0,
                   help="weight of the penalty on attention outside the 3x3 neighbourhood in all blocks but the last")
    p.add_argument("--width", type=int, default=ARCH["width"])
    p.add_argument("--layers", type=int, default=ARCH["layers"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    result = train(args)
    path = save(result, args, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB); training {result['train_s']:.0f}s")


if __name__ == "__main__":
    main()
