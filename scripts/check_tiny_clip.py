#!/usr/bin/env python
"""Check that the packaged tiny CLIP ("tiny-synthetic") makes the method work on the demo's synthetic data.

On the demo's dataset (``make_synthetic_dataset(tmp, n_train=48, n_val=16, size=(96, 128), seed=0)``) this
builds the demo's classification prompts (:class:`tag2mask.models.prompts.PromptLearner`: shared context, names
at the end, background names ``background, ground, wall, texture``), measures them zero-shot (the random initial
context), trains the context briefly with the multi-label contrastive loss on ``GradCAMClip(...).fg_logits`` (SGD,
the demo's augmentation), and measures again. Reported per split and stage:

* classification of the prompts from the foreground logits of the whole image: ``exact`` = the top-k classes
  are exactly the k tags; ``top1`` = the best class is a tag; ``mAP`` over the 5 classes;
* mIoU (background included, ``tag2mask.metrics.ConfusionMatrix``) of plain argmax seeds of the raw
  Softmax-GradCAMs, ``argmax_seed(cam, fg_cls, (H, W), bg_power=p)`` for each ``p``, and of the all-background
  prediction; for information also of argmax seeds of the CAA-refined CAMs (the demo's cls CAA settings).

Usage: ``python scripts/check_tiny_clip.py [--weights tiny-synthetic] [--iters 40] [--lr 0.01]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tag2mask.cam.affinity import caa_refine
from tag2mask.cam.gradcam import GradCAMClip
from tag2mask.cam.image import clip_normalise
from tag2mask.prompt_training.augment import augment
from tag2mask.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_dataset
from tag2mask.metrics import ConfusionMatrix
from tag2mask.models.clip import load_clip
from tag2mask.models.prompts import PromptLearner
from tag2mask.seeding import argmax_seed
from tag2mask.stages.cams import prepare_image
from tag2mask.prompt_training.losses import multilabel_contrastive_loss

FG_NAMES = list(SYNTHETIC_CLASSES)
BG_NAMES = ["background", "ground", "wall", "texture"]


def load_split(root: Path, split: str) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    images, masks, labels = [], [], []
    for line in (root / f"{split}.csv").read_text().splitlines()[1:]:
        name, tags = line.split(",")
        images.append(np.asarray(Image.open(root / "images" / name).convert("RGB")))
        masks.append(np.asarray(Image.open(root / "masks" / name)))
        y = np.zeros(len(FG_NAMES), dtype=np.float32)
        y[[FG_NAMES.index(t) for t in tags.split(";") if t]] = 1
        labels.append(y)
    return images, masks, np.stack(labels)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def evaluate(model: GradCAMClip, images, masks, labels, powers, align: int, batch: int = 8) -> dict:
    """Classification of the prompts and argmax-seed mIoU of the raw CAMs."""
    n_cls = len(FG_NAMES) + 1
    cms = {p: ConfusionMatrix(n_cls) for p in powers}
    cms_caa = {p: ConfusionMatrix(n_cls) for p in powers}
    background = ConfusionMatrix(n_cls)
    logits, probs = [], []
    for start in range(0, len(images), batch):
        x = torch.cat([prepare_image(im, align) for im in images[start : start + batch]])
        y = torch.from_numpy(labels[start : start + batch])
        out = model(x, y, need_attention=True)
        logits.append(out.fg_logits.detach())
        probs.append(out.probs.detach()[:, : model.num_fg])
        cam = out.cam.detach()
        pairs = out.pairs
        for j in range(x.shape[0]):
            gt = masks[start + j]
            sel = pairs[:, 0] == j
            # CAA with the demo's cls settings (SPEC §6), for information
            refined = caa_refine(cam[sel], out.att[j], sinkhorn_iters=1, power=2, box_thresh=0.4, propagate="score")
            for p in powers:
                seed = argmax_seed(cam[sel], pairs[sel, 1], gt.shape, bg_power=p)
                cms[p].update(seed.numpy(), gt)
                seed = argmax_seed(refined, pairs[sel, 1], gt.shape, bg_power=p)
                cms_caa[p].update(seed.numpy(), gt)
            background.update(np.zeros_like(gt), gt)
    s = torch.cat(logits).numpy()
    pr = torch.cat(probs).numpy()
    k = labels.sum(axis=1).astype(int)
    top = np.argsort(-s, axis=1)
    exact = np.mean([set(top[i, : k[i]]) == set(np.flatnonzero(labels[i])) for i in range(len(s))])
    top1 = np.mean([labels[i, top[i, 0]] > 0 for i in range(len(s))])
    m_ap = np.nanmean([average_precision(s[:, c], labels[:, c]) for c in range(s.shape[1])])
    return {
        "exact": float(exact),
        "top1": float(top1),
        "mAP": float(m_ap),
        "p_pos": float(pr[labels > 0].mean()),  # mean masked-softmax probability of the present classes
        "miou": {p: cms[p].miou() for p in powers},
        "iou": {p: cms[p].iou() for p in powers},
        "miou_caa": {p: cms_caa[p].miou() for p in powers},
        "miou_bg": background.miou(),
    }


def report(tag: str, r: dict) -> None:
    mious = "  ".join(f"p={p:g}: {100 * v:5.1f}" for p, v in r["miou"].items())
    caa = "  ".join(f"p={p:g}: {100 * v:5.1f}" for p, v in r["miou_caa"].items())
    print(f"{tag:<20} cls exact {100 * r['exact']:5.1f}  top1 {100 * r['top1']:5.1f}  mAP {100 * r['mAP']:5.1f}  "
          f"p(pos) {r['p_pos']:.2f} | argmax-seed mIoU {mious} | all-bg {100 * r['miou_bg']:5.1f} "
          f"| after CAA {caa}")


def train_context(model: GradCAMClip, images, labels, iters: int, lr: float, batch: int, seed: int) -> list[float]:
    """The demo's cls training, shortened: SGD (momentum 0.9, wd 5e-4) on the context, MCL on fg logits."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(model.prompt_learner.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    losses = []
    for _ in range(iters):
        idx = rng.choice(len(images), size=batch, replace=False)
        crops = [augment(images[i], None, rng, scale_low=80, scale_high=128, short_thresh=64, crop_size=64)[0]
                 for i in idx]
        x = clip_normalise(np.stack(crops))
        y = torch.from_numpy(labels[idx])
        out = model(x, y, compute_cam=False)
        loss = multilabel_contrastive_loss(out.fg_logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="tiny-synthetic", help="CLIP name or file (default: %(default)s)")
    p.add_argument("--n-ctx", type=int, default=16)
    p.add_argument("--iters", type=int, default=40, help="context training iterations (0: zero-shot only)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--powers", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    p.add_argument("--align", type=int, default=16, help="CAM input sides rounded up to this multiple")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", type=int, default=0, help="also evaluate on this many more images (another seed)")
    p.add_argument("--extra-seed", type=int, default=99)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.time()
    clip = load_clip(args.weights)
    learner = PromptLearner(clip, FG_NAMES, BG_NAMES, n_ctx=args.n_ctx, class_specific=False, name_position="end",
                            ctx_std=0.015, seed="真")
    model = GradCAMClip(clip, learner, softmax="reference")
    patch = clip.visual.conv1.kernel_size[0]
    print(f"model {args.weights}: patch {patch}, vision width {clip.visual.conv1.out_channels}, "
          f"{len(clip.visual.transformer.resblocks)} layers; prompts n_ctx={args.n_ctx}")
    with tempfile.TemporaryDirectory(prefix="tag2mask-check-") as tmp:
        root = make_synthetic_dataset(tmp, n_train=48, n_val=16, size=(96, 128), seed=0)
        splits = {s: load_split(root, s) for s in ("train", "val")}
        if args.extra:
            extra = make_synthetic_dataset(Path(tmp) / "extra", n_train=args.extra, n_val=0, size=(96, 128),
                                           seed=args.extra_seed)
            splits["extra"] = load_split(extra, "train")

    align = int(np.lcm(args.align, patch))
    for split, (images, masks, labels) in splits.items():
        report(f"zero-shot {split}", evaluate(model, images, masks, labels, args.powers, align))
    if args.iters:
        images, _, labels = splits["train"]
        losses = train_context(model, images, labels, args.iters, args.lr, args.batch, args.seed)
        print(f"context training: {args.iters} iters SGD lr {args.lr:g}, MCL {np.mean(losses[:5]):.3f} -> "
              f"{np.mean(losses[-5:]):.3f}")
        for split, (images, masks, labels) in splits.items():
            report(f"trained ctx {split}", evaluate(model, images, masks, labels, args.powers, align))
    print(f"({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
