"""Cost of one stage-II training iteration, tag2mask's wrapper against the bare library network.

For each network (App. G sizes by default: DeepLabV3+ ResNet-101 at batch 16, Mask2Former Swin-B at batch 4, 512×512
crops, random weights) this times one optimiser step two ways, interleaved in the same run:

* **tag2mask** — :class:`~tag2mask.segmenters.base.Segmenter` ``loss`` (label maps → the network's targets and
  loss), the recipe's optimiser with its parameter groups, poly learning rate, gradient clipping when the recipe
  clips, float16 autocast + gradient scaling on CUDA with ``--amp``;
* **baseline** — the same library network called directly: smp ``DeepLabV3Plus`` + ``F.cross_entropy``, or
  transformers ``Mask2FormerForUniversalSegmentation`` with ready-made targets, plain SGD / AdamW.

The ratio shows what the wrapper costs on top of the network itself. It also times the training augmentation of
one VOC-size (500×375) image (:func:`tag2mask.segmenters.augment.train_sample`), the per-sample CPU work a data
loader worker does.

    python benchmarks/stage2_step.py [--device cpu|cuda] [--amp] [--net deeplabv3plus mask2former]
                                     [--batch N] [--crop 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def _timed(fn: Callable[[], None], device: str, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats + 1):  # the first call warms up (cuDNN autotuning, allocator)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out[1:]


def _bench(net: str, args: argparse.Namespace) -> None:
    from tag2mask.segmenters.inference import autocast
    from tag2mask.segmenters.loop import build_optimizer, training_step
    from tag2mask.segmenters.mask2former import semantic_targets
    from tag2mask.segmenters.recipes import default_recipe
    from tag2mask.stages.train_seg import build_segmenter

    recipe = default_recipe(net, "voc")
    recipe.backbone_weights = "none"
    if args.backbone:
        recipe.backbone = args.backbone
    batch = args.batch or recipe.batch_size
    use_amp = args.amp and args.device.startswith("cuda")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, args.crop, args.crop, generator=g).to(args.device)
    labels = torch.randint(0, 21, (batch, args.crop, args.crop), generator=g)
    labels[:, :8] = 255
    labels = labels.to(args.device)

    ours = build_segmenter(recipe, 21).to(args.device).train()
    optimizer = build_optimizer(ours, recipe)
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    def ours_step() -> None:  # exactly the training loop's step
        training_step(ours, images, labels, optimizer, recipe, 10, 1000, scaler=scaler, device=args.device)

    # the baseline: the very same library network object, called directly
    bare = ours.net if net == "deeplabv3plus" else ours.model
    if net == "deeplabv3plus":
        bare_opt: torch.optim.Optimizer = torch.optim.SGD(bare.parameters(), lr=0.01, momentum=0.9,
                                                          weight_decay=5e-4)
    else:
        bare_opt = torch.optim.AdamW(bare.parameters(), lr=1e-4, weight_decay=0.05)
    class_labels, mask_labels = semantic_targets(labels) if net == "mask2former" else ([], [])
    bare_scaler = torch.amp.GradScaler("cuda") if use_amp else None

    def bare_step() -> None:
        bare_opt.zero_grad(set_to_none=True)
        with autocast(args.device, use_amp):
            if net == "deeplabv3plus":
                loss = F.cross_entropy(bare(images).float(), labels, ignore_index=255)
            else:
                loss = bare(pixel_values=images, mask_labels=mask_labels, class_labels=class_labels).loss
        (bare_scaler.scale(loss) if bare_scaler is not None else loss).backward()
        if bare_scaler is not None:
            bare_scaler.step(bare_opt)
            bare_scaler.update()
        else:
            bare_opt.step()

    t_ours, t_bare = [], []
    for _ in range(args.rounds):  # interleaved, so that machine load hits both alike
        t_ours += _timed(ours_step, args.device, args.repeats)
        t_bare += _timed(bare_step, args.device, args.repeats)
    a, b = statistics.median(t_ours), statistics.median(t_bare)
    n_params = sum(p.numel() for p in ours.parameters()) / 1e6
    mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if args.device.startswith(
        "cuda") else ""
    print(f"{net} ({recipe.backbone}, {n_params:.0f} M parameters), batch {batch}, {args.crop}x{args.crop}, "
          f"{'AMP' if use_amp else 'float32'}: tag2mask {a * 1e3:.0f} ms/iteration, bare library {b * 1e3:.0f} ms "
          f"-> ratio {a / b:.2f}x{mem}")
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _bench_augment() -> None:
    from tag2mask.segmenters.augment import train_sample

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    label = rng.integers(0, 21, (375, 500), dtype=np.uint8)
    times = []
    for k in range(21):
        t0 = time.perf_counter()
        train_sample(image, label, np.random.default_rng(k))
        times.append(time.perf_counter() - t0)
    print(f"augmentation of one 500x375 image (resize x U(0.5, 2) of (2048, 512), 512 crop, flip, photometric): "
          f"{statistics.median(times[1:]) * 1e3:.1f} ms per sample")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="float16 autocast + gradient scaling (CUDA only)")
    parser.add_argument("--net", nargs="+", default=["deeplabv3plus", "mask2former"])
    parser.add_argument("--backbone", help="override the recipe's backbone (e.g. resnet18, swin-l)")
    parser.add_argument("--batch", type=int, help="default: the App. G batch (16 / 4)")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# stage II step, {datetime.date.today()}, {name}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    _bench_augment()
    for net in args.net:
        _bench(net, args)


if __name__ == "__main__":
    main()
