"""The ``superpixels`` stage: SAM quasi-superpixels for every image of a split, computed once and cached.

Results live in the cache, not in a run: ``<cache>/superpixels/<dataset>-<split>-<hash>/`` where the hash covers
the dataset root, the split, the SAM model and every generator parameter, so runs that share these share the
masks (App. B: computed once, reused). Each image gives ``<id>.npz`` + ``<id>.json`` (see
:class:`tag2mask.superpixels.Superpixels`); the JSON is written last, so an image counts as done when it exists.
Interrupted runs resume where they stopped; workers split the images by ``--shard i/n`` or torchrun's ranks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tag2mask.config import Config, config_hash
from tag2mask.errors import NotBuiltError
from tag2mask.io import write_json
from tag2mask.stages.common import cache_dir, log, open_split, progress, resolve_device
from tag2mask.stages.rundir import pending, shard


def generator_params(config: Config) -> dict[str, object]:
    """The generator parameters of ``config.superpixels`` (every key but ``source`` and ``preset``)."""
    from tag2mask.superpixels.presets import PARAM_NAMES

    return {name: getattr(config.superpixels, name) for name in PARAM_NAMES}


def superpixels_key(config: Config, split: str) -> str:
    """The hash that names a split's superpixel folder."""
    sp = config.superpixels
    return config_hash(
        {
            "dataset": config.data.dataset,
            "root": str(Path(config.data.root).expanduser().resolve()),
            "split": split,
            "source": sp.source,
            "sam_type": config.models.sam_type,
            "sam": config.models.sam,
            "params": generator_params(config),
        }
    )


def superpixels_dir(config: Config, split: str) -> Path:
    """Where the quasi-superpixels of ``split`` under ``config`` are (or will be) cached."""
    return cache_dir(config) / "superpixels" / f"{config.data.dataset}-{split}-{superpixels_key(config, split)}"


def superpixel_path(folder: Path, image_id: str) -> Path:
    """The path stem of one image's superpixels (ids may contain ``/`` for datasets with subfolders)."""
    return folder / image_id


@dataclass
class SuperpixelsResult:
    folder: Path
    done: int  # images with superpixels in the folder (all workers)
    total: int
    computed: int  # computed by this call
    seconds: float

    @property
    def complete(self) -> bool:
        return self.done == self.total


def build_generator(config: Config, device: str):  # -> QuasiSuperpixelGenerator
    """The quasi-superpixel generator of ``config`` on ``device`` (loads SAM)."""
    if config.superpixels.source != "sam":
        raise NotBuiltError(f"superpixels.source={config.superpixels.source!r} is not built yet; use 'sam'")
    from tag2mask.models.sam import load_sam, sam_predictor
    from tag2mask.superpixels import QuasiSuperpixelGenerator

    sam_file = None if config.models.sam in ("", "default") else config.models.sam
    sam = load_sam(config.models.sam_type, sam_file, device=device)
    return QuasiSuperpixelGenerator(sam_predictor(sam), config.superpixels.preset, **generator_params(config))


def run_superpixels(
    config: Config,
    split: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    limit: int | None = None,
    show_progress: bool = True,
) -> SuperpixelsResult:
    """Compute the missing quasi-superpixels of ``split`` (this worker's share) and return where they are."""
    dataset = open_split(config, split)
    ids = dataset.ids[:limit] if limit else dataset.ids
    folder = superpixels_dir(config, split)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(
        folder / "superpixels.json",
        {
            "dataset": config.data.dataset,
            "root": str(Path(config.data.root).expanduser().resolve()),
            "split": split,
            "source": config.superpixels.source,
            "preset": config.superpixels.preset,
            "models": {"sam_type": config.models.sam_type, "sam": config.models.sam},
            "params": generator_params(config),
        },
    )

    def done_marker(image_id: str) -> Path:
        return Path(str(superpixel_path(folder, image_id)) + ".json")

    todo = list(pending(shard(ids, rank, world_size), done_marker))
    t0 = time.perf_counter()
    if todo:
        generator = build_generator(config, resolve_device(config.runtime.device))
        log.info("superpixels: %d of %d images to compute in %s", len(todo), len(ids), folder)
        for image_id in progress(todo, len(todo), f"superpixels {split}", show_progress and rank == 0):
            result = generator.generate(dataset.load_image(image_id))
            stem = superpixel_path(folder, image_id)
            stem.parent.mkdir(parents=True, exist_ok=True)
            result.save(stem)
    done = sum(done_marker(i).exists() for i in ids)
    return SuperpixelsResult(folder, done, len(ids), len(todo), time.perf_counter() - t0)
