"""Peak memory and time for one very large photo (6000×4000 by default) in each per-image stage, at full model size.

Each stage runs in its own fresh process, so each peak resident memory (``ru_maxrss``) is that stage's alone:

* ``read``         decode the JPEG and downscale it to the working size (the floor every stage pays)
* ``superpixels``  quasi-superpixels with a random SAM (``--sam-type``, ViT-B by default; the preset's generator
                   pattern and points) at ``superpixels.max_side``
* ``cams``         Softmax-GradCAM + CAA with a random full-size CLIP ViT-B/16 (OpenAI architecture) and the VOC
                   preset's prompts, 3 positive classes, at ``cams.max_side``
* ``seeds``        SAMS on the saved CAM and superpixels, the seed enlarged to 6000×4000 and written as a PNG

Baseline: the same stages without a cap would need, for the CAMs alone, a patch grid of ``H/16 × W/16`` and an
attention matrix per head of that many tokens squared; the script prints that size rather than trying it.

    python benchmarks/large_photo.py [--size 6000x4000] [--max-side 1024] [--threads 2] [--sam-type vit_b]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _photo(path: Path, width: int, height: int) -> None:
    """A JPEG photo-like test image: a smooth colour field with a red disc, a blue box and fine noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([120 + 60 * np.sin(xx / 900), 140 + 50 * np.cos(yy / 700), 110 + 40 * np.sin((xx + yy) / 1300)], -1)
    base += rng.normal(0, 6, base.shape).astype(np.float32)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse([width * 0.15, height * 0.2, width * 0.45, height * 0.7], fill=(200, 40, 40))
    draw.rectangle([width * 0.55, height * 0.35, width * 0.85, height * 0.8], fill=(40, 70, 200))
    image.save(path, quality=92)


def _stage(name: str, work: Path, max_side: int, sam_type: str) -> dict:
    """Run one stage in this process; returns seconds and peak memory."""
    import torch

    from tag2mask.config import load_config
    from tag2mask.data.base import fit_image, read_rgb

    config = load_config("voc", [f"cams.max_side={max_side}", f"superpixels.max_side={max_side}",
                                 "runtime.device=cpu"])
    t0 = time.perf_counter()
    image = read_rgb(work / "photo.jpg")
    info: dict = {"image": list(image.shape[:2])}
    if name == "read":
        info["working"] = list(fit_image(image, max_side).shape[:2])
    elif name == "superpixels":
        from segment_anything import sam_model_registry

        from tag2mask.models.sam import sam_predictor
        from tag2mask.stages.superpixels import generator_params
        from tag2mask.superpixels import QuasiSuperpixelGenerator

        torch.manual_seed(0)
        sam = sam_model_registry[sam_type](checkpoint=None).eval()
        params = generator_params(config)
        generator = QuasiSuperpixelGenerator(sam_predictor(sam), config.superpixels.preset, **params)
        sp = generator.generate(fit_image(image, max_side))
        sp.save(work / "photo_sp")
        info.update(superpixels=len(sp), size=list(sp.size))
    elif name == "cams":
        import open_clip

        from tag2mask.cam import GradCAMClip
        from tag2mask.io import save_npz
        from tag2mask.stages.cams import cam_one
        from tag2mask.stages.common import build_prompt_learner

        torch.manual_seed(0)
        clip = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).float().eval()
        learner = build_prompt_learner(clip, config, "cls", config.data.fg_names)  # the preset's prompts
        model = GradCAMClip(clip, learner, softmax=config.cams.softmax, att_layers=config.cams.att_layers).eval()
        arrays = cam_one(model, image, np.array([2, 6, 14], np.int64), config, "cls", "cpu")
        save_npz(work / "photo_cam.npz", **arrays)
        info.update(cam_grid=list(arrays["cam"].shape[1:]))
    elif name == "seeds":
        from tag2mask.data.base import resize_labels
        from tag2mask.io import load_npz
        from tag2mask.seeding import sams_seed
        from tag2mask.superpixels import Superpixels
        from tag2mask.io import write_label_png

        cam = load_npz(work / "photo_cam.npz")
        sp = Superpixels.load(work / "photo_sp")
        s = config.seeds.coarse
        seed = np.asarray(sams_seed(cam["cam"], cam["fg_cls"], sp, None, s.bg_power, norm_first=s.norm_first,
                                    gather=s.gather, bg_method=s.bg_method, uncovered=s.uncovered))
        seed = resize_labels(seed, image.shape[:2])
        write_label_png(work / "photo_seed.png", seed)
        info.update(seed=list(seed.shape))
    info.update(seconds=round(time.perf_counter() - t0, 1), peak_mib=round(_peak_mib()))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT of the photo")
    parser.add_argument("--max-side", type=int, default=1024, help="cams.max_side and superpixels.max_side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sam-type", default="vit_b", help="vit_b (enough on a CPU), vit_l or vit_h")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.stage:
        print(json.dumps(_stage(args.stage, Path(args.work), args.max_side, args.sam_type)))
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _photo(work / "photo.jpg", width, height)
        rows = []
        for stage in ("read", "superpixels", "cams", "seeds"):
            cmd = [sys.executable, __file__, "--stage", stage, "--work", str(work), "--max-side", str(args.max_side),
                   "--threads", str(args.threads), "--sam-type", args.sam_type]
            r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            if r.returncode != 0:
                sys.exit(f"stage {stage} failed:\n{r.stderr[-4000:]}")
            rows.append((stage, json.loads(r.stdout.strip().splitlines()[-1])))
    tokens = (height // 16) * (width // 16)
    print(f"photo {width}x{height}, max_side {args.max_side}, {args.threads} thread(s), SAM {args.sam_type} "
          f"(random weights), CLIP ViT-B/16 (random weights)\n")
    print("| stage | peak resident memory | seconds | what |")
    print("| --- | --- | --- | --- |")
    for stage, info in rows:
        what = {k: v for k, v in info.items() if k not in ("seconds", "peak_mib")}
        print(f"| {stage} | {info['peak_mib']} MiB | {info['seconds']} | {what} |")
    print(f"\nwithout the cap: a {height // 16}x{width // 16} patch grid ({tokens} tokens); one attention map of one "
          f"head alone is {tokens * tokens * 4 / 2**30:.0f} GiB in float32, and ViT-B/16 has 12 heads in each of "
          "12 layers")


if __name__ == "__main__":
    main()
