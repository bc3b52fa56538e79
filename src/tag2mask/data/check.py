"""The data check: every image decodes and every mask is a label map of the image's size, found before any work.

:func:`check_split` opens each sample once (the whole image is decoded, not only its header, so a truncated
JPEG is found; a mask is read, its ids checked against the class count, its size against the image's) and
returns the problems by sample. Results are cached per sample in ``<cache>/datacheck/`` under each file's name,
size and modification time, so a run checks a split once and later commands pay only for a ``stat`` per file;
a replaced file is checked again. The first check decodes every image once, on a few threads (for COCO train,
82,081 JPEGs, that is minutes, once).

:func:`apply_check` is what a split opened with ``data.on_error`` gets: ``raise`` stops at the first problem
with one error naming the file; ``skip`` leaves the bad samples out (every stage then sees the same images) and
records each one with its reason in ``dataset.skipped``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tag2mask.data.base import SegDataset, log, read_rgb
from tag2mask.errors import DataError
from tag2mask.io import file_stamp, read_json, write_json

CHECK_VERSION = 1


def _check_one(dataset: SegDataset, image_id: str) -> str | None:
    """The problem with one sample (a DataError's message), or None when it is fine."""
    try:
        image = read_rgb(dataset[image_id].image_path)
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise DataError(f"{dataset[image_id].image_path}: not an RGB image")
        if dataset.has_masks and dataset[image_id].mask_path is not None:
            dataset.load_mask(image_id)  # ids in range, size equal to the image's
    except DataError as e:
        return str(e)
    return None


def check_split(dataset: SegDataset, cache_dir: Path | None = None,
                progress: Callable[[Iterable[str], int], Iterable[str]] | None = None) -> dict[str, str]:
    """``{sample id: problem}`` for every bad sample of ``dataset`` (empty when all are fine); cached, see above."""
    root = str(dataset.root.resolve()) if dataset.root is not None else ""
    slot = hashlib.sha256(json.dumps([CHECK_VERSION, dataset.name, root, dataset.split]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "datacheck" / f"{dataset.name}_{dataset.split}_{slot}.json" if cache_dir else None
    cached: dict[str, Any] = {}
    if path is not None and path.is_file():
        try:
            data = read_json(path)
            cached = data.get("samples", {}) if data.get("version") == CHECK_VERSION else {}
        except (OSError, ValueError, AttributeError):
            cached = {}
    results: dict[str, Any] = {}
    todo = []
    for s in dataset:
        stamps = [file_stamp(s.image_path), file_stamp(s.mask_path) if s.mask_path is not None else None]
        hit = cached.get(s.id)
        if isinstance(hit, dict) and hit.get("stamps") == stamps:
            results[s.id] = hit
        else:
            todo.append((s.id, stamps))
    if todo:
        from concurrent.futures import ThreadPoolExecutor

        # decoding releases the GIL: a few threads make the first check of a large split several times faster
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            problems = pool.map(lambda item: _check_one(dataset, item[0]), todo)
            shown = progress(problems, len(todo)) if progress else problems
            for (image_id, stamps), problem in zip(todo, shown):
                results[image_id] = {"stamps": stamps, "problem": problem}
        if path is not None:
            try:
                write_json(path, {"version": CHECK_VERSION, "root": root, "split": dataset.split,
                                  "samples": {**cached, **results}})
            except OSError as e:
                log.warning("could not write the data-check cache %s: %s", path, e)
    return {i: r["problem"] for i, r in results.items() if r.get("problem")}


def apply_check(dataset: SegDataset, on_error: str, cache_dir: Path | None = None,
                progress: Callable[[Iterable[str], int], Iterable[str]] | None = None) -> SegDataset:
    """Check ``dataset``; ``raise``: DataError of the first bad sample (in dataset order); ``skip``: drop the bad
    samples (recorded in ``dataset.skipped``). Returns the dataset (changed in place)."""
    problems = check_split(dataset, cache_dir, progress)
    if not problems:
        return dataset
    if on_error != "skip":
        first = next(s.id for s in dataset if s.id in problems)
        more = f" ({len(problems) - 1} more bad sample(s); data.on_error=skip leaves them out)" if len(problems) > 1 else \
            " (data.on_error=skip leaves such samples out)"
        raise DataError(problems[first] + more)
    dataset.skipped += [(i, problems[i]) for i in dataset.ids if i in problems]
    dataset.samples = [s for s in dataset.samples if s.id not in problems]
    dataset._reindex()
    log.warning("%s/%s: %d bad sample(s) left out (data.on_error=skip)", dataset.name, dataset.split, len(problems))
    return dataset
