"""Report section (5): per-image figures like App. Figures S1-S4. The two panels that are results rather than files
(the SAMS score map of the top class, the dense-CRF seed) are computed through the seeding functions' public API
(:func:`tag2mask.seeding.sams_scores`, :func:`tag2mask.seeding.crf.crf_seed`)."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from tag2mask.viz import figures as fig
from tag2mask.viz.report.html import DISPLAY_WIDTH, Panel, colour_bar, na, panel_row, rgb_swatch, swatch
from tag2mask.viz.report.run import RunView, SuperpixelArrays, TASKS, cam_sources, load_seed, load_superpixel_arrays, per_image_miou, read_cam


CRF_MISSING = "dense CRF not installed (pip install -e '.[crf]')"


LABEL_ALPHA = 0.7  # opacity of label colours (ground truth, seeds) over the image


def _top_class(fg: np.ndarray, seeds: Sequence[np.ndarray | None]) -> int:
    """Index into ``fg`` of the positive class with the most pixels in the first available seed (else 0)."""
    for seed in seeds:
        if seed is not None and len(fg):
            counts = [int((seed == int(c) + 1).sum()) for c in fg]
            return int(np.argmax(counts))
    return 0


def _score_map(run: RunView, task: str, cam: dict[str, np.ndarray], j: int, sp: SuperpixelArrays,
               masks_small: np.ndarray) -> tuple[np.ndarray, str]:
    """The SAMS score of positive class ``j`` painted per superpixel (display size), and how it was computed."""
    settings = getattr(run.config.seeds, "fine" if task == "seg" else "coarse")
    try:
        from tag2mask.seeding import SeedingIndex, sams_scores

        index = SeedingIndex(atom_map=sp.atoms, membership=sp.membership, atom_area=sp.atom_area, levels=sp.levels)
        sc = sams_scores(cam["cam"], cam["fg_cls"], None, None, settings.bg_power, norm_first=settings.norm_first,
                         gather=settings.gather, bg_method=settings.bg_method, precomputed=index)
        values = np.asarray(sc.scores)[:, 1 + j]
        return fig.paint_superpixels(masks_small, values, np.asarray(sc.paint_order)), "SAMS score"
    except Exception:  # noqa: BLE001 - e.g. an option SAMS scores cannot show; fall back to the plain mean
        cam01 = fig.resize_bilinear(fig.minmax01(cam["cam"][j]), masks_small.shape[1:])
        values = fig.superpixel_means(cam01, masks_small)
        order = np.argsort(np.asarray(sp.levels), kind="stable")
        return fig.paint_superpixels(masks_small, values, order), "mean of the min-max-normalised CAM"


def _image_figures(run: RunView, dataset: Any, image_id: str, sp_folder: Path | None, role: str = "",
                   per_image: dict[str, dict[str, float | None]] | None = None) -> str:
    sample = dataset[image_id]
    names = list(dataset.class_names)
    image = dataset.load_image(image_id)
    size = image.shape[:2]
    small = fig.display_size(size, DISPLAY_WIDTH)
    disp = fig.resize_rgb(image, small)
    dim = fig.blend(disp, np.zeros(3), 0.45)
    tags = " ".join(swatch(c + 1) + escape(names[c]) for c in sample.labels) or "no tags"
    heading = escape(image_id) + (f" — {escape(role)}" if role else "")
    out = [f'<div class="imgblock"><h3>{heading}</h3>']

    # image and ground truth
    panels = [Panel(f"image {size[1]}×{size[0]} — tags: {tags}", disp)]
    gt = dataset.load_mask(image_id) if dataset.has_masks else None
    if gt is not None:
        panels.append(Panel("ground truth", fig.overlay(disp, fig.resize_nearest(gt, small), LABEL_ALPHA)))
    else:
        panels.append(Panel("ground truth", missing="this split has no ground-truth masks"))
    out.append(panel_row(panels))

    # cls vs seg CAMs (and the training-free ones when there are), per positive class
    sources = cam_sources(run)
    shown = {key: read_cam(folder / f"{image_id}.npz") for key, _, folder in sources}
    cams = {task: shown.get(task) for task in TASKS}  # each file read once
    panels = []
    for c in sample.labels:
        for key, what, folder in sources:
            cam = shown[key]
            caption = f"{what}: {swatch(c + 1)}{escape(names[c])}"
            if cam is None:
                panels.append(Panel(caption, missing=f"{folder.name}/{image_id}.npz (stage {folder.name} not run)"))
                continue
            where = np.flatnonzero(cam["fg_cls"] == c)
            if where.size == 0:
                panels.append(Panel(caption, missing="no CAM for this class in the file"))
                continue
            heat = fig.heatmap(fig.resize_bilinear(fig.minmax01(cam["cam"][where[0]]), small))
            panels.append(Panel(caption, fig.blend(disp, heat, 0.55),
                                 colour_bar=colour_bar("0", "1", "CAM, min-max normalised")))
    if panels:
        order = ", ".join(what for _, what, _ in sources)
        out.append('<p class="note">CAMs as the seeds read them (after CAA when enabled), clamped at 0, min-max '
                   f"normalised, upsampled bilinearly to the image; in each row: {escape(order)}.</p>" + panel_row(panels))

    # superpixels, score map, seeds, CRF
    seeds = {name: load_seed(run, name, image_id) for name in ("seeds_coarse", "seeds_fine")}
    panels = []
    sp = None
    if sp_folder is None:
        panels.append(Panel("quasi-superpixels", missing="no superpixel folder (stage superpixels not run)"))
    elif not Path(str(sp_folder / image_id) + ".json").is_file():
        panels.append(Panel("quasi-superpixels", missing=f"{sp_folder / image_id}.json not found"))
    else:
        sp = load_superpixel_arrays(sp_folder / image_id)
    if sp is not None:
        masks_small = sp.masks_at(small)
        counts = np.bincount(np.clip(sp.levels, 0, 2), minlength=3)
        legend = ", ".join(f"{rgb_swatch(fig.LEVEL_RGB[k])}{n} {w}" for k, (n, w) in
                           enumerate(zip(counts, ("subpart", "part", "whole"))))
        single = "" if len(set(np.asarray(sp.levels).tolist())) > 1 else (
            " — one level only: this source gave no subpart/part/whole hierarchy, so the hierarchy filter had "
            "nothing to order and SAMS paints every mask in one pass")
        panels.append(Panel(f"quasi-superpixels: {len(sp)} masks ({legend}){escape(single)}",
                             fig.mask_outlines(masks_small, sp.levels, dim)))
        task = "seg" if cams["seg"] is not None else "cls"
        cam = cams[task]
        if cam is not None and len(cam["fg_cls"]) and run.config is not None:
            j = _top_class(cam["fg_cls"], [seeds["seeds_fine"], seeds["seeds_coarse"]])
            c = int(cam["fg_cls"][j])
            values, how = _score_map(run, task, cam, j, sp, masks_small)
            panels.append(Panel(f"superpixel score map, {task} CAMs, top class {swatch(c + 1)}{escape(names[c])}"
                                 f" ({escape(how)})",
                                 fig.blend(disp, fig.heatmap(values), 0.8),
                                 colour_bar=colour_bar("0", "1", how, no_value=True)))
        else:
            panels.append(Panel("superpixel score map", missing="no CAM file for this image yet"))
    seed_rows = (("seeds_coarse", "coarse", "cls"), ("seeds_fine", "fine", "seg"))
    if not any(key in ("cls", "seg") for key, _, _ in sources):  # a training-free run: its own seeds
        seed_rows = (("seeds_clip_es", "coarse", "training-free"),)
        seeds["seeds_clip_es"] = load_seed(run, "seeds_clip_es", image_id)
    for name, which, task in seed_rows:
        method = getattr(run.config.seeds, which).method.upper() if run.config is not None else "SAMS"
        label = f"{'training-free' if task == 'training-free' else which} {method} seed ({task} CAMs)"
        seed = seeds[name]
        value = ((per_image or {}).get(name) or {}).get(image_id)
        if value is not None:
            label += f", mIoU {100 * value:.1f} on this image"
        if seed is None:
            panels.append(Panel(label, missing=f"{name}/{image_id}.png (stage {name} not run)"))
        else:
            panels.append(Panel(label, fig.overlay(disp, fig.resize_nearest(seed, small), LABEL_ALPHA)))
    panels.append(_crf_panel(run, image, cams["seg"] if cams["seg"] is not None else cams["cls"], small, disp))
    out.append(panel_row(panels))
    out.append("</div>")
    return "\n".join(out)


def crf_available() -> bool:
    """True when the optional dense-CRF backend (``pydensecrf``, extra ``crf``) can be imported."""
    return importlib.util.find_spec("pydensecrf") is not None


def _crf_panel(run: RunView, image: np.ndarray, cam: dict[str, np.ndarray] | None, small: tuple[int, int],
               disp: np.ndarray) -> Panel:
    caption = "dense-CRF seed"
    if not crf_available():
        return Panel(caption, missing=CRF_MISSING)
    if cam is None or run.config is None:
        return Panel(caption, missing="no CAM file for this image yet")
    settings = run.config.seeds.fine
    try:
        from tag2mask.seeding.crf import crf_seed

        seed = crf_seed(image, cam["cam"], cam["fg_cls"], bg_power=settings.bg_power, params=settings.crf)
    except Exception as e:  # noqa: BLE001
        return Panel(caption, missing=f"{e.__class__.__name__}: {e}")
    return Panel(f"{caption} (same CAMs, {escape(settings.crf)}, p={settings.bg_power:g})",
                  fig.overlay(disp, fig.resize_nearest(np.asarray(seed), small), LABEL_ALPHA))


def pick_examples(ids: Sequence[str], miou: dict[str, float | None], n: int) -> tuple[list[tuple[str, str]], str]:
    """``n`` example images as ``(id, role)`` and a sentence saying how they were chosen.

    With per-image seed mIoU (``miou``, 0..1): the best, the median and the worst image (one image: the median),
    more at evenly spaced ranks when ``n`` > 3, each labelled with its rank and value, best first. Without: the
    first ``n`` of ``ids``.
    """
    scored = sorted(((v, i) for i in ids if isinstance(v := miou.get(i), (int, float)) and math.isfinite(v)),
                    key=lambda p: (-p[0], p[1]))
    if not scored or n <= 0:
        return [(i, "") for i in list(ids)[: max(n, 0)]], f"The first {min(n, len(ids))} images with at least one tag"
    last, m = len(scored) - 1, min(n, len(scored))
    median = last // 2
    if m == 1:
        chosen = [median]
    else:  # evenly spaced ranks from the best to the worst, the one nearest the median moved onto it
        chosen = sorted({round(k * last / (m - 1)) for k in range(m)})
        if m >= 3 and median not in chosen:
            nearest = min(chosen[1:-1], key=lambda r: abs(r - median))
            chosen = sorted({*chosen, median} - {nearest})
    names = {0: "best", last: "worst"}
    if m != 2:  # two examples: the best and the worst
        names[median] = "median"
    out = []
    for r in chosen:
        value, image_id = scored[r]
        role = names.get(r, f"rank {r + 1}")
        out.append((image_id, f"{role} of {len(scored)} by fine-seed mIoU ({100 * value:.1f})"))
    return out, (f"Typical examples: the best, median and worst of the {len(scored)} images by their fine seed's "
                 "mIoU on that image (then more at evenly spaced ranks)")


def figures_section(run: RunView, n_images: int) -> str:
    if n_images <= 0:
        return '<p class="note">no figures requested (n_images=0).</p>'
    if run.config is None:
        return na(f"figures need the run's config ({run.config_error})")
    from tag2mask.stages.common import open_split

    split = run.config.data.train_split
    root = Path(run.config.data.root).expanduser()
    if not root.exists():
        return na(f"dataset {root} not found")
    if run.config.data.dataset == "synthetic":
        from tag2mask.data.synthetic import is_synthetic_dataset

        if not is_synthetic_dataset(root):  # opening it would generate a new one: a report only reads
            return na(f"dataset {root}: no complete synthetic dataset there")
    try:
        dataset = open_split(run.config, split)
    except Exception as e:  # noqa: BLE001
        return na(f"dataset {run.config.data.root} split {split} could not be opened ({e.__class__.__name__}: {e})")
    tagged = [s.id for s in dataset if s.labels]
    if not tagged:
        return na(f"split {split} has no image with a tag")
    per_image = {name: per_image_miou(run, name) for name in ("seeds_coarse", "seeds_fine")}
    examples, how = pick_examples(tagged, per_image["seeds_fine"], n_images)
    folder = run.superpixels_folder()
    if folder is not None and not folder.is_dir():
        folder = None
    level_legend = ", ".join(f"{rgb_swatch(rgb)}{w}" for rgb, w in zip(fig.LEVEL_RGB, ("subpart", "part", "whole")))
    out = [f'<p class="note">{escape(how)}; shown at least {DISPLAY_WIDTH} px wide (small images enlarged, '
           f"nearest-neighbour). Superpixel outlines by level: {level_legend}. Label colours: the VOC palette, as a "
           "translucent fill with a solid outline and a dark line just outside each region.</p>"]
    if folder is None:
        out.append(na("quasi-superpixel folder (the superpixels stage has not run)"))
    for image_id, role in examples:
        try:
            out.append(_image_figures(run, dataset, image_id, folder, role, per_image))
        except Exception as e:  # noqa: BLE001
            out.append(f"<h3>{escape(image_id)}</h3>" + na(f"{e.__class__.__name__}: {e}"))
    return "\n".join(out)
