"""``tag2mask segment``: text-to-semantic-mask on any image with a trained run (App. D, Table S4).

The given class names act as the image's tags: segmentation-task CAMs for those classes (SPEC §1.2, §3), CAA with
the run's segmentation settings (§6), quasi-superpixels of the image from the run's source (§7), SAMS with the
fine-seed settings (§8). Writes a palette PNG (label ids of the run's class list) and an overlay.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tag2mask.config import Config
from tag2mask.errors import Tag2MaskError
from tag2mask.io import atomic_write, write_label_png
from tag2mask.stages.common import build_prompt_learner, clip_fit_warning, context_path, runtime_device
from tag2mask.viz.figures import overlay


def parse_classes(text: str, class_names: list[str] | tuple[str, ...]) -> list[int]:
    """0-based ids of the comma-separated ``text`` (case-insensitive); an unknown name is a clear error."""
    lookup = {name.lower(): i for i, name in enumerate(class_names)}
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    if not wanted:
        raise Tag2MaskError("give at least one class name, e.g. --classes \"dog,person\"")
    unknown = [w for w in wanted if w.lower() not in lookup]
    if unknown:
        raise Tag2MaskError(
            f"class(es) {', '.join(repr(u) for u in unknown)} not among the {len(class_names)} classes this run was "
            f"trained for: {', '.join(class_names)}"
        )
    return sorted({lookup[w.lower()] for w in wanted})


@dataclass
class SegmentResult:
    mask_path: Path
    overlay_path: Path
    classes: list[str]
    pixels: dict[str, int]
    warning: str | None = None
    """Set when the run's CLIP cannot know these classes or this image (:mod:`tag2mask.models.vocabulary`)."""


def segment_image(config: Config, run_path: Path, image_path: Path, classes: str, out_dir: Path) -> SegmentResult:
    """Segment the classes named in ``classes`` in the image at ``image_path``; write ``<stem>.png`` and overlay."""
    from tag2mask.cam import GradCAMClip
    from tag2mask.data.base import fit_image, read_rgb, resize_labels
    from tag2mask.models.clip import load_clip
    from tag2mask.seeding import sams_seed
    from tag2mask.stages.cams import cam_one
    from tag2mask.stages.common import open_split
    from tag2mask.stages.superpixels import build_generator

    class_names = list(open_split(config, config.data.train_split).class_names)
    fg_cls = parse_classes(classes, class_names)
    ctx = context_path(run_path, "seg", config.train.seg.checkpoint)
    if not ctx.is_file():
        raise Tag2MaskError(f"the run has no trained segmentation-task prompts ({ctx}); finish 'tag2mask run' first")
    image = read_rgb(image_path)
    warning = clip_fit_warning(config, class_names, image=Path(image_path))
    device = runtime_device(config)
    clip = load_clip(config.models.clip, device=device)
    learner = build_prompt_learner(clip, config, "seg", class_names).to(device)
    learner.load_context(ctx)
    model = GradCAMClip(clip, learner, softmax=config.cams.softmax, att_layers=config.cams.att_layers)
    arrays = cam_one(model, image, np.asarray(fg_cls, np.int64), config, "seg", device)
    # a photo larger than superpixels.max_side is segmented at that working size, the mask then enlarged
    superpixels = build_generator(config, device).generate(fit_image(image, config.superpixels.max_side))
    s = config.seeds.fine
    seed = np.asarray(sams_seed(arrays["cam"], arrays["fg_cls"], superpixels, None, s.bg_power,
                                norm_first=s.norm_first, gather=s.gather, bg_method=s.bg_method,
                                uncovered=s.uncovered))
    seed = resize_labels(seed, image.shape[:2])
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(image_path).stem
    mask_path, overlay_path = out_dir / f"{stem}.png", out_dir / f"{stem}_overlay.png"
    write_label_png(mask_path, seed)
    with atomic_write(overlay_path, "wb") as f:
        Image.fromarray(overlay(image, seed)).save(f, format="PNG")
    pixels = {class_names[c]: int((seed == c + 1).sum()) for c in fg_cls}
    return SegmentResult(mask_path, overlay_path, [class_names[c] for c in fg_cls], pixels, warning)
