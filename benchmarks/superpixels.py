"""Benchmark the quasi-superpixel generator and the hierarchy filter (SPEC §7), one CPU thread.

1. Generator: ``QuasiSuperpixelGenerator`` (default preset ``l2_nmsf_s1_rsw3``: per-level offsets, small-region
   step, hierarchy filter, ``Superpixels`` with atoms) against stock segment_anything ``SamAutomaticMaskGenerator``
   on the same images, the same tiny random SAM (``tag2mask.models.tiny.tiny_sam``) and the same point grid and
   crops (``points_per_side``, 1 crop layer, downscale 2, overlap 512/1500, NMS 0.7, min region area 100, stock's
   default ``points_per_batch`` 64). A random SAM predicts random IoUs, so both run with ``pred_iou_thresh=0`` and
   ``stability_score_thresh=0``; box NMS then leaves a similar, small number of masks in both. Images are timed
   interleaved (ours, stock, ours, …) after a warm-up; prints ms per image, masks kept and the ratio ours/stock
   (goal ≤ 1.2). ``--no-generators`` skips this part.
2. Hierarchy filter on SAM-size inputs: (a) a naive baseline written here — a Python double loop over candidate and
   container masks computing ``(m & k).sum() / m.sum()`` on full masks, stopping at the first container mask that
   reaches the threshold — and (b) ``tag2mask.superpixels.hierarchy_filter`` on the same synthetic masks (ellipses:
   whole masks, parts and subparts, many parts/subparts placed inside larger masks); checks both keep the same
   indices in the same order and prints absolute times and the ratio baseline/ours. Also times the atom
   decomposition with its H×W label map (``compute_atoms``, done once per image by ``Superpixels.from_masks``).

Prints the machine and the date.

``--upstream-helpers`` also times ours with upstream's ``mask_to_rle_pytorch`` and ``MaskData.cat`` in place of
the generator's linear-time versions (the cost they remove).

``--sources sam,sam-hq,sam2,edgetam`` instead times each mask source (README "Mask sources") at full size with random
weights on the CPU, against segment_anything's own SAM (``--baseline vit_h``, the paper's model, or ``vit_b``), on
one random 500×375 image and the same grid for all (``--src-points 8``, no crop: 64 prompts, one batch): the
image embedding (``set_image``), the prompt encoder + mask decoder + enlargement to the image size per prompt
(``predict_torch``), the whole ``generate`` (thresholds of the ``voc`` pattern), and a projection to the ``voc``
pattern (5 embeddings: the image and 4 crops; 2048 prompts; post-processing not counted). ``sam`` is transformers'
``SamModel`` holding the baseline's very weights (``sam_to_hf``). Every model is built at random (nothing is
downloaded); ``--threads`` sets torch's threads (default 1).

Usage: ``python benchmarks/superpixels.py [--images 3 --img-h 192 --img-w 256 --points 16 --gen-repeats 2]
[--upstream-helpers] [--h 768 --w 1024 --masks 300 --repeats 5]``;
``python benchmarks/superpixels.py --sources sam,sam-hq,sam2,edgetam [--baseline vit_h] [--src-points 8] [--threads 2]``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one CPU core, set before numpy loads its BLAS

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tag2mask.superpixels import compute_atoms, hierarchy_filter  # noqa: E402


def naive_hierarchy_filter(masks: np.ndarray, levels: np.ndarray, recall_thresh: float = 0.3) -> np.ndarray:
    """The straightforward filter: a double loop over full masks."""
    kept: list[int] = []
    for level in (2, 1, 0):
        cand = [i for i in range(len(masks)) if levels[i] == level]
        if not kept:
            kept.extend(cand)
            continue
        accepted = []
        for i in cand:
            area = masks[i].sum()
            if area == 0:  # recall 0/0: dropped
                continue
            ok = True
            for k in kept:
                if (masks[i] & masks[k]).sum() / area >= recall_thresh:
                    ok = False
                    break
            if ok:
                accepted.append(i)
        kept.extend(accepted)
    return np.asarray(kept, np.int64)


def synthetic_masks(n: int, h: int, w: int, seed: int, size: float) -> tuple[np.ndarray, np.ndarray]:
    """SAM-like masks: a third each of wholes, parts and subparts; half the parts/subparts inside a larger mask.
    ``size`` scales the radii (1: wholes of radius 6% of the short side, parts 3%, subparts 1.2%)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    levels = np.repeat([2, 1, 0], [n - 2 * (n // 3), n // 3, n // 3])
    radius = {lv: size * f * min(h, w) for lv, f in ((2, 0.06), (1, 0.03), (0, 0.012))}
    centres: list[tuple[float, float]] = []
    masks = np.zeros((n, h, w), bool)
    for i, level in enumerate(levels):
        if level < 2 and centres and rng.random() < 0.5:  # nested inside an earlier, larger mask
            cy, cx = centres[rng.integers(len(centres))]
            cy, cx = cy + rng.normal(0, radius[level]), cx + rng.normal(0, radius[level])
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        centres.append((cy, cx))
        ry = radius[level] * rng.uniform(0.5, 1.5)
        rx = ry * rng.uniform(0.5, 2.0)
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    return masks, levels


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h", type=int, default=768)
    parser.add_argument("--w", type=int, default=1024)
    parser.add_argument("--masks", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--thresh", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=3, help="generator: number of images")
    parser.add_argument("--img-h", type=int, default=192, help="generator: image height")
    parser.add_argument("--img-w", type=int, default=256, help="generator: image width")
    parser.add_argument("--points", type=int, default=16, help="generator: points_per_side (SPEC: 32)")
    parser.add_argument("--gen-repeats", type=int, default=2, help="generator: timed passes over the images")
    parser.add_argument("--no-generators", action="store_true", help="only the hierarchy-filter benchmark")
    parser.add_argument("--upstream-helpers", action="store_true",
                        help="generator: also time ours with upstream's quadratic RLE encoder and MaskData.cat")
    parser.add_argument("--sources", help="instead: time these mask sources at full size (comma-separated: sam, "
                        "sam-hq, sam2, edgetam) against segment_anything's SAM")
    parser.add_argument("--baseline", default="vit_h", choices=("vit_h", "vit_b"),
                        help="--sources: segment_anything's model to compare with (and the size of sam / sam-hq)")
    parser.add_argument("--src-points", type=int, default=8, help="--sources: points per side (no crops)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"superpixels benchmark  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {cpu_name()} ({os.cpu_count()} logical CPUs), {platform.system()} {platform.release()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    if args.sources:
        bench_sources(args)
        return
    if not args.no_generators:
        bench_generators(args)
    ok = True
    print("\n--- hierarchy filter ---")
    for name, size in (("sparse", 1.0), ("dense", 3.0)):
        ok &= run_case(name, size, args)
    if not ok:
        raise SystemExit("MISMATCH between the naive loop and hierarchy_filter")


def bench_generators(args: argparse.Namespace) -> None:
    """Ours vs stock SamAutomaticMaskGenerator on a tiny random SAM (see the module docstring)."""
    from segment_anything import SamAutomaticMaskGenerator

    from tag2mask.models.sam import sam_predictor
    from tag2mask.models.tiny import tiny_sam
    from tag2mask.superpixels import QuasiSuperpixelGenerator

    sam = tiny_sam(seed=0)
    rng = np.random.default_rng(args.seed)
    images = [rng.integers(0, 256, (args.img_h, args.img_w, 3), dtype=np.uint8) for _ in range(args.images)]
    shared = {
        "points_per_side": args.points,
        "points_per_batch": 64,
        "crop_n_layers": 1,
        "crop_n_points_downscale_factor": 2,
        "crop_overlap_ratio": 512 / 1500,
        "crop_nms_thresh": 0.7,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "stability_score_offset": 1.0,
        "box_nms_thresh": 0.7,
        "min_mask_region_area": 100,
    }
    ours = QuasiSuperpixelGenerator(sam_predictor(sam), "l2_nmsf_s1_rsw3", **shared)
    stock = SamAutomaticMaskGenerator(sam, **shared)  # output_mode "binary_mask" (its default)
    runners: dict[str, Callable[[np.ndarray], int]] = {
        "ours (QuasiSuperpixelGenerator)": lambda im: len(ours.generate(im)),
        "stock (SamAutomaticMaskGenerator)": lambda im: len(stock.generate(im)),
    }
    if args.upstream_helpers:
        runners["ours with upstream RLE + MaskData.cat"] = lambda im: len(with_upstream_helpers(ours, im))
    n_prompts = args.points**2 + 4 * (args.points // 2) ** 2
    print(f"\n[generator] {len(images)} random {args.img_w}x{args.img_h} images, tiny random SAM "
          f"(img_size {sam.image_encoder.img_size}), {args.points} points per side + 1 crop layer "
          f"({n_prompts} prompts, {3 * n_prompts} candidate masks per image), points_per_batch 64, "
          f"pred_iou_thresh 0, stability_score_thresh 0, min region area 100; ours: offsets (+0.1, +1.0 on whole) "
          f"and hierarchy filter 0.3")
    for run in runners.values():  # warm-up
        run(images[0])
    times: dict[str, list[float]] = {name: [] for name in runners}
    kept: dict[str, list[int]] = {name: [] for name in runners}
    for rep in range(args.gen_repeats):
        for im in images:
            for name, run in runners.items():
                t0 = time.perf_counter()
                n = run(im)
                times[name].append(time.perf_counter() - t0)
                if rep == 0:
                    kept[name].append(n)
    ms = {}
    for name in runners:
        ms[name] = 1e3 * statistics.median(times[name])
        print(f"  {name:<36}: {ms[name]:9.1f} ms per image (median of {len(times[name])}), masks kept {kept[name]}")
    ratio = ms["ours (QuasiSuperpixelGenerator)"] / ms["stock (SamAutomaticMaskGenerator)"]
    print(f"  {'ratio ours / stock':<36}: {ratio:9.2f}x  (goal <= 1.2)")


class TimedPredictor:
    """A predictor that times its ``set_image`` and ``predict_torch`` calls (everything else passes through)."""

    def __init__(self, predictor: object) -> None:
        self.predictor = predictor
        self.embed: list[float] = []
        self.decode: list[float] = []
        self.prompts = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.predictor, name)

    def set_image(self, image: np.ndarray) -> None:
        t0 = time.perf_counter()
        self.predictor.set_image(image)  # type: ignore[attr-defined]
        self.embed.append(time.perf_counter() - t0)

    def predict_torch(self, coords: torch.Tensor, labels: torch.Tensor, **kwargs: object) -> object:
        t0 = time.perf_counter()
        out = self.predictor.predict_torch(coords, labels, **kwargs)  # type: ignore[attr-defined]
        self.decode.append(time.perf_counter() - t0)
        self.prompts += len(coords)
        return out


VOC_EMBEDDINGS, VOC_PROMPTS = 5, 32**2 + 4 * 16**2  # the voc pattern: the image + 4 crops; 32² + 4·16² points


def bench_sources(args: argparse.Namespace) -> None:
    """Each mask source at full size with random weights, on the same grid (see the module docstring)."""
    import gc

    from segment_anything import SamPredictor, sam_model_registry

    from tag2mask.config import load_config
    from tag2mask.models.sam_hf import MASK_SOURCES, HFSamPredictor
    from tag2mask.models.sam_hf_build import random_hf_sam, sam_to_hf
    from tag2mask.stages.superpixels import generator_params
    from tag2mask.superpixels import QuasiSuperpixelGenerator

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = sorted(set(sources) - set(MASK_SOURCES))
    if unknown:
        raise SystemExit(f"unknown mask source(s) {unknown}; choose from {', '.join(MASK_SOURCES)}")
    image = np.random.default_rng(args.seed).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    params = {**generator_params(load_config("voc")), "points_per_side": args.src_points, "crop_n_layers": 0}
    print(f"\n[mask sources] one random 500x375 image, {args.src_points}x{args.src_points} points, no crops "
          f"({args.src_points ** 2} prompts, batches of {params['points_per_batch']}), the voc pattern's thresholds; "
          f"random full-size weights; projection to the voc pattern: {VOC_EMBEDDINGS} x embedding + {VOC_PROMPTS} x "
          f"per-prompt decoding (post-processing not counted)")
    rows: list[tuple[str, str, float, float, float, float]] = []

    def run(source: str, what: str, predictor: object) -> None:
        timed = TimedPredictor(predictor)
        generator = QuasiSuperpixelGenerator(timed, "l2_nmsf_s1_rsw3", **params)
        with torch.no_grad():  # no warm-up: one embedding takes seconds to minutes, first-call costs are noise
            t0 = time.perf_counter()
            sp = generator.generate(image)
            total = time.perf_counter() - t0
        embed, per_prompt = statistics.median(timed.embed), sum(timed.decode) / max(timed.prompts, 1)
        projected = VOC_EMBEDDINGS * embed + VOC_PROMPTS * per_prompt
        rows.append((source, what, embed, per_prompt, total, projected))
        print(f"  {source:<9} {what:<44} embedding {embed:7.2f} s, decoding {1e3 * per_prompt:7.1f} ms/prompt, "
              f"generate {total:7.2f} s ({len(sp)} kept), projected voc pattern {projected:8.1f} s", flush=True)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        sam = sam_model_registry[args.baseline](checkpoint=None).eval()
    size = {"vit_h": "ViT-H", "vit_b": "ViT-B"}[args.baseline]
    run("baseline", f"segment_anything SAM {size} (SamPredictor)", SamPredictor(sam))
    if "sam" in sources:
        run("sam", f"transformers SamModel {size}, same weights", HFSamPredictor(sam_to_hf(sam)))
    del sam
    gc.collect()
    names = {"sam-hq": "SamHQModel ViT-H", "sam2": "Sam2Model, SAM 2.1 Hiera-L", "edgetam": "EdgeTamModel (RepViT-M1)"}
    for source in sources:
        if source == "sam":
            continue
        model = random_hf_sam(source, torch_init=False)
        what = names[source]
        if source == "sam-hq" and args.baseline == "vit_b":
            what += " (vs the ViT-B baseline)"
        run(source, f"transformers {what}", HFSamPredictor(model))
        del model
        gc.collect()
    base = rows[0][5]
    print(f"\n| source | model | embedding (s) | decoding (ms/prompt) | generate, {args.src_points}x{args.src_points} "
          f"grid (s) | projected voc pattern (s/image) | relative to segment_anything SAM {size} |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for source, what, embed, per_prompt, total, projected in rows:
        print(f"| {source} | {what} | {embed:.1f} | {1e3 * per_prompt:.0f} | {total:.1f} | {projected:.0f} | "
              f"{projected / base:.2f} |")


def with_upstream_helpers(generator: object, image: np.ndarray) -> object:
    """``generator.generate(image)`` with upstream's ``mask_to_rle_pytorch`` and successive ``MaskData.cat`` in
    place of the generator module's linear-time ``mask_to_rle`` and ``_concat`` (what it ran before them)."""
    from segment_anything.utils.amg import MaskData, mask_to_rle_pytorch

    from tag2mask.superpixels import generator as module

    def cat_all(parts: list) -> MaskData:
        data = MaskData()
        for part in parts:
            data.cat(part)
        return data

    saved = module.mask_to_rle, module._concat
    module.mask_to_rle, module._concat = mask_to_rle_pytorch, cat_all
    try:
        return generator.generate(image)  # type: ignore[attr-defined]
    finally:
        module.mask_to_rle, module._concat = saved


def run_case(name: str, size: float, args: argparse.Namespace) -> bool:
    masks, levels = synthetic_masks(args.masks, args.h, args.w, args.seed, size)

    t0 = time.perf_counter()
    ref = naive_hierarchy_filter(masks, levels, args.thresh)
    t_naive = time.perf_counter() - t0
    ours = hierarchy_filter(masks, levels, args.thresh)
    same = np.array_equal(ours, ref)

    t_ours = median_time(lambda: hierarchy_filter(masks, levels, args.thresh), args.repeats)
    t_ours_torch = median_time(lambda: hierarchy_filter(torch.from_numpy(masks), levels, args.thresh), args.repeats)
    t_atoms = median_time(lambda: compute_atoms(masks), args.repeats)
    n_atoms = len(compute_atoms(masks, with_map=False).area)
    kept_per_level = [int((levels[ours] == lv).sum()) for lv in (2, 1, 0)]

    print(f"\n[{name}] {args.masks} masks at {args.w}x{args.h} (W x H), levels 2/1/0 = "
          f"{[int((levels == lv).sum()) for lv in (2, 1, 0)]}, mean area "
          f"{masks.reshape(len(masks), -1).sum(1).mean():.0f} px, {n_atoms} atoms; recall threshold {args.thresh}")
    print(f"  kept {len(ours)} masks (levels 2/1/0: {kept_per_level}); same indices and order as the naive loop: {same}")
    print(f"  {'naive double loop (1 run)':<40}: {t_naive * 1e3:9.1f} ms")
    print(f"  {f'hierarchy_filter, numpy (median {args.repeats})':<40}: {t_ours * 1e3:9.1f} ms")
    print(f"  {f'hierarchy_filter, torch (median {args.repeats})':<40}: {t_ours_torch * 1e3:9.1f} ms")
    print(f"  {'ratio naive / ours':<40}: {t_naive / t_ours:9.1f}x")
    print(f"  {f'compute_atoms with H×W map (median {args.repeats})':<40}: {t_atoms * 1e3:9.1f} ms")
    return same


if __name__ == "__main__":
    main()
