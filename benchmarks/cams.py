"""Benchmark CAA (SPEC §6) on a VOC-size patch grid, one CPU thread.

Times (a) a naive baseline written here — Sinkhorn, symmetrise, ``torch.linalg.matrix_power``, mask the columns
per class by an elementwise product, matmul — and (b) ``tag2mask.cam.caa_refine`` on the same random inputs
(attention = row-softmax of random logits), checks both give the same output, and prints median times and the
ratio baseline/ours.

Usage: ``python benchmarks/cams.py [--h 24 --w 32 --classes 3 --repeats 50]``
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from typing import Callable

import numpy as np
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


if __name__ == "__main__":
    main()
