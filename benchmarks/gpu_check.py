"""One device check: every CUDA path of tag2mask once, with the timings benchmarks/RESULTS.md still lacks.

    python benchmarks/gpu_check.py [--device cuda] [--tiny] [--only NAME ...]

What it runs (random weights everywhere; full sizes unless ``--tiny``):

* ``prompt``      one prompt-training step per task (cls: MCL; seg: CAL through Softmax-GradCAM's own gradient) at
                  batch 16, 224×224 (synthetic shapes), CLIP ViT-B/16, in float32, bfloat16 and float16 (CUDA; the CPU: float32 and
                  bfloat16). From the same state, each half-precision step must agree with float32: context
                  gradients with cosine ≥ 0.99 and CAMs within 2e-2 relative (the rule of tests/test_amp.py).
* ``cams``        CAM inference (Softmax-GradCAM + CAA, float32, prompts encoded once) at 500×375, 3 classes;
                  then 8 images one at a time and in one batch (``cams.images_per_batch``), which must agree.
* ``clip_es``     training-free CLIP-ES CAMs (``tag2mask.cam.clip_es``) at 500×375, 3 classes + 25 background names.
* ``sams``        SAMS seeding on the device: 500×375, 3 classes, 60 quasi-superpixels.
* ``superpixels`` the quasi-superpixel generator with a random SAM ViT-H at the ``voc`` pattern, and stock
                  ``SamAutomaticMaskGenerator`` on the same grid (s/image each; ratio).
* ``superpixel_sources`` the transformers mask sources (``superpixels.source``: SAM ViT-H through ``SamModel``,
                  SAM-HQ ViT-H, SAM 2.1 Hiera-L, EdgeTAM) through ``HFSamPredictor`` and the generator at the
                  ``voc`` pattern, random weights (s/image each); first, transformers' SAM against segment_anything's
                  on the same weights and 64 prompts (IoU difference, share of mask pixels that differ).
* ``stage2``      one stage-II iteration at App. G's batch sizes with AMP: DeepLabV3+ ResNet-101 at 16, Mask2Former
                  Swin-B at 4, 512×512 crops.
* ``nccl``        a one-rank process group (NCCL on CUDA, Gloo on the CPU) and an all-reduce.
* ``pipeline``    the demo's whole pipeline (``tag2mask demo``: tiny CLIP, prompt training of both tasks, CAMs,
                  SAMS seeds, evaluation) on the device, with its seed mIoU beside the CPU's (fine 83.3).

It prints a Markdown table ready for RESULTS.md (time, peak GPU memory) and exits non-zero when a value is NaN or
infinite, or half precision disagrees with float32 beyond the tolerance. ``--device cpu --tiny`` (tiny models, small
sizes) runs in CI in well under 2 minutes, so the script never rots; on a lent GPU run it as it is (about 5 minutes
on one H100).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# the order they run in: quick ones first, the SAM ViT-H generator last
CHECKS = ("nccl", "sams", "cams", "clip_es", "prompt", "pipeline", "stage2", "superpixels", "superpixel_sources")


@dataclass
class Report:
    device: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # what, time, peak memory, note
    failures: list[str] = field(default_factory=list)

    def timed(self, what: str, fn: Callable[[], Any], repeats: int = 2, note: str = "", warmup: bool = True) -> Any:
        """Run ``fn`` once to warm up (unless the model is warm already) and ``repeats`` times timed; record the
        median and the peak GPU memory."""
        cuda = self.device.startswith("cuda")
        result = fn() if warmup else None
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else "-"
        self.add((what, _ms(statistics.median(times)), peak, note))
        return result

    def add(self, row: tuple[str, str, str, str]) -> None:
        """Record a row and print it at once (stderr), so that a run cut short still shows what it measured."""
        self.rows.append(row)
        print("| " + " | ".join(row) + " |", file=sys.stderr, flush=True)

    def annotate(self, note: str) -> None:
        """Replace the note of the last row (and print the row again)."""
        self.rows[-1] = (*self.rows[-1][:3], note)
        print("| " + " | ".join(self.rows[-1]) + " |", file=sys.stderr, flush=True)

    def need(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)
            print(f"FAILED: {what}", file=sys.stderr)

    def finite(self, what: str, *tensors: Any) -> None:
        for t in tensors:
            t = torch.as_tensor(np.asarray(t.detach().float().cpu()) if torch.is_tensor(t) else np.asarray(t))
            self.need(bool(torch.isfinite(t.float()).all()), f"{what}: NaN or inf")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _clip(tiny: bool, device: str) -> torch.nn.Module:
    if tiny:
        from tag2mask.models.clip import load_clip

        return load_clip("tiny-synthetic", device=device).float()
    import open_clip

    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).float().eval().to(device)


def _batch(n: int, size: int, device: str) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class names, CLIP-normalised images, tags and masks (the seeds' stand-in) of ``n`` synthetic images."""
    import tempfile

    from tag2mask.cam.image import clip_normalise
    from tag2mask.data import make_synthetic_dataset, open_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_dataset(f"{tmp}/shapes", n_train=n, n_val=1, size=(size, size), seed=0)
        ds = open_dataset("synthetic", root, "train")
        images = clip_normalise(np.stack([ds.load_image(i) for i in ds.ids]))
        fg = torch.from_numpy(np.stack([ds.label_vector(i) for i in ds.ids]).astype(np.float32))
        maps = torch.from_numpy(np.stack([ds.load_mask(i) for i in ds.ids]).astype(np.int64))
    return list(ds.class_names), images.to(device), fg.to(device), maps.to(device)


def check_prompt(report: Report, tiny: bool) -> None:
    from tag2mask import amp
    from tag2mask.cam import GradCAMClip
    from tag2mask.config import load_config
    from tag2mask.stages.common import build_prompt_learner
    from tag2mask.prompt_training.loop import build_loss_module, loss_and_weight

    device = report.device
    config = load_config("demo" if tiny else "voc", ["data.fg_names=[]"])  # CLIP reads the synthetic class names
    clip = _clip(tiny, device)
    n, size = (4, 64) if tiny else (16, 224)
    names, images, fg, maps = _batch(n, size, device)
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.startswith("cuda") else [])
    for task in ("cls", "seg"):
        cfg = config.train.seg if task == "seg" else config.train.cls
        needs_cam = cfg.loss == "cal"
        reference: tuple[torch.Tensor, torch.Tensor] | None = None
        for dtype in dtypes:
            half = dtype != torch.float32

            # float16 scales the loss as the training loop's GradScaler starts (2^16), bfloat16 needs no scaling
            scale = 2.0**16 if dtype == torch.float16 else 1.0

            def step() -> tuple[torch.Tensor, torch.Tensor]:
                learner = build_prompt_learner(clip, config, task, names).to(device)  # the same initial state
                model = GradCAMClip(clip, learner, softmax=config.cams.softmax, att_layers=config.cams.att_layers)
                with amp.autocast(device, dtype, half):
                    out = model(images, fg, create_graph=needs_cam, compute_cam=needs_cam)
                loss, _, _ = loss_and_weight(cfg, build_loss_module(cfg), out, fg, maps)
                (loss * scale).backward()
                with amp.autocast(device, dtype, half):
                    cams = model(images[:2], fg[:2]).cam.detach().float()
                return learner.ctx.grad.detach().float().clone() / scale, cams

            name = str(dtype).replace("torch.", "")
            grad, cams = report.timed(f"prompt step {task}, batch {n} at {size}², {name}", step, repeats=1,
                                      note="incl. a CAM pass on 2 images")
            report.finite(f"prompt {task} {name}", grad, cams)
            if reference is None:
                reference = (grad, cams)
                continue
            cosine = float(F.cosine_similarity(reference[0].flatten(), grad.flatten(), dim=0))
            cam_err = float((cams - reference[1]).abs().max() / reference[1].abs().max().clamp_min(1e-12))
            report.annotate(f"vs float32: gradient cosine {cosine:.4f}, CAM {cam_err:.1e}")
            report.need(cosine >= 0.99, f"prompt {task} {name}: gradient cosine {cosine:.4f} < 0.99")
            # the CAMs under autocast matter where training uses them (the seg task's CAL loss); the cls task's
            # training never computes one and the CAM stage runs in float32, so there the figure is only shown
            if needs_cam:
                report.need(cam_err <= 2e-2, f"prompt {task} {name}: CAMs differ by {cam_err:.2e} > 2e-2")


def check_cams(report: Report, tiny: bool) -> None:
    from tag2mask.cam import GradCAMClip
    from tag2mask.config import load_config
    from tag2mask.stages.cams import cam_one
    from tag2mask.stages.common import build_prompt_learner

    device = report.device
    config = load_config("voc")
    clip = _clip(tiny, device)
    learner = build_prompt_learner(clip, config, "cls", config.data.fg_names).to(device)
    model = GradCAMClip(clip, learner, softmax=config.cams.softmax, att_layers=config.cams.att_layers).eval()
    with torch.no_grad():
        text = model.text_features()
    h, w = (48, 64) if tiny else (375, 500)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    fg = np.array([2, 6, 14], np.int64)
    arrays = report.timed(f"CAM inference + CAA, {w}×{h}, 3 classes", lambda: cam_one(
        model, image, fg, config, "cls", device, text), repeats=3, note="per image, prompts encoded once")
    report.finite("cams", torch.from_numpy(arrays["cam"]), torch.from_numpy(arrays["cam_raw"]))
    check_cams_batched(report, model, text, config, (h, w), 2 if tiny else 8)


def check_cams_batched(report: Report, model: Any, text: Any, config: Any, size: tuple[int, int], n: int) -> None:
    """``cams.images_per_batch``: ``n`` images of one size through CLIP together, timed against one at a time; the
    same CAMs to float32 rounding: the raw CAM to 1e-4 of its largest value (a CAM is a sum with much cancellation,
    so the batched products' other order of addition shows most on a tiny random model: 7.5e-5 seen), the
    refined CAM (its min-max scales the raw CAM's range up) to 1e-3."""
    from tag2mask.stages.cams import cam_batch, cam_one

    device = report.device
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]
    classes = [np.sort(rng.choice(20, 2 + k % 2, replace=False)).astype(np.int64) for k in range(n)]
    report.timed(f"CAM inference + CAA, {n} images one at a time", lambda: [cam_one(
        model, im, fg, config, "cls", device, text) for im, fg in zip(images, classes)], repeats=2)
    alone_ms = report.rows[-1][1]
    batched = report.timed(f"CAM inference + CAA, {n} images in one batch", lambda: cam_batch(
        model, images, classes, config, "cls", device, text), repeats=2, note=f"cams.images_per_batch={n}")
    alone = [cam_one(model, im, fg, config, "cls", device, text) for im, fg in zip(images, classes)]

    def worst(key: str) -> float:
        return max(float(np.abs(b[key] - a[key]).max() / max(float(np.abs(a[key]).max()), 1e-30))
                   for a, b in zip(alone, batched))

    raw, refined = worst("cam_raw"), worst("cam")
    report.annotate(f"cams.images_per_batch={n} (one at a time: {alone_ms}); max relative difference: raw CAM "
                    f"{raw:.1e}, after CAA {refined:.1e}")
    report.need(raw <= 1e-4 and refined <= 1e-3, f"cams batched: raw CAMs differ by {raw:.1e} (> 1e-4) or refined "
                f"by {refined:.1e} (> 1e-3)")


def check_clip_es(report: Report, tiny: bool) -> None:
    from tag2mask.cam.clip_es import clip_es_cams
    from tag2mask.config import load_config

    data = load_config("voc").data
    clip = _clip(tiny, report.device)
    h, w = (48, 64) if tiny else (375, 500)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    fg = [data.fg_names[i] for i in (2, 6, 14)]
    arrays = report.timed(f"training-free CLIP-ES CAMs + CAA, {w}×{h}, 3 classes", lambda: clip_es_cams(
        clip, image, fg, list(data.bg_names)), repeats=3, note="per image, text encoded each call")
    report.finite("clip_es", torch.from_numpy(arrays["cam_raw"]), torch.from_numpy(arrays["attn_highres"].astype("f4")))
    report.need(arrays["attn_highres"].shape == (3, h, w), "clip_es: wrong map size")


def check_sams(report: Report, tiny: bool) -> None:
    from tag2mask.seeding import sams_seed
    from tag2mask.superpixels import Superpixels

    device = report.device
    h, w = (48, 64) if tiny else (375, 500)
    rng = np.random.default_rng(0)
    masks, levels = [], []
    for k in range(60):
        m = np.zeros((h, w), bool)
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        m[y:y + rng.integers(4, h // 2), x:x + rng.integers(4, w // 2)] = True
        masks.append(m)
        levels.append(k % 3)
    sp = Superpixels.from_masks(np.stack(masks), np.array(levels))
    cam = torch.rand(3, (h + 15) // 16, (w + 15) // 16, generator=torch.Generator().manual_seed(0)).to(device)
    seed = report.timed(f"SAMS seed, {w}×{h}, 3 classes, 60 superpixels", lambda: sams_seed(
        cam, [2, 6, 14], sp, None, 0.7), repeats=5, note=f"CAM on {device}")
    seed = torch.as_tensor(np.asarray(seed.cpu() if torch.is_tensor(seed) else seed))
    report.need(seed.shape == (h, w) and int(seed.max()) <= 15, "sams: wrong seed")


def check_superpixels(report: Report, tiny: bool) -> None:
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    from tag2mask.config import load_config
    from tag2mask.models.sam import sam_predictor
    from tag2mask.stages.superpixels import generator_params
    from tag2mask.superpixels import QuasiSuperpixelGenerator

    device = report.device
    torch.manual_seed(0)
    if tiny:
        from tag2mask.models.tiny import tiny_sam

        sam = tiny_sam(seed=0).to(device).eval()
        params = {**generator_params(load_config("demo", ["superpixels.source=sam"])), "points_per_side": 4,
                  "crop_n_layers": 0, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
        h, w, name = 48, 64, "tiny SAM"
    else:
        sam = sam_model_registry["vit_h"](checkpoint=None).to(device).eval()
        params = generator_params(load_config("voc"))
        h, w, name = 375, 500, "SAM ViT-H"
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    grid = "demo grid (4×4 points, no crops)" if tiny else "voc pattern"
    ours = QuasiSuperpixelGenerator(sam_predictor(sam), "l2_nmsf_s1_rsw3", **params)
    sp = report.timed(f"quasi-superpixels, {name}, {w}×{h}, {grid}", lambda: ours.generate(image), repeats=1,
                      note="the preset's thresholds: with random weights few masks survive them")
    report.need(sp.size == (h, w), "superpixels: wrong size")
    # side by side with stock SAM on the same grid with every mask kept (thresholds 0): the whole post-processing
    # load on both, and stock's crop merge crashes on a crop that keeps no mask (upstream bug; ours handles it)
    params = {**params, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    ours = QuasiSuperpixelGenerator(sam_predictor(sam), "l2_nmsf_s1_rsw3", **params)
    sp = report.timed(f"quasi-superpixels, {name}, {w}×{h}, {grid}, thresholds 0", lambda: ours.generate(image),
                      repeats=1, note="every mask passes the thresholds", warmup=False)
    report.annotate(f"every mask passes the thresholds: {len(sp.levels)} quasi-superpixels")
    stock_keys = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                  "stability_score_offset", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio",
                  "crop_n_points_downscale_factor", "min_mask_region_area")
    stock = SamAutomaticMaskGenerator(sam, **{k: params[k] for k in stock_keys})
    masks = report.timed(f"stock SamAutomaticMaskGenerator, same grid, {w}×{h}, thresholds 0",
                         lambda: stock.generate(image), repeats=1, note="baseline", warmup=False)
    report.annotate(f"baseline (ours: {report.rows[-2][1]}); {len(masks)} masks, one level, no hierarchy filter")


def check_superpixel_sources(report: Report, tiny: bool) -> None:
    from segment_anything import SamPredictor, sam_model_registry

    from tag2mask.config import load_config
    from tag2mask.models.sam_hf import MASK_SOURCES, HFSamPredictor
    from tag2mask.models.sam_hf_build import random_hf_sam, sam_to_hf
    from tag2mask.stages.superpixels import generator_params
    from tag2mask.superpixels import QuasiSuperpixelGenerator

    device = report.device
    cuda = device.startswith("cuda")
    if tiny:
        from tag2mask.models.tiny import tiny_sam

        sam = tiny_sam(seed=0)
        params = {**generator_params(load_config("demo", ["superpixels.source=sam"])), "points_per_side": 4,
                  "crop_n_layers": 0, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
        h, w, grid = 48, 64, "demo grid (4×4 points, no crops)"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            sam = sam_model_registry["vit_h"](checkpoint=None)
        params = generator_params(load_config("voc"))
        h, w, grid = 375, 500, "voc pattern"
    sam = sam.to(device).eval()
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    # the adapter's proof on the device: transformers' SamModel holding segment_anything's weights gives its masks
    ref, ours = SamPredictor(sam), HFSamPredictor(sam_to_hf(sam))
    xy = (np.stack(np.meshgrid(np.linspace(0.05, 0.95, 8), np.linspace(0.05, 0.95, 8)), -1).reshape(-1, 2) * [w, h])
    coords = torch.as_tensor(ref.transform.apply_coords(xy, (h, w)), device=device)[:, None, :]
    labels = torch.ones(len(coords), 1, dtype=torch.int, device=device)
    with torch.no_grad():
        ref.set_image(image)
        ours.set_image(image)
        m_ref, iou_ref, _ = ref.predict_torch(coords, labels, multimask_output=True, return_logits=True)
        m_ours, iou_ours, _ = ours.predict_torch(coords, labels, multimask_output=True, return_logits=True)
    d_iou = float((iou_ref - iou_ours).abs().max())
    differ = float(((m_ref > 0) != (m_ours > 0)).float().mean())
    report.add((f"transformers SAM vs segment_anything SAM, same weights, {len(coords)} prompts, {w}×{h}", "-", "-",
                f"IoU |Δ| max {d_iou:.1e}; masks differ at {differ:.1e} of pixels"))
    report.need(d_iou < 1e-3 and differ < 1e-4, f"superpixel_sources: transformers SAM differs from segment_anything "
                f"(IoU {d_iou:.1e}, pixels {differ:.1e})")
    del ref, sam, m_ref, m_ours
    names = {"sam": "SAM ViT-H (SamModel)", "sam-hq": "SAM-HQ ViT-H", "sam2": "SAM 2.1 Hiera-L",
             "edgetam": "EdgeTAM (RepViT-M1)"}
    for source in MASK_SOURCES:
        predictor = ours if source == "sam" else HFSamPredictor(random_hf_sam(source, tiny=tiny).to(device))
        generator = QuasiSuperpixelGenerator(predictor, "l2_nmsf_s1_rsw3", **params)
        name = names[source] if not tiny else f"tiny {source}"
        sp = report.timed(f"quasi-superpixels, mask source {source}: {name}, {w}×{h}, {grid}",
                          lambda g=generator: g.generate(image), repeats=1,
                          note="transformers, random weights: the preset's thresholds keep few masks")
        report.need(sp.size == (h, w), f"superpixel_sources: {source} gave the wrong size")
        del predictor, generator
        if cuda:
            torch.cuda.empty_cache()


def check_stage2(report: Report, tiny: bool) -> None:
    for net in ("deeplabv3plus", "mask2former"):
        _stage2_step(report, net, tiny)  # one network at a time: its memory goes when the call returns
        if report.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _stage2_step(report: Report, net: str, tiny: bool) -> None:
    from tag2mask.segmenters.loop import build_optimizer, training_step
    from tag2mask.segmenters.recipes import default_recipe
    from tag2mask.stages.train_seg import build_segmenter

    device = report.device
    use_amp = device.startswith("cuda")
    recipe = default_recipe(net, "synthetic" if tiny else "voc")
    recipe.backbone_weights = "none"
    recipe.amp = use_amp
    batch, crop = (2, 64) if tiny else (recipe.batch_size, 512)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, crop, crop, generator=g).to(device)
    labels = torch.randint(0, 21, (batch, crop, crop), generator=g).to(device)
    model = build_segmenter(recipe, 21).to(device).train()
    optimizer = build_optimizer(model, recipe)
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    losses: list[float] = []

    def step() -> None:
        out = training_step(model, images, labels, optimizer, recipe, 10, 1000, scaler=scaler, device=device)
        losses.append(float(out.detach()))

    report.timed(f"stage II {net} ({recipe.backbone}), batch {batch}, {crop}², {'AMP' if use_amp else 'float32'}",
                 step, repeats=2, note="one training iteration")
    report.need(all(np.isfinite(losses)), f"stage2 {net}: loss NaN or inf")


def check_nccl(report: Report, tiny: bool) -> None:
    import torch.distributed as dist

    device = report.device
    backend = "nccl" if device.startswith("cuda") else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29541")
    t0 = time.perf_counter()
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        x = torch.ones(4, device=device)
        dist.all_reduce(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        report.add((f"one-rank {backend} process group + all_reduce", _ms(time.perf_counter() - t0), "-",
                    "init included"))
        report.need(bool((x == 1).all()), f"{backend}: all_reduce gave {x.tolist()}")
    finally:
        dist.destroy_process_group()


def check_pipeline(report: Report, tiny: bool) -> None:
    """The demo's whole pipeline on the device; its numbers beside the CPU's (README: fine 83.3, coarse 81.4)."""
    import json
    import tempfile
    from pathlib import Path

    from tag2mask.config import load_config
    from tag2mask.stages.pipeline import run_pipeline

    device = report.device
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "demo"
        config = load_config("demo", [f"data.root={run_dir / 'synthetic'}", f"runtime.device={device}"])
        t0 = time.perf_counter()
        run_pipeline(config, run_dir, say=lambda _: None, show_progress=False)
        seconds = time.perf_counter() - t0
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith("cuda") else "-"
        m = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    report.add(("demo pipeline (tiny CLIP, both prompt trainings, CAMs, seeds, evaluation)", _ms(seconds), peak,
                f"seed mIoU fine {m['seeds_fine']:.1f}, coarse {m['seeds_coarse']:.1f} (CPU: 83.3, 81.4)"))
    report.finite("pipeline metrics", np.array([m["seeds_fine"], m["seeds_coarse"]]))
    report.need(m["seeds_fine"] > m["all_background"] + 30, f"pipeline: fine seeds {m['seeds_fine']:.1f} mIoU")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (CI, any machine)")
    parser.add_argument("--only", nargs="*", choices=CHECKS, help="run only these checks")
    args = parser.parse_args()
    report = Report(args.device)
    t0 = time.perf_counter()
    checks = {"prompt": check_prompt, "cams": check_cams, "sams": check_sams, "superpixels": check_superpixels,
              "stage2": check_stage2, "nccl": check_nccl, "pipeline": check_pipeline, "clip_es": check_clip_es,
              "superpixel_sources": check_superpixel_sources}
    for name in args.only or CHECKS:
        t_check = time.perf_counter()
        try:
            checks[name](report, args.tiny)
        except Exception as e:  # noqa: BLE001 - one broken path must not hide the others
            traceback.print_exc()
            report.need(False, f"{name}: {type(e).__name__}: {e}")
        print(f"[{name}] {time.perf_counter() - t_check:.1f} s", file=sys.stderr, flush=True)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"\ngpu_check on {gpu} ({args.device}{', tiny' if args.tiny else ''}), torch {torch.__version__}, "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print("| what | time | peak GPU memory | note |")
    print("| --- | --- | --- | --- |")
    for row in report.rows:
        print("| " + " | ".join(row) + " |")
    if report.failures:
        print(f"\n{len(report.failures)} check(s) failed:\n" + "\n".join(f"- {f}" for f in report.failures))
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
