"""Benchmark the hierarchy filter (SPEC §7.3 step 9) on SAM-size inputs, one CPU thread.

Times (a) a naive baseline written here — a Python double loop over candidate and container masks computing
``(m & k).sum() / m.sum()`` on full masks, stopping at the first container mask that reaches the threshold — and
(b) ``tag2mask.superpixels.hierarchy_filter`` on the same synthetic masks (ellipses: whole masks, parts and
subparts, many parts/subparts placed inside larger masks), checks both keep the same indices in the same order,
and prints absolute times, the ratio baseline/ours, the machine and the date. Also times the atom decomposition
with its H×W label map (``compute_atoms``, done once per image by ``Superpixels.from_masks``).

Usage: ``python benchmarks/superpixels.py [--h 768 --w 1024 --masks 300 --repeats 5]``
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
    args = parser.parse_args()

    torch.set_num_threads(1)
    print(f"hierarchy filter benchmark  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {cpu_name()} ({os.cpu_count()} logical CPUs), {platform.system()} {platform.release()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, 1 thread")
    ok = True
    for name, size in (("sparse", 1.0), ("dense", 3.0)):
        ok &= run_case(name, size, args)
    if not ok:
        raise SystemExit("MISMATCH between the naive loop and hierarchy_filter")


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
