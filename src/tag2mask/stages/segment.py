"""``tag2mask segment``: text-to-semantic-mask on any image, with a trained run (App. D, Table S4) or training-free.

With a run, the given class names act as the image's tags: segmentation-task CAMs for those classes (SPEC §1.2,
§3), CAA with the run's segmentation settings (§6), quasi-superpixels of the image from the run's source (§7),
SAMS with the fine-seed settings (§8). Writes a palette PNG (label ids of the run's class list) and an overlay.

Training-free (:func:`training_free_labels`, ``--training-free``), any class names and no run: CLIP-ES's CAMs with
fixed prompts (:mod:`tag2mask.cam.clip_es`, settings ``clip_es.*``), then SAMS with the coarse-seed settings on
quasi-superpixels of the image (``seeds.coarse.method: sams``) or CLIP-ES's own argmax or dense-CRF seeds
(``argmax``, ``crf``), exactly as the training-free pipeline's seeds stage makes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    clip = load_clip(config.models.clip, device=device, arch=config.models.clip_arch)
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
    # label c + 1 of the run's class list: the written names and pixel counts follow the run's ids
    result = _write_segmentation(image, seed, list(class_names), Path(image_path).stem, out_dir, warning)
    result.classes = [class_names[c] for c in fg_cls]
    result.pixels = {class_names[c]: result.pixels[class_names[c]] for c in fg_cls}
    return result


def split_class_names(text: str) -> list[str]:
    """The class names of a comma-separated ``--classes`` text, in order, once each; none is a clear error.

    (A name with commas of its own, like CLIP-ES's ``"person with clothes,people,human"``, is a preset's prompt
    name; on the command line each comma separates two classes.)"""
    names: list[str] = []
    for part in text.split(","):
        if part.strip() and part.strip() not in names:
            names.append(part.strip())
    if not names:
        raise Tag2MaskError("give at least one class name, e.g. --classes \"dog,person\"")
    return names


def training_free_labels(
    image: np.ndarray,
    class_names: Sequence[str],
    config: Config | None = None,
    *,
    clip_model: Any = None,
    generator: Any = None,
) -> np.ndarray:
    """Segment the named classes in one image without any training: ``H×W`` uint8 label map, 0 background and
    ``k`` the ``k``-th of ``class_names`` (1-based).

    Example::

        from tag2mask.config import load_config
        from tag2mask.data.base import read_rgb
        from tag2mask.stages.segment import training_free_labels

        labels = training_free_labels(read_rgb("photo.jpg"), ["dog", "person"],
                                      load_config("voc", ["superpixels.source=felzenszwalb"]))

    Args:
        image: ``H×W×3`` uint8 RGB.
        class_names: the classes to look for (the image's tags), in the words CLIP should read.
        config: settings (default: the ``voc`` preset): ``models.clip``, ``data.bg_names`` (the background names
            that compete with the classes), ``clip_es.*``, ``seeds.coarse`` (``method: sams`` needs
            quasi-superpixels from ``superpixels.source``; ``argmax`` gives CLIP-ES's own seeds with
            ``clip_es.bg_power``, ``crf`` its dense-CRF seeds, extra ``crf``), ``cams.max_side``,
            ``superpixels.max_side``, ``runtime.device``.
        clip_model, generator: a loaded CLIP and quasi-superpixel generator to reuse over many images (default:
            loaded from ``config``).
    """
    from tag2mask.cam.clip_es import clip_es_cams
    from tag2mask.config import load_config
    from tag2mask.data.base import fit_image, resize_labels
    from tag2mask.stages.seeds import seed_one

    config = config or load_config("voc")
    names = [str(n).strip() for n in class_names]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise Tag2MaskError(f"class names must be distinct and non-empty, got {list(class_names)}")
    if len(names) > 254:
        raise Tag2MaskError(f"at most 254 classes fit a uint8 label map, got {len(names)}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise Tag2MaskError(f"image must be H×W×3 uint8 RGB, got {image.shape} {image.dtype}")
    device = runtime_device(config)
    if clip_model is None:
        from tag2mask.models.clip import load_clip

        clip_model = load_clip(config.models.clip, device=device, arch=config.models.clip_arch)
    e = config.clip_es
    work = fit_image(image, config.cams.max_side)  # a large photo goes through CLIP at its working size
    arrays = clip_es_cams(clip_model, work, names, list(config.data.bg_names), templates=e.templates,
                          box_thresh=e.box_thresh, boxes=e.boxes, sinkhorn_iters=e.sinkhorn_iters, power=e.power,
                          att_layers=config.cams.att_layers, pos_embed_f16=e.pos_embed_f16)
    # the seed as the training-free pipeline's seeds stage makes it (tag2mask.stages.seeds.seed_one), at the working
    # size: SAMS on the quasi-superpixels, or CLIP-ES's own argmax / dense-CRF seeds from its maps
    s = config.seeds.coarse
    superpixels = None
    if s.method == "sams":
        if generator is None:
            from tag2mask.stages.superpixels import build_generator

            generator = build_generator(config, device)
        superpixels = generator.generate(fit_image(image, config.superpixels.max_side))
    cam_file = {"cam": arrays["cam_refined"], "fg_cls": np.arange(len(names), dtype=np.int64)}
    size = tuple(superpixels.size) if superpixels is not None else work.shape[:2]
    seed = seed_one(cam_file, size, s, superpixels, work, clip_es_alpha=e.bg_power)
    return resize_labels(seed, image.shape[:2])


def segment_image_training_free(config: Config, image_path: Path, classes: str, out_dir: Path) -> SegmentResult:
    """``tag2mask segment --training-free``: :func:`training_free_labels` on the image at ``image_path`` for the
    comma-separated ``classes``; writes ``<stem>.png`` (label ``k`` = the ``k``-th class) and an overlay."""
    from tag2mask.data.base import read_rgb
    from tag2mask.models.vocabulary import model_fit_warning

    names = split_class_names(classes)
    image = read_rgb(image_path)
    warning = model_fit_warning(config.models.clip, [*names, *config.data.bg_names], synthetic_images=None)
    seed = training_free_labels(image, names, config)
    return _write_segmentation(image, seed, names, Path(image_path).stem, out_dir, warning)


def _write_segmentation(image: np.ndarray, seed: np.ndarray, names: list[str], stem: str, out_dir: Path,
                        warning: str | None) -> SegmentResult:
    """Write the palette PNG and the overlay of a label map whose label ``k`` is ``names[k - 1]``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mask_path, overlay_path = out_dir / f"{stem}.png", out_dir / f"{stem}_overlay.png"
    write_label_png(mask_path, seed)
    with atomic_write(overlay_path, "wb") as f:
        Image.fromarray(overlay(image, seed)).save(f, format="PNG")
    pixels = {name: int((seed == k + 1).sum()) for k, name in enumerate(names)}
    return SegmentResult(mask_path, overlay_path, names, pixels, warning)
