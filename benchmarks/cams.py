"""Benchmark CAA (SPEC §6) on a VOC-size patch grid, one CPU thread.

Times (a) a naive baseline written here — Sinkhorn, symmetrise, ``torch.linalg.matrix_power``, mask the columns
per class by an elementwise product, matmul — and (b) ``tag2mask.cam.caa_refine`` on the same random inputs
(attention = row-softmax of random logits), checks both give the same output, and prints median times and the
ratio baseline/ours.

Then, with ``--inference`` (the default; ``--no-inference`` skips it), CAM inference on a random full-size CLIP
ViT-B/16 (OpenAI architecture) at 500×375 with the VOC preset's 20 + 25 prompts and 2–3 positive classes per image:
tag2mask's :func:`~tag2mask.stages.cams.cam_one` path (prompts encoded once per stage, no graph; one batched
vector-Jacobian product for all positives) against a baseline written here in the reference's way (the prompts
re-encoded with a graph for every image, one backward per positive class with ``retain_graph``). Both give the raw
CAMs; they must agree to 1e-5 (relative to the largest value). tag2mask's prompt encoding happens once per stage, so
it is timed apart and shared over the stage's images: the line starting ``cam inference:`` gives the ratio for a
stage of the benchmark's few images and for a VOC train_aug stage (10,582 images), and ends with ``ratio N.Nx``.
With ``--batched`` (the default) the same images, all of one size, also go through CLIP as one batch
(``cams.images_per_batch``): a line gives ms per image against one at a time and their largest difference.

Usage: ``python benchmarks/cams.py [--h 24 --w 32 --classes 3 --repeats 50] [--images 4] [--no-inference] [--no-batched]``
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from typing import Callable

import torch

from tag2mask.cam import box_masks, caa_refine, cam_to_score, sinkhorn_normalise


def naive_caa(cam: torch.Tensor, att: torch.Tensor, sinkhorn_iters: int, power: int, box_thresh: float) -> torch.Tensor:
    """The straightforward CAA (score propagation): explicit L×L matrix power and a P×L×L masked stack."""
    n_cls, h, w = cam.shape
    score = cam_to_score(cam)
    mask = torch.from_numpy(box_masks(score, box_thresh, "reference")).to(cam.dtype).reshape(n_cls, 1, h * w)
    a = att
    for _ in range(sinkhorn_iters):
        a = a / a.sum(dim=0, keepdim=True)
        a = a / a.sum(dim=1, keepdim=True)
    aff = (a + a.T) / 2
    aff = torch.linalg.matrix_power(aff, power)
    masked = aff[None] * mask  # P×L×L, columns (source patches) masked per class
    return (masked @ score.reshape(n_cls, h * w, 1)).reshape(n_cls, h, w)


def reference_style_cams(model, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """The baseline: prompts encoded with a graph for this image, then one backward per positive class."""
    import torch.nn.functional as F

    from tag2mask.cam.gradcam import masked_softmax
    from tag2mask.models.clip_cam import vit_forward

    with torch.enable_grad():
        vision = vit_forward(model.clip.visual, x)
        text = F.normalize(model.text_features(), dim=-1)
        image = F.normalize(vision.embedding, dim=-1)
        logits = model.clip.logit_scale.exp() * image @ text.t()
        allowed = torch.ones_like(logits, dtype=torch.bool)
        allowed[:, : model.num_fg] = labels.bool()
        probs = masked_softmax(logits, allowed, "reference")
        act = vision.activation
        cams = []
        for c in labels[0].nonzero()[:, 0].tolist():
            (grad,) = torch.autograd.grad(probs[0, c], act, retain_graph=True)
            cams.append(act.detach()[0, 1:] @ grad[0, 1:].mean(dim=0))
    return torch.stack(cams).reshape(-1, *vision.grid)


VOC_TRAIN_AUG = 10582
"""Images of a VOC train_aug CAM stage, over which the prompts' encoding is shared."""


def cam_inference(n_images: int, batched: bool = True) -> None:
    """tag2mask's CAM inference against the reference-style baseline, full-size random ViT-B/16, 500×375."""
    import numpy as np
    import open_clip

    from tag2mask.cam import GradCAMClip
    from tag2mask.config import load_config
    from tag2mask.cam.image import prepare_image
    from tag2mask.stages.cams import cam_one
    from tag2mask.stages.common import build_prompt_learner

    config = load_config("voc", ["caa.cls.enabled=false", "runtime.device=cpu"])  # the CAM alone (CAA above)
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).float().eval()
    learner = build_prompt_learner(clip, config, "cls", config.data.fg_names)  # the preset's prompts
    model = GradCAMClip(clip, learner, softmax="reference").eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(n_images)]
    classes = [np.sort(rng.choice(20, 2 + k % 2, replace=False)).astype(np.int64) for k in range(n_images)]

    with torch.no_grad():
        text = model.text_features()  # what the CAM stage computes once, before its first image

    def encode_prompts() -> None:
        with torch.no_grad():
            model.text_features()

    def ours() -> list:
        return [cam_one(model, im, fg, config, "cls", "cpu", text)["cam_raw"] for im, fg in zip(images, classes)]

    def baseline() -> list:
        out = []
        for im, fg in zip(images, classes):
            labels = torch.zeros(1, model.num_fg)
            labels[0, torch.from_numpy(fg)] = 1
            out.append(reference_style_cams(model, prepare_image(im), labels).detach().numpy())
        return out

    a, b = ours(), baseline()
    worst = max(float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-30)) for x, y in zip(a, b))
    t_text = median_time(encode_prompts, 2)
    t_ours = median_time(ours, 2) / n_images
    t_base = median_time(baseline, 2) / n_images

    def ratio(stage_images: int) -> float:  # the stage's time per image: its images' work + the prompts once
        return t_base / (t_ours + t_text / stage_images)

    print(f"cam inference: ViT-B/16 (random), 500x375, {n_images} images with 2-3 classes, 20+25 prompts, "
          f"{torch.get_num_threads()} thread(s): tag2mask {t_ours * 1e3:.0f} ms/image + {t_text * 1e3:.0f} ms once "
          f"per stage (the prompts), reference-style baseline {t_base * 1e3:.0f} ms/image (the prompts re-encoded for "
          f"every image), max relative difference {worst:.1e}; a stage of {n_images} images: ratio {ratio(n_images):.1f}x; "
          f"of {VOC_TRAIN_AUG} images (VOC train_aug): ratio {ratio(VOC_TRAIN_AUG):.1f}x")
    if worst > 1e-5:
        raise SystemExit("CAM inference and the baseline disagree")
    if batched:
        cam_inference_batched(model, text, config, images, classes, t_ours)


def cam_inference_batched(model, text, config, images: list, classes: list, t_one: float) -> None:  # noqa: ANN001
    """``cams.images_per_batch``: the benchmark's images (all one size) through CLIP in one batch, against one at a
    time (``t_one`` s/image); the raw CAMs must agree to 1e-5 of their largest value."""
    import numpy as np

    from tag2mask.stages.cams import cam_batch, cam_one

    n = len(images)
    alone = [cam_one(model, im, fg, config, "cls", "cpu", text)["cam_raw"] for im, fg in zip(images, classes)]
    batched = [f["cam_raw"] for f in cam_batch(model, images, classes, config, "cls", "cpu", text)]
    worst = max(float(np.abs(b - a).max() / max(np.abs(a).max(), 1e-30)) for a, b in zip(alone, batched))
    t_batch = median_time(lambda: cam_batch(model, images, classes, config, "cls", "cpu", text), 2) / n
    print(f"cam inference, {n} images of one size in one batch (cams.images_per_batch={n}): {t_batch * 1e3:.0f} "
          f"ms/image, one at a time {t_one * 1e3:.0f} ms/image, max relative difference {worst:.1e}; "
          f"ratio {t_one / t_batch:.2f}x")
    if worst > 1e-5:
        raise SystemExit("batched CAM inference differs from one image at a time")


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs, after two warm-up runs."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h", type=int, default=24)
    parser.add_argument("--w", type=int, default=32)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=4, help="images for the CAM inference comparison")
    parser.add_argument("--inference", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batched", action=argparse.BooleanOptionalAction, default=True,
                        help="also the images in one batch (cams.images_per_batch)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(args.seed)
    n_pix = args.h * args.w
    cam = torch.randn(args.classes, args.h, args.w, generator=gen, dtype=torch.float32)
    att = torch.softmax(4.0 * torch.randn(n_pix, n_pix, generator=gen, dtype=torch.float32), dim=1)
    params = dict(sinkhorn_iters=1, power=2, box_thresh=0.4)

    ref = naive_caa(cam, att, **params)
    ours = caa_refine(cam, att, propagate="score", boxes="reference", **params)
    max_abs = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    same = torch.allclose(ours, ref, rtol=1e-5, atol=1e-6 * max(scale, 1e-30))

    t_naive = median_time(lambda: naive_caa(cam, att, **params), args.repeats)
    t_ours = median_time(lambda: caa_refine(cam, att, **params), args.repeats)
    t_ours_np = median_time(lambda: caa_refine(cam.numpy(), att.numpy(), **params), args.repeats)
    t_sink = median_time(lambda: sinkhorn_normalise(att, 1), args.repeats)
    t_boxes = median_time(lambda: box_masks(cam_to_score(cam), 0.4), args.repeats)

    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"grid {args.h}x{args.w} (L = {n_pix}), {args.classes} classes, float32, "
          f"sinkhorn 1, power 2, thresh 0.4, propagate score; median of {args.repeats}")
    print(f"baseline (explicit matrix_power): {t_naive * 1e3:8.3f} ms")
    print(f"caa_refine (torch in):            {t_ours * 1e3:8.3f} ms")
    print(f"caa_refine (numpy in):            {t_ours_np * 1e3:8.3f} ms")
    print(f"  of which sinkhorn_normalise:    {t_sink * 1e3:8.3f} ms")
    print(f"  of which score + box masks:     {t_boxes * 1e3:8.3f} ms")
    print(f"ratio baseline/ours:              {t_naive / t_ours:8.1f}x")
    print(f"same output: {same} (max abs diff {max_abs:.3g}, output max |x| {scale:.3g})")
    if not same:
        raise SystemExit("caa_refine and the baseline disagree")
    if args.inference:
        cam_inference(args.images, args.batched)


if __name__ == "__main__":
    main()
