"""The ``seeds`` stage: seeds from saved CAMs, by SAMS on the quasi-superpixels, plain argmax, or dense CRF.

Reads ``<cams>/<id>.npz`` (see :mod:`tag2mask.stages.cams`) and, for SAMS, the split's cached quasi-superpixels;
writes ``<out>/<id>.png`` (palette PNG, 0 background, ``c+1`` class ``c``) for every image of the split, at the
image's size (SAMS works at the superpixels' size, the working size of a photo larger than
``superpixels.max_side``, and its seed is enlarged by nearest neighbour). An image
without a CAM file (no positive label) gets an all-background seed. Resumable and shardable like every stage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from tag2mask.config import Config, SeedTaskConfig
from tag2mask.data.base import resize_labels, working_size
from tag2mask.errors import DataError, Tag2MaskError
from tag2mask.io import file_stamp, write_label_png
from tag2mask.stages.cams import load_cam_file
from tag2mask.stages.common import open_split, progress
from tag2mask.stages.inputs import InputLedger
from tag2mask.stages.rundir import ItemsResult, shard
from tag2mask.stages.superpixels import superpixel_path
from tag2mask.stages.superpixels import superpixels_dir as default_superpixels_dir

SEEDS_OF_TASK = {"cls": "coarse", "seg": "fine", "clip_es": "coarse"}  # the training-free seeds: seeds.coarse


def seed_one(
    cam_file: dict[str, np.ndarray] | None,
    size: tuple[int, int],
    settings: SeedTaskConfig,
    superpixels: Any = None,
    image: np.ndarray | None = None,
    clip_es_alpha: float | None = None,
) -> np.ndarray:
    """One image's seed from its CAM file's arrays with the given settings (SPEC §8, §9, §8.1).

    ``clip_es_alpha``: the CAMs are training-free ones and ``argmax`` makes CLIP-ES's own seeds with this α
    (float16 maps, :func:`~tag2mask.cam.clip_es.clip_es_highres`), instead of FMA's argmax seeds; ``crf`` runs
    the dense CRF on those maps with CLIP-ES's ``bg = 1 − max fg`` (α = 1), as its ``eval_cam_with_crf.py`` does
    (the maps are min-max normalised once more over the image, which CLIP-ES skips: a difference of rounding)."""
    if cam_file is None or len(cam_file["fg_cls"]) == 0:
        return np.zeros(size, np.uint8)
    cam, fg = cam_file["cam"], cam_file["fg_cls"]
    if settings.method == "sams":
        from tag2mask.seeding import sams_seed

        return np.asarray(sams_seed(  # the stored atoms make this fast: the masks are never decoded
            cam, fg, superpixels, None, settings.bg_power, norm_first=settings.norm_first,
            gather=settings.gather, bg_method=settings.bg_method, uncovered=settings.uncovered,
        ))
    if settings.method == "argmax":
        from tag2mask.seeding import argmax_seed

        if clip_es_alpha is not None:
            from tag2mask.cam.clip_es import clip_es_highres

            return np.asarray(argmax_seed(clip_es_highres(cam, size), fg, size, clip_es_alpha, normalise=False))
        return np.asarray(argmax_seed(cam, fg, size, settings.bg_power))
    from tag2mask.seeding.crf import crf_seed

    if clip_es_alpha is not None:  # CLIP-ES's CRF: its saved maps, bg = 1 − max fg (α = 1; CONTEXT §2.6)
        from tag2mask.cam.clip_es import clip_es_highres

        return np.asarray(crf_seed(image, clip_es_highres(cam, size).astype(np.float32), fg, bg_power=1.0,
                                   params=settings.crf))
    return np.asarray(crf_seed(image, cam, fg, bg_power=settings.bg_power, params=settings.crf))


def run_seeds(
    config: Config,
    task: str,
    split: str,
    cams_dir: Path,
    out_dir: Path,
    *,
    superpixels_dir: Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    limit: int | None = None,
    show_progress: bool = True,
) -> ItemsResult:
    """Write the seeds of ``split`` from the CAMs in ``cams_dir`` into ``out_dir`` (``task`` cls → coarse, seg → fine)."""
    settings: SeedTaskConfig = getattr(config.seeds, SEEDS_OF_TASK[task])
    dataset = open_split(config, split)
    ids = dataset.ids[:limit] if limit else dataset.ids
    if settings.method == "sams":
        if superpixels_dir is None:
            superpixels_dir = default_superpixels_dir(config, split)
        from tag2mask.superpixels import Superpixels
    out_dir.mkdir(parents=True, exist_ok=True)

    def output(image_id: str) -> Path:
        return out_dir / f"{image_id}.png"

    def inputs(image_id: str) -> list:  # what the seed reads (tag2mask.stages.inputs)
        read = [dataset.sample_stamp(image_id), file_stamp(Path(cams_dir) / f"{image_id}.npz")]
        if settings.method == "sams":
            read.append(file_stamp(f"{superpixel_path(superpixels_dir, image_id)}.json"))
        return read

    ledger = InputLedger(out_dir, inputs)
    todo = ledger.pending(shard(ids, rank, world_size), output)
    t0 = time.perf_counter()
    for image_id in progress(todo, len(todo), f"seeds {SEEDS_OF_TASK[task]} {split}", show_progress and rank == 0):
        sample = dataset[image_id]
        cam_path = Path(cams_dir) / f"{image_id}.npz"
        cam_file = load_cam_file(cam_path) if cam_path.is_file() else None
        if cam_file is None and sample.labels:
            raise Tag2MaskError(f"CAM file {cam_path} is missing; run 'tag2mask cams --task {task}' first")
        size = tuple(int(v) for v in cam_file["size"]) if cam_file is not None and "size" in cam_file else None
        image = dataset.load_image(image_id) if settings.method == "crf" or size is None else None
        size = size or image.shape[:2]
        superpixels = None
        if settings.method == "sams" and cam_file is not None:
            stem = superpixel_path(superpixels_dir, image_id)
            if not Path(str(stem) + ".json").is_file():
                raise Tag2MaskError(
                    f"quasi-superpixels of {image_id} not found in {superpixels_dir}; run 'tag2mask superpixels' first"
                )
            superpixels = Superpixels.load(stem)
            working = working_size(*size, config.superpixels.max_side)
            if tuple(superpixels.size) not in (size, working):
                raise DataError(f"{stem}.json: superpixels are {tuple(superpixels.size)}, the image is {size} "
                                f"(working size {working} with superpixels.max_side={config.superpixels.max_side}); "
                                "make them again with 'tag2mask superpixels'")
        # SAMS works at the superpixels' size (the working size of a large photo), then the seed gets the image's
        seed = seed_one(cam_file, tuple(superpixels.size) if superpixels is not None else size, settings, superpixels,
                        image, config.clip_es.bg_power if task == "clip_es" else None)
        seed = resize_labels(seed, size)
        output(image_id).parent.mkdir(parents=True, exist_ok=True)
        write_label_png(output(image_id), seed)
        ledger.record(image_id)
    done = ledger.done(ids, output)
    return ItemsResult(out_dir, done, len(ids), len(todo), time.perf_counter() - t0)
