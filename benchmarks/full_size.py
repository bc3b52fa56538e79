"""Dress rehearsal at full size: the ``voc`` preset on 500×375 images with full-size random models, every stage.

In a temporary folder it builds a VOC-layout dataset of N synthetic 500×375 images (``JPEGImages``,
``SegmentationClassAug``, ``ImageSets/SegmentationAug/train_aug.txt``), a random CLIP ViT-B/16 written as OpenAI's
``ViT-B-16.pt`` (TorchScript) and a random SAM ViT-B in the official layout (``sam_vit_b_01ec64.pth``) in a weight
folder (``TAG2MASK_WEIGHTS``), then runs each stage of ``--preset voc`` as its own command in its own process, with
only these values changed:

* ``train.*.max_iter`` (``--iterations``, default 2 per task; warm-up shortened to match) and ``train.*.batch_size``
  = min(16, N) (a batch cannot be larger than the split);
* quasi-superpixels: SAM (``models.sam_type=vit_b models.sam=sam_vit_b_01ec64.pth``, enough on a CPU) at the
  preset's ``voc`` pattern is run and timed on ``--sam-images`` images (default 1) in a scratch run; the pipeline
  then uses the CPU source (``superpixels.source=felzenszwalb``) for all images, as SAM takes minutes per image
  on a CPU.

It prints one table: per stage, seconds per image (per iteration for training), peak resident memory of that
stage's process, bytes written per image; then the projection to VOC ``train_aug`` (10,582 images, the ``voc``
preset's 1,800 + 17,000 iterations) and COCO ``train`` (82,081 images, the ``coco`` preset's 20,500 + 75,000) on
this machine at batch 16, and the disk they need. ``--keep DIR`` keeps the dataset and run there (``tests/test_full_size.py``
checks the real shapes in it).

    python benchmarks/full_size.py [--images 4] [--threads 2] [--iterations 2] [--sam-images 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# One stage per command, in pipeline order: (name, command, what its time is divided by)
STAGES = [
    ("superpixels", ["superpixels"], "images"),
    ("train_cls", ["train", "--task", "cls"], "iterations"),
    ("cams_cls", ["cams", "--task", "cls"], "images"),
    ("seeds_coarse", ["seeds", "--task", "cls"], "images"),
    ("train_seg", ["train", "--task", "seg"], "iterations"),
    ("cams_seg", ["cams", "--task", "seg"], "images"),
    ("seeds_fine", ["seeds", "--task", "seg"], "images"),
]
# The presets' full work: images of the training split and iterations per task.
PROJECTIONS = {"VOC train_aug": (10582, {"cls": 1800, "seg": 17000}),
               "COCO train": (82081, {"cls": 20500, "seg": 75000})}

_SHIM = ("import resource, sys\nfrom tag2mask.cli import main\nrc = main(sys.argv[1:])\n"
         "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)\n")


def make_voc_tree(root: Path, n: int) -> list[str]:
    """A VOC2012-layout folder of ``n`` synthetic 500×375 images (their shape classes are VOC ids 1–5)."""
    from PIL import Image

    from tag2mask.data import make_synthetic_dataset

    syn = make_synthetic_dataset(root.parent / "synthetic", n_train=n, n_val=1, size=(375, 500), seed=0)
    ids = []
    for k, png in enumerate(sorted((Path(syn) / "images").glob("train_*.png"))):
        image_id = f"2026_{k:06d}"
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
        with Image.open(png) as im:
            im.convert("RGB").save(root / "JPEGImages" / f"{image_id}.jpg", quality=92)
        shutil.copy(Path(syn) / "masks" / png.name, root / "SegmentationClassAug" / f"{image_id}.png")
        ids.append(image_id)
    (root / "ImageSets" / "SegmentationAug").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "SegmentationAug" / "train_aug.txt").write_text("\n".join(ids) + "\n")
    shutil.rmtree(syn)
    return ids


def make_weights(folder: Path, torchscript: bool) -> None:
    """Random full-size CLIP ViT-B/16 as OpenAI's ViT-B-16.pt and SAM ViT-B as sam_vit_b_01ec64.pth."""
    import open_clip
    import torch
    from segment_anything import sam_model_registry

    from tag2mask.testing import save_openai_state_dict, save_openai_torchscript, save_sam_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    (save_openai_torchscript if torchscript else save_openai_state_dict)(clip, folder / "ViT-B-16.pt")
    save_sam_state_dict(sam_model_registry["vit_b"](checkpoint=None), folder / "sam_vit_b_01ec64.pth")


def _run(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run ``tag2mask ARGS`` in a fresh process; returns (seconds, peak resident KiB, stdout)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _SHIM, *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"tag2mask {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    peak = next(int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("PEAK_KIB"))
    return seconds, peak, r.stdout


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2, help="prompt-training iterations per task")
    parser.add_argument("--sam-images", type=int, default=1, help="images SAM makes quasi-superpixels of (timed)")
    parser.add_argument("--state-dict", action="store_true", help="write CLIP as a plain state dict (faster)")
    parser.add_argument("--keep", metavar="DIR", help="build and keep everything in DIR instead of a temp folder")
    parser.add_argument("--extra", nargs="*", default=[], metavar="key=value", help="more config overrides")
    args = parser.parse_args()

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tag2mask-full-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        report(base, args)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def report(base: Path, args: argparse.Namespace) -> None:
    n = args.images
    t0 = time.perf_counter()
    make_voc_tree(base / "VOC2012", n)
    make_weights(base / "weights", torchscript=not args.state_dict)
    setup = time.perf_counter() - t0
    env = {**os.environ, "TAG2MASK_WEIGHTS": str(base / "weights"), "TAG2MASK_CACHE": str(base / "cache"),
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    batch = min(16, n)
    common = [f"data.root={base / 'VOC2012'}", "models.sam_type=vit_b", "models.sam=sam_vit_b_01ec64.pth",
              "runtime.device=cpu", "runtime.num_workers=0", *args.extra]
    for task in ("cls", "seg"):
        common += [f"train.{task}.max_iter={args.iterations}", f"train.{task}.warmup_iter={max(1, args.iterations // 2)}",
                   f"train.{task}.batch_size={batch}"]
    rows: list[tuple[str, str, str, str, str]] = []

    sam_per_image = None
    if args.sam_images:  # SAM at the preset's pattern, timed on a few images in a scratch run
        seconds, peak, _ = _run(["superpixels", "--preset", "voc", "--run", str(base / "sam-run"), "--limit",
                                 str(args.sam_images), *common], env)
        sam_per_image = seconds / args.sam_images
        rows.append(("superpixels (SAM ViT-B, voc pattern)", f"{seconds / args.sam_images:.1f} s/image",
                     f"{peak / 2**20:.1f} GiB", "-", f"{args.sam_images} image(s)"))

    run = base / "run"
    first = ["--preset", "voc", "--run", str(run), *common, "superpixels.source=felzenszwalb"]
    cache_before = _bytes(base / "cache")
    per_item: dict[str, float] = {}
    for k, (name, command, unit) in enumerate(STAGES):
        seconds, peak, out = _run([*command, *(first if k == 0 else ["--run", str(run)])], env)
        count = args.iterations if unit == "iterations" else n
        written = (_bytes(base / "cache") - cache_before) if name == "superpixels" else _bytes(run / name)
        per_item[name] = seconds / count
        size = f"{written / 2**20:.1f} MiB in all" if unit == "iterations" else f"{written / n / 1024:.0f} KiB/image"
        rows.append((name, f"{seconds / count:.2f} s/{'iteration' if unit == 'iterations' else 'image'}",
                     f"{peak / 2**20:.1f} GiB", size, "incl. model loading"))
    seconds, peak, out = _run(["run", "--run-dir", str(run)], env)  # everything done: skipped, then evaluated
    evaluated = next((line for line in out.splitlines() if "seed mIoU" in line), "").strip()
    rows.append(("run (all skipped) + evaluate", f"{seconds:.1f} s", f"{peak / 2**20:.1f} GiB", "-", evaluated[:80]))

    import torch

    print(f"full-size dress rehearsal: {n} VOC-layout images of 500x375, random CLIP ViT-B/16 "
          f"({'TorchScript' if not args.state_dict else 'state dict'}) and SAM ViT-B, preset voc, batch {batch}, "
          f"{args.iterations} iterations per task, {args.threads} thread(s), torch {torch.__version__}, "
          f"setup {setup:.0f} s\n")
    print("| stage | time | peak resident memory | written | note |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    per_image = sum(v for k, v in per_item.items() if not k.startswith("train_"))
    if sam_per_image is not None:  # the preset makes its quasi-superpixels with SAM, not the CPU source
        per_image += sam_per_image - per_item["superpixels"]
    per_image_disk = sum(_bytes(run / name) for name, _, unit in STAGES[1:] if unit == "images") / n
    fixed_disk = sum(_bytes(run / name) for name, _, unit in STAGES if unit == "iterations")
    sp_disk = (_bytes(base / "cache") - cache_before) / n
    print("\nprojection on this machine (same threads; model loading amortised only roughly; quasi-superpixels "
          f"{'by SAM as timed above' if sam_per_image is not None else 'by the CPU source (no SAM timed)'}):")
    for what, (images, iters) in PROJECTIONS.items():
        scale = 16 / batch  # an iteration at the presets' batch 16 costs about that much more than at ours
        hours = per_image * images + scale * (per_item["train_cls"] * iters["cls"] + per_item["train_seg"] * iters["seg"])
        hours /= 3600
        print(f"- {what}: {images:,} images, {iters['cls']:,} + {iters['seg']:,} iterations at batch 16 → about "
              f"{hours:,.0f} h; run folder about {(per_image_disk * images + fixed_disk) / 2**30:.1f} GiB, "
              f"superpixel cache about {sp_disk * images / 2**30:.1f} GiB (CPU source here; SAM's is larger)")
    print(f"  (an iteration measured at batch {batch} counts as {16 / batch:.1f}x that at batch 16)")
    info = {"rows": rows, "per_item": per_item, "images": n, "batch": batch}
    (base / "full_size.json").write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
