"""Benchmark of SAMS seeding (SPEC §8, §13 item 18) on one CPU thread, VOC-size synthetic input.

Input: a 500×375 image, 3 positive classes, a 32×24 raw CAM grid (some negative values), 60 quasi-superpixels
(overlapping irregular blobs at three levels — wholes, parts mostly inside wholes, subparts mostly inside parts —
with part of the image left uncovered).

Timed in the same run, interleaved round-robin so that machine load affects all of them alike:

* ``reference-style``: the ``C×S×H×W`` broadcast gather of the reference, painting one boolean mask at a time;
* ``plain loop``: one boolean index per mask (numpy ``flatnonzero``), reused for the gather and for painting —
  the ratios are against this one, the fastest plain form we found;
* ``plain loop, torch``: the same with torch boolean indexing (``R[:, mask]``, ``seed[mask] = label``);
* ``ours, direct``: ``sams_seed(cam, fg_cls, masks, levels)`` (builds the atom index on the fly);
* ``ours, precomputed``: ``sams_seed(..., precomputed=index)``;
* ``ours, Superpixels``: ``sams_seed(cam, fg_cls, sp, None)`` with a :class:`tag2mask.superpixels.Superpixels`
  (its stored atoms; the index is built once per ``Superpixels`` and reused);
* ``precompute_superpixels``: the one-off cost of the index (per image, reused for every CAM / hyper-parameter);
* ``bilinear resize``: the resize of the CAM alone (a floor every method pays), in the form every method here
  uses: the ``P`` channels as a batch of one-channel images (``F.interpolate(cam[:, None])``, as ``sams_seed``
  does; see ``tag2mask.seeding.sams._resize``);
* ``resize, 1×P×h×w``: for comparison, ``F.interpolate(cam[None])``. With one torch thread and ``P = 3`` torch
  sends this to its channels-last kernel (slower here, and rounding differently from every other case).

All seeding methods must give identical seeds (checked). Run: ``python benchmarks/seeding.py [--reps N]``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tag2mask.seeding import precompute_superpixels, sams_seed
from tag2mask.superpixels import Superpixels

H, W = 375, 500
CAM_HW = (24, 32)
FG_CLS = [2, 11, 14]
BG_POWER = 0.7


# ----------------------------------------------------------------------------------------------------------------
# synthetic input


def _blob(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    """An irregular rotated ellipse (radius modulated by a few low-frequency harmonics)."""
    theta = rng.uniform(0, np.pi)
    ay, ax = r * rng.uniform(0.6, 1.4), r * rng.uniform(0.6, 1.4)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / ax
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ay
    ang = np.arctan2(v, u)
    wobble = 1 + sum(rng.uniform(0, 0.15) * np.cos(f * ang + rng.uniform(0, 2 * np.pi)) for f in (2, 3, 5))
    return u**2 + v**2 <= wobble**2


def make_superpixels(
    seed: int = 0, n_whole: int = 14, n_part: int = 20, n_sub: int = 26
) -> tuple[np.ndarray, np.ndarray]:
    """60 overlapping masks at levels 2 (whole), 1 (part), 0 (subpart) in a SAM-like order, some pixels uncovered."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    masks: list[np.ndarray] = []
    levels: list[int] = []

    def add(parents: list[tuple[float, float, float]], lo: float, hi: float, level: int) -> tuple[float, float, float]:
        while True:  # SAM never returns an empty (or near-empty) mask
            if parents:
                py, px, pr = parents[rng.integers(len(parents))]
                cy, cx, r = py + rng.normal(0, pr / 2), px + rng.normal(0, pr / 2), rng.uniform(lo, hi) * pr
            else:
                cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(lo, hi)
            m = _blob(rng, yy, xx, cy, cx, r)
            if m.sum() >= 16:
                masks.append(m)
                levels.append(level)
                return cy, cx, r

    wholes = [add([], 60, 125, 2) for _ in range(n_whole)]
    parts = [add(wholes, 0.25, 0.5, 1) for _ in range(n_part)]
    for _ in range(n_sub):
        add(parts, 0.2, 0.5, 0)
    perm = rng.permutation(len(masks))  # SAM output order is not sorted by level
    return np.ascontiguousarray(np.stack(masks)[perm]), np.asarray(levels, np.int64)[perm]


def make_cam(seed: int = 0) -> np.ndarray:
    """A smooth raw CAM on the 32×24 grid: a few positive bumps per class on a slightly negative background."""
    rng = np.random.default_rng(seed + 1)
    yy, xx = np.mgrid[0 : CAM_HW[0], 0 : CAM_HW[1]].astype(np.float32)
    cam = np.full((len(FG_CLS), *CAM_HW), -0.2, np.float32)
    for c in range(len(FG_CLS)):
        for _ in range(3):
            cy, cx, s = rng.uniform(0, CAM_HW[0]), rng.uniform(0, CAM_HW[1]), rng.uniform(2, 6)
            cam[c] += rng.uniform(0.5, 2.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        cam[c] += rng.normal(0, 0.05, CAM_HW)
    return cam.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# baselines (written here, not in the package)


def _resize(cam: torch.Tensor) -> torch.Tensor:
    """The package's resize (channels as a batch of one-channel images; thread-count independent)."""
    return F.interpolate(cam[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]


def _resize_clamp(cam: torch.Tensor) -> torch.Tensor:
    return _resize(cam).clamp(min=0)


def _finish(r: torch.Tensor, levels: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Shared tail of the baselines: min-max across masks, bg pow, argmax, stable (level, conf) sort, paint loop."""
    q = (r - r.amin(1, keepdim=True)) / (r.amax(1, keepdim=True) - r.amin(1, keepdim=True) + 1e-7)
    scores = torch.cat([((1 - q.amax(0)) ** BG_POWER)[None], q])
    idx = scores.argmax(0)
    conf = scores.gather(0, idx[None])[0]
    labels = torch.tensor([0] + [c + 1 for c in FG_CLS])[idx]
    by_conf = torch.sort(conf, stable=True).indices
    order = by_conf[torch.sort(levels[by_conf], stable=True).indices]
    seed = torch.zeros((H, W), dtype=torch.uint8)
    for k in order.tolist():
        seed[masks[k]] = int(labels[k])
    return seed.numpy()


def reference_style(cam: torch.Tensor, masks: torch.Tensor, levels: torch.Tensor) -> np.ndarray:
    """The reference's way: a C×S×H×W broadcast product summed over H, W (SPEC §13 item 18)."""
    rr = _resize_clamp(cam)
    area = masks.sum(dim=(1, 2))
    r = (rr[:, None] * masks[None]).sum(dim=(2, 3)) / area
    return _finish(r, levels, masks)


def plain_loop_torch(cam: torch.Tensor, masks: torch.Tensor, levels: torch.Tensor) -> np.ndarray:
    """The same loop written with torch boolean indexing (``R[:, mask]``, ``seed[mask] = label``)."""
    rr = _resize_clamp(cam)
    r = torch.stack([rr[:, m].mean(dim=1) for m in masks], dim=1)
    return _finish(r, levels, masks)


def plain_loop(cam: torch.Tensor, masks: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """One boolean index per mask (``flatnonzero``), used for the gather and again for painting (numpy, the
    fastest plain form we found: torch boolean indexing is several times slower here)."""
    rr = _resize_clamp(cam).reshape(len(FG_CLS), -1).numpy()
    flat = masks.reshape(len(masks), -1)
    pix = [np.flatnonzero(m) for m in flat]
    r = np.stack([rr[:, ix].sum(axis=1) / len(ix) for ix in pix], axis=1)
    q = (r - r.min(1, keepdims=True)) / (r.max(1, keepdims=True) - r.min(1, keepdims=True) + np.float32(1e-7))
    scores = np.concatenate([((1 - q.max(0)) ** np.float32(BG_POWER))[None], q])
    idx = scores.argmax(0)  # first maximum
    conf = scores[idx, np.arange(len(pix))]
    labels = np.array([0] + [c + 1 for c in FG_CLS], np.uint8)[idx]
    seed = np.zeros(flat.shape[1], np.uint8)
    for k in np.lexsort((conf, levels)):  # stable: level, then conf, then input order
        seed[pix[k]] = labels[k]
    return seed.reshape(H, W)


# ----------------------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _bench(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(reps):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(1)
    masks_np, levels_np = make_superpixels(args.seed)
    cam_np = make_cam(args.seed)
    masks_t, levels_t, cam_t = torch.from_numpy(masks_np), torch.from_numpy(levels_np), torch.from_numpy(cam_np)
    index = precompute_superpixels(masks_np, levels_np)
    sp = Superpixels.from_masks(masks_np, levels_np)

    seeds = {
        "reference-style": reference_style(cam_t, masks_t, levels_t),
        "plain loop": plain_loop(cam_t, masks_np, levels_np),
        "plain loop, torch": plain_loop_torch(cam_t, masks_t, levels_t),
        "ours, direct": sams_seed(cam_np, FG_CLS, masks_np, levels_np, BG_POWER),
        "ours, precomputed": sams_seed(cam_np, FG_CLS, None, None, BG_POWER, precomputed=index),
        "ours, Superpixels": sams_seed(cam_np, FG_CLS, sp, None, BG_POWER),
    }
    base = seeds["reference-style"]
    identical = {k: bool(np.array_equal(v, base)) for k, v in seeds.items()}

    fns: dict[str, Callable[[], object]] = {
        "reference-style": lambda: reference_style(cam_t, masks_t, levels_t),
        "plain loop": lambda: plain_loop(cam_t, masks_np, levels_np),
        "plain loop, torch": lambda: plain_loop_torch(cam_t, masks_t, levels_t),
        "ours, direct": lambda: sams_seed(cam_np, FG_CLS, masks_np, levels_np, BG_POWER),
        "ours, precomputed": lambda: sams_seed(cam_np, FG_CLS, None, None, BG_POWER, precomputed=index),
        "ours, Superpixels": lambda: sams_seed(cam_np, FG_CLS, sp, None, BG_POWER),
        "precompute_superpixels": lambda: precompute_superpixels(masks_np, levels_np),
        "bilinear resize": lambda: _resize(cam_t),
        "resize, 1×P×h×w": lambda: F.interpolate(cam_t[None], size=(H, W), mode="bilinear", align_corners=False),
    }
    med = _bench(fns, args.reps)

    covered = masks_np.any(0)
    print("SAMS seeding benchmark (benchmarks/seeding.py)")
    print(f"date        : {_dt.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"machine     : {platform.machine()} {_cpu_model()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), numpy {np.__version__}, "
        f"Python {platform.python_version()}, torch threads {torch.get_num_threads()}"
    )
    if hasattr(os, "getloadavg"):
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (timings are inflated on a busy machine)")
    print(
        f"input       : {W}×{H}, {len(FG_CLS)} classes, CAM grid {CAM_HW[1]}×{CAM_HW[0]}, "
        f"{len(masks_np)} superpixels "
        f"(levels 2/1/0: {'/'.join(str(int((levels_np == lv).sum())) for lv in (2, 1, 0))}), "
        f"{100 * (1 - covered.mean()):.1f}% pixels uncovered, mean coverage {masks_np.sum(0).mean():.2f}, "
        f"{index.num_atoms} atoms"
    )
    print(f"identical seeds to reference-style: {identical}")
    print(f"median of {args.reps} interleaved repetitions, one thread; ratio = plain loop (numpy) / this:")
    loop = med["plain loop"]
    for name, ms in med.items():
        print(f"  {name:<24s} {ms:9.3f} ms   {loop / ms:6.2f}x")
    if not all(identical.values()):
        raise SystemExit("seeds differ")


if __name__ == "__main__":
    main()
