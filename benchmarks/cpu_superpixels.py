"""How well the CPU quasi-superpixels (:mod:`tag2mask.superpixels.cpu`) fit the ground truth of the synthetic
demo dataset, and how fast they are.

Dataset: ``make_synthetic_dataset(tmp, n_train=48, n_val=16, size=(96, 128), seed=0)``, train + val (64 images).

Per method (``felzenszwalb``, ``slic``, default parameters unless ``--scales`` etc. are given):

* oracle mIoU (%, 6 classes incl. background, confusion summed over the dataset) of each level's partition, each
  segment labelled with the majority ground-truth class of its pixels; an upper bound on any seeding from
  these segments;
* ``final``: the generator's output after the hierarchy filter, each mask labelled by majority and painted as SAMS
  paints (SPEC §8 step 7: ascending level, so wholes win; uncovered pixels background);
* ``sams(gt)``: ``sams_seed`` itself on the final masks with the one-hot ground truth of the positive classes as
  the CAM (bg power 0.7): the seeds a perfect CAM would give through these superpixels;
* masks per image per level (before the filter: segments of the partition; after: kept masks), mean [min, max];
* ms per image: the three segmentations alone, and the whole ``generate`` (segmentation, masks, hierarchy filter,
  atoms and RLE of :class:`~tag2mask.superpixels.Superpixels`).

Run: ``python benchmarks/cpu_superpixels.py [--method felzenszwalb] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch

from tag2mask.data import make_synthetic_dataset, open_dataset
from tag2mask.seeding import sams_seed
from tag2mask.superpixels.cpu import DEFAULTS, METHODS, CpuSuperpixelGenerator

N_CLASSES = 6  # background + 5 shapes


def _confusion(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.bincount(gt.reshape(-1).astype(np.int64) * N_CLASSES + pred.reshape(-1),
                       minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)


def _miou(conf: np.ndarray) -> float:
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return float(np.mean(inter[present] / union[present]) * 100)


def _majority(masks: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Majority ground-truth class of each mask (S), ties to the lower class."""
    onehot = np.eye(N_CLASSES, dtype=np.int64)[gt]  # H×W×C
    return np.einsum("shw,hwc->sc", masks.astype(np.int64), onehot).argmax(1)


def _paint(masks: np.ndarray, levels: np.ndarray, labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """SAMS painting order (ascending level, stable): wholes are painted last; uncovered pixels stay 0."""
    out = np.zeros(shape, np.int64)
    for k in np.argsort(levels, kind="stable"):
        out[masks[k]] = labels[k]
    return out


def _partition_oracle(labels: np.ndarray, gt: np.ndarray) -> np.ndarray:
    n = int(labels.max()) + 1
    counts = np.bincount(labels.reshape(-1) * N_CLASSES + gt.reshape(-1), minlength=n * N_CLASSES)
    return counts.reshape(n, N_CLASSES).argmax(1)[labels]


def _stats(values: list[int]) -> str:
    return f"{np.mean(values):6.1f} [{min(values)}, {max(values)}]"


def benchmark(gen: CpuSuperpixelGenerator, images: list[np.ndarray], gts: list[np.ndarray]) -> None:
    conf_levels = [np.zeros((N_CLASSES, N_CLASSES), np.int64) for _ in range(3)]
    conf_final = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    conf_sams = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    n_segments: list[list[int]] = [[], [], []]
    n_kept: list[list[int]] = [[], [], []]
    t_segment = t_generate = 0.0
    gen.generate(images[0])  # warm-up (imports)
    for image, gt in zip(images, gts):
        t0 = time.perf_counter()
        partitions = gen.segment(image)
        t1 = time.perf_counter()
        sp = gen.generate(image)
        t2 = time.perf_counter()
        t_segment += t1 - t0
        t_generate += t2 - t1
        for level, labels in enumerate(partitions):
            n_segments[level].append(int(labels.max()) + 1)
            conf_levels[level] += _confusion(_partition_oracle(labels, gt), gt)
        masks = sp.masks
        for level in range(3):
            n_kept[level].append(int((sp.levels == level).sum()))
        conf_final += _confusion(_paint(masks, sp.levels, _majority(masks, gt), gt.shape), gt)
        fg = [c - 1 for c in np.unique(gt) if c > 0]
        cam = np.stack([(gt == c + 1).astype(np.float32) for c in fg])
        conf_sams += _confusion(sams_seed(cam, fg, sp, None, 0.7).astype(np.int64), gt)
    n = len(images)
    print(f"\n{gen.method}: {gen.params}")
    print("  oracle mIoU (%), majority label per segment:")
    for level, name in ((0, "fine   (level 0)"), (1, "medium (level 1)"), (2, "coarse (level 2)")):
        print(f"    {name}: {_miou(conf_levels[level]):6.2f}   segments/image {_stats(n_segments[level])}")
    print(f"    final (after the hierarchy filter, SAMS painting order): {_miou(conf_final):6.2f}")
    print(f"    sams_seed with the one-hot GT as CAM (bg power 0.7):    {_miou(conf_sams):6.2f}")
    print("  masks/image kept after the filter: " + ", ".join(
        f"level {lv} {_stats(n_kept[lv])}" for lv in (2, 1, 0)))
    print(f"  ms/image: segmentation {1000 * t_segment / n:.1f}, whole generate {1000 * t_generate / n:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=METHODS, action="append", help="default: both")
    ap.add_argument("--scales", type=float, nargs=3, help="per level, fine -> coarse (default: DEFAULTS)")
    ap.add_argument("--min-size", type=int)
    ap.add_argument("--sigma", type=float)
    ap.add_argument("--recall-thresh", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable timings)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_dataset(tmp, n_train=48, n_val=16, size=(96, 128), seed=0)
        images, gts = [], []
        for split in ("train", "val"):
            ds = open_dataset("synthetic", root, split)
            for image_id in ds.ids:
                images.append(ds.load_image(image_id))
                gts.append(ds.load_mask(image_id).astype(np.int64))
    print(f"synthetic dataset: {len(images)} images of {images[0].shape[0]}x{images[0].shape[1]}")
    for method in args.method or list(METHODS):
        extra = {k: v for k, v in (("min_size", args.min_size), ("sigma", args.sigma)) if v is not None}
        gen = CpuSuperpixelGenerator(method, args.scales, recall_thresh=args.recall_thresh, **extra)
        assert set(extra) <= set(DEFAULTS[method])
        benchmark(gen, images, gts)


if __name__ == "__main__":
    main()
