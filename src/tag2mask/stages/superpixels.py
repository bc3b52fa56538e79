"""The ``superpixels`` stage: SAM quasi-superpixels for every image of a split, computed once and cached.

Results live in the cache, not in a run: ``<cache>/superpixels/<dataset>-<split>-<hash>/`` where the hash covers
the dataset root, the split, the SAM model and every generator parameter, so runs that share these share the
masks (App. B: computed once, reused). Each image gives ``<id>.npz`` + ``<id>.json`` (see
:class:`tag2mask.superpixels.Superpixels`); the JSON is written last, so an image counts as done when it exists.
Interrupted runs resume where they stopped; workers split the images by ``--shard i/n`` or torchrun's ranks.
An image whose longer side exceeds ``superpixels.max_side`` is made into quasi-superpixels downscaled to that size
(:func:`tag2mask.data.base.working_size`), so a 6000×4000 photo costs what a 1024×683 one does; the seeds stage
then works at that size and enlarges the seed to the image's.

With ``import_dir`` (``tag2mask superpixels --import DIR``) no SAM runs: each image's SAM-style annotations made
by another tool (``DIR/<id>.json``, or the ``DIR/<id>/`` PNG folder of segment_anything's ``scripts/amg.py``; format
in :mod:`tag2mask.superpixels.annotations`) are converted into the same cache layout, in a folder whose hash covers the
dataset, the split and the import folder instead of the SAM model and generator settings. Annotations without a
``level`` are taken as level 2 (whole). An image without annotations is a DataError naming the expected file, or,
with ``data.on_error=skip``, counted, logged and skipped; a mask whose size differs from its image's is always a
DataError.
"""

from __future__ import annotations

import time
from pathlib import Path

from tag2mask.config import Config
from tag2mask.hashing import config_hash
from tag2mask.stages.graph import RESULT_NEUTRAL_KEYS
from tag2mask.data.base import capped_size, fit_image
from tag2mask.errors import DataError, NotBuiltError
from tag2mask.io import file_stamp, write_json
from tag2mask.lock import holding
from tag2mask.resume import remove_orphans
from tag2mask.stages.common import cache_dir, log, open_split, progress, runtime_device
from tag2mask.stages.inputs import InputLedger
from tag2mask.stages.rundir import ItemsResult, shard


CPU_SOURCES = ("slic", "felzenszwalb")
"""``superpixels.source`` values made without SAM (scikit-image); every other value is a SAM variant."""


def hf_weights(config: Config) -> str | None:
    """The transformers weights (a folder or Hugging Face repository id) of the config's mask source, or None when
    the source is segment_anything's own SAM or a CPU method (:func:`tag2mask.models.weights.mask_source_weights`)."""
    from tag2mask.models.weights import mask_source_weights

    return mask_source_weights(config.superpixels.source, config.models.sam)


def generator_params(config: Config) -> dict[str, object]:
    """The generator parameters of ``config.superpixels``: for a SAM variant every key but ``source`` and ``preset``;
    for a CPU source (``slic`` / ``felzenszwalb``) the CPU generator's resolved parameters (its method, defaults and
    ``hierarchy_recall_thresh``; :func:`tag2mask.superpixels.cpu.cpu_params`), none of the SAM keys."""
    if config.superpixels.source in CPU_SOURCES:
        from tag2mask.superpixels.cpu import cpu_params

        return cpu_params(config.superpixels.source, recall_thresh=config.superpixels.hierarchy_recall_thresh)
    from tag2mask.superpixels.presets import PARAM_NAMES

    return {name: getattr(config.superpixels, name) for name in PARAM_NAMES}


def import_source(config: Config, import_dir: str | Path | None = None) -> Path | None:
    """The folder of SAM-style annotations to import, resolved: ``import_dir`` if given, else the config's
    ``superpixels.import_dir`` when the config has such a key and it is set; None means: run SAM."""
    chosen = import_dir if import_dir is not None else getattr(config.superpixels, "import_dir", None)
    if chosen in (None, ""):
        return None
    return Path(chosen).expanduser().resolve()


def superpixels_key(config: Config, split: str, import_dir: str | Path | None = None) -> str:
    """The hash that names a split's superpixel folder (see :func:`import_source` for ``import_dir``)."""
    root = str(Path(config.data.root).expanduser().resolve())
    source = import_source(config, import_dir)
    if source is not None:  # imported masks depend on the folder, not on SAM or the generator settings
        return config_hash({"dataset": config.data.dataset, "root": root, "split": split, "import": str(source)})
    sp = config.superpixels
    if sp.source in CPU_SOURCES:  # CPU sources: the method and its parameters, not SAM
        return config_hash(
            {"dataset": config.data.dataset, "root": root, "split": split, "source": sp.source,
             "params": generator_params(config)}
        )
    params = {k: v for k, v in generator_params(config).items() if k not in RESULT_NEUTRAL_KEYS}
    weights = hf_weights(config)
    if weights is not None:  # a transformers source: the model's weights, not models.sam_type
        return config_hash({"dataset": config.data.dataset, "root": root, "split": split, "source": sp.source,
                            "weights": weights, "params": params})
    return config_hash(
        {
            "dataset": config.data.dataset,
            "root": root,
            "split": split,
            "source": sp.source,
            "sam_type": config.models.sam_type,
            "sam": config.models.sam,
            "params": params,
        }
    )


def superpixels_dir(config: Config, split: str, import_dir: str | Path | None = None) -> Path:
    """Where the quasi-superpixels of ``split`` under ``config`` (imported from ``import_dir`` when given) are,
    or will be, cached."""
    key = superpixels_key(config, split, import_dir)
    return cache_dir(config) / "superpixels" / f"{config.data.dataset}-{split}-{key}"


def superpixels_stage(config: Config, split: str) -> str:
    """The run's stage name for the quasi-superpixels of ``split``: ``"superpixels"`` for the training split (the
    pipeline's stage), ``"superpixels_<split>"`` for another one."""
    return "superpixels" if split == config.data.train_split else f"superpixels_{split}"


def superpixel_path(folder: Path, image_id: str) -> Path:
    """The path stem of one image's superpixels (ids may contain ``/`` for datasets with subfolders)."""
    return folder / image_id


def build_generator(config: Config, device: str):  # -> QuasiSuperpixelGenerator | CpuSuperpixelGenerator
    """The quasi-superpixel generator of ``config`` on ``device``: for a SAM variant the quasi-superpixel generator
    on its predictor (segment_anything's SAM, or a transformers model behind
    :class:`tag2mask.models.sam_hf.HFSamPredictor`: ``sam`` with a transformers folder, ``sam-hq``, ``sam2``,
    ``edgetam``), the CPU generator for ``slic`` / ``felzenszwalb`` (scikit-image, no SAM, ``device`` unused)."""
    source = config.superpixels.source
    if source in CPU_SOURCES:
        from tag2mask.superpixels.cpu import CpuSuperpixelGenerator

        return CpuSuperpixelGenerator(source, recall_thresh=config.superpixels.hierarchy_recall_thresh)
    from tag2mask.superpixels import QuasiSuperpixelGenerator

    weights = hf_weights(config)
    if weights is not None:
        from tag2mask.models.sam_hf import hf_sam_predictor

        predictor = hf_sam_predictor(source, weights, device=device)
    elif source == "sam":
        from tag2mask.models.sam import load_sam, sam_predictor

        sam_file = None if config.models.sam in ("", "default") else config.models.sam
        predictor = sam_predictor(load_sam(config.models.sam_type, sam_file, device=device))
    else:
        raise NotBuiltError(f"superpixels.source={source!r} is not built; use sam, sam-hq, sam2, edgetam, slic or "
                            "felzenszwalb")
    return QuasiSuperpixelGenerator(predictor, config.superpixels.preset, **generator_params(config))


def run_superpixels(
    config: Config,
    split: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    limit: int | None = None,
    show_progress: bool = True,
    import_dir: str | Path | None = None,
    shared: bool = False,
) -> ItemsResult:
    """Compute the missing quasi-superpixels of ``split`` (this worker's share) and return where they are.

    With ``import_dir`` (or the config's ``superpixels.import_dir``), convert the SAM-style annotations found there
    instead of running SAM (see the module docstring and :mod:`tag2mask.superpixels.annotations`).

    Computing locks the cache folder (:mod:`tag2mask.lock`; ``shared`` between ``--shard`` workers), so two
    commands never write one folder; reading a complete folder takes no lock.
    """
    dataset = open_split(config, split)
    ids = dataset.ids[:limit] if limit else dataset.ids
    source = import_source(config, import_dir)
    folder = superpixels_dir(config, split, source)
    folder.mkdir(parents=True, exist_ok=True)
    about: dict[str, object] = {
        "dataset": config.data.dataset,
        "root": str(Path(config.data.root).expanduser().resolve()),
        "split": split,
    }
    if source is None:
        weights = hf_weights(config)
        about.update(
            {
                "source": config.superpixels.source,
                "preset": config.superpixels.preset,
                "models": ({"sam_type": config.models.sam_type, "sam": config.models.sam} if weights is None
                           else {"transformers": weights}),
                "params": generator_params(config),
            }
        )
    else:
        about.update({"source": "import", "import": str(source)})
    write_json(folder / "superpixels.json", about)

    def done_marker(image_id: str) -> Path:
        return Path(str(superpixel_path(folder, image_id)) + ".json")

    def inputs(image_id: str) -> list:  # what one image's superpixels are made from (tag2mask.stages.inputs)
        path = dataset[image_id].image_path
        read = [file_stamp(path)]
        if source is not None:
            read.append(annotation_stamp(source, image_id))
        else:  # the working size, for an image larger than superpixels.max_side
            working = capped_size(path, config.superpixels.max_side)
            if working is not None:
                read.append(working)
        return read

    ledger = InputLedger(folder, inputs)
    todo = ledger.pending(shard(ids, rank, world_size), done_marker)
    t0 = time.perf_counter()
    if not todo:
        return _compute(config, dataset, split, ids, todo, source, folder, ledger, done_marker, rank, show_progress, t0)
    with holding(folder, "quasi-superpixel cache folder", shared=shared, rank=rank):
        if world_size == 1 and not shared:  # the sole writer: temporary files of a killed run can go
            remove_orphans(folder)
        todo = ledger.pending(shard(ids, rank, world_size), done_marker)  # what is left now that we own it
        return _compute(config, dataset, split, ids, todo, source, folder, ledger, done_marker, rank, show_progress, t0)


def annotation_stamp(source: Path, image_id: str) -> list:
    """The stamp of one image's imported annotations: its JSON file, or every file of its amg.py folder."""
    from tag2mask.superpixels.annotations import find_sam_annotations

    path = find_sam_annotations(source, image_id)
    if path is None or path.is_file():
        return file_stamp(path if path is not None else source / f"{image_id}.json")
    return sorted(file_stamp(p) for p in path.iterdir() if p.is_file())


def _compute(config: Config, dataset, split: str, ids: list[str], todo: list[str], source: Path | None,  # noqa: ANN001
             folder: Path, ledger: InputLedger, done_marker, rank: int, show_progress: bool,  # noqa: ANN001
             t0: float) -> ItemsResult:
    skipped = 0
    if todo and source is None:
        generator = build_generator(config, runtime_device(config))
        log.info("superpixels: %d of %d images to compute in %s", len(todo), len(ids), folder)
        for image_id in progress(todo, len(todo), f"superpixels {split}", show_progress and rank == 0):
            result = generator.generate(fit_image(dataset.load_image(image_id), config.superpixels.max_side))
            stem = superpixel_path(folder, image_id)
            stem.parent.mkdir(parents=True, exist_ok=True)
            result.save(stem)
            ledger.record(image_id)
    elif todo:
        key = superpixels_key(config, split, source)
        todo, skipped = _import_all(config, dataset, todo, source, folder, key, split, ledger,
                                    show_progress and rank == 0)
    done = ledger.done(ids, done_marker)
    return ItemsResult(folder, done, len(ids), len(todo), time.perf_counter() - t0, skipped)


def _import_all(
    config: Config,
    dataset,  # SegDataset
    todo: list[str],
    source: Path,
    folder: Path,
    key: str,
    split: str,
    ledger: InputLedger,
    show_progress: bool,
) -> tuple[list[str], int]:
    """Convert the annotations of ``todo`` from ``source`` into ``folder``; returns (imported ids, skipped)."""
    from tag2mask.data.base import image_size
    from tag2mask.superpixels.annotations import (
        annotations_have_levels,
        find_sam_annotations,
        read_sam_annotations,
        superpixels_from_sam_annotations,
    )

    if not source.is_dir():
        raise DataError(f"--import {source}: no such folder")
    found = {image_id: find_sam_annotations(source, image_id) for image_id in todo}
    missing = [image_id for image_id, path in found.items() if path is None]
    if missing:
        what = f"{source / (missing[0] + '.json')} (or the amg.py folder {source / missing[0]}/ with metadata.csv)"
        if config.data.on_error != "skip":
            raise DataError(
                f"no SAM annotations for image {missing[0]!r} of {split}: expected {what}; {len(missing)} of "
                f"{len(todo)} images lack them (data.on_error=skip skips them)"
            )
        log.warning("superpixels import: %d of %d images have no annotations in %s, skipped (data.on_error=skip); "
                    "first: %s", len(missing), len(todo), source, what)
    todo = [image_id for image_id in todo if found[image_id] is not None]
    log.info("superpixels: importing %d images from %s into %s", len(todo), source, folder)
    without_levels = 0
    for image_id in progress(todo, len(todo), f"superpixels import {split}", show_progress):
        path = found[image_id]
        w, h = image_size(dataset[image_id].image_path)
        anns = read_sam_annotations(path)
        without_levels += bool(anns) and not annotations_have_levels(anns)
        sp = superpixels_from_sam_annotations(anns, (h, w), where=path, preset="import", config_hash=key)
        stem = superpixel_path(folder, image_id)
        stem.parent.mkdir(parents=True, exist_ok=True)
        sp.save(stem)
        ledger.record(image_id)
    if without_levels:
        log.info("superpixels import: %d of %d images have no 'level' in their annotations; their masks are all "
                 "taken as level 2 (whole)", without_levels, len(todo))
    return todo, len(missing)
