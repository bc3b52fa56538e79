"""The dataset contract every reader follows: :class:`Sample`, :class:`SegDataset` and :func:`open_dataset`.

A dataset is a list of :class:`Sample` records (id, image path, optional ground-truth mask path, image-level
tags) plus the foreground class names. Subclasses (VOC, COCO, folder, synthetic) only build that list; reading
images and masks, checking sizes and validating files is done here, once, the same way for every kind.

Label ids everywhere: 0 = background, ``c + 1`` = foreground class ``c`` (0-based), 255 = ignore.
Images come out as ``H×W×3`` uint8 RGB whatever their file mode (palette, greyscale, RGBA, CMYK, ...).
EXIF orientation tags are *not* applied: masks are aligned with the stored pixel grid, as in VOC and COCO.

Every bad input raises :class:`tag2mask.errors.DataError` with a message that names the file (and row or
line where there is one). Readers that take ``on_error="skip"`` drop the bad input instead, record it in
:attr:`SegDataset.skipped` as ``(id or file, reason)`` and log how many were dropped.

Labels derived from mask PNGs (VOC, COCO ``source="png"``) are cached as JSON under
``<cache_dir>/labels/`` (default ``$TAG2MASK_CACHE`` or ``~/.cache/tag2mask``), see :func:`cached_mask_labels`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tag2mask.errors import DataError
from tag2mask.io import file_stamp, read_json, read_label_png, write_json

log = logging.getLogger(__name__)

IGNORE = 255
ON_ERROR = ("raise", "skip")
KINDS = ("voc", "coco", "folder", "synthetic")
CACHE_VERSION = 1


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``mask_path`` is the ground-truth label PNG, or None (VOC test; COCO instances mode, whose masks are
    rasterised from the annotation JSON). ``labels`` are the 0-based foreground class indices present in the
    image, sorted and unique (normalised on construction).
    """

    id: str
    image_path: Path
    mask_path: Path | None
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_path", Path(self.image_path))
        if self.mask_path is not None:
            object.__setattr__(self, "mask_path", Path(self.mask_path))
        object.__setattr__(self, "labels", tuple(sorted({int(c) for c in self.labels})))


class SegDataset:
    """A segmentation dataset with image-level tags: a list of :class:`Sample` plus the class names.

    Subclasses build ``samples`` and call ``super().__init__``; they may override :meth:`_read_mask` (masks
    that are not plain label PNGs) and :meth:`_mask_size` (the mask size without decoding it).
    ``OPTIONS`` names the keyword options :func:`open_dataset` may pass to the subclass.
    """

    OPTIONS: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        split: str,
        class_names: Iterable[str],
        samples: Iterable[Sample],
        *,
        root: str | Path | None = None,
        skipped: Iterable[tuple[str, str]] = (),
        has_masks: bool | None = None,
    ) -> None:
        self.name = name
        self.split = split
        self.root = Path(root) if root is not None else None
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.samples: list[Sample] = list(samples)
        self.skipped: list[tuple[str, str]] = list(skipped)
        self._has_masks = (
            any(s.mask_path is not None for s in self.samples) if has_masks is None else bool(has_masks)
        )
        self._index: dict[str, int] = {}
        self._reindex()

    # ------------------------------------------------------------------ container
    def _reindex(self) -> None:
        index: dict[str, int] = {}
        for i, s in enumerate(self.samples):
            if s.id in index:
                raise DataError(f"{self.name}/{self.split}: duplicate sample id {s.id!r}")
            index[s.id] = i
        self._index = index

    @property
    def num_classes(self) -> int:
        """Number of foreground classes (VOC 20, COCO 80)."""
        return len(self.class_names)

    @property
    def has_masks(self) -> bool:
        """True when ground-truth masks are available (evaluation possible)."""
        return self._has_masks

    @property
    def ids(self) -> list[str]:
        """Sample ids in dataset order."""
        return [s.id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int | str) -> Sample:
        return self.samples[self._resolve(i)]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"classes={self.num_classes}, has_masks={self.has_masks})"
        )

    def index_of(self, sample_id: str) -> int:
        """Position of the sample with this id; DataError if there is none."""
        try:
            return self._index[sample_id]
        except KeyError:
            raise DataError(f"{self.name}/{self.split}: no sample with id {sample_id!r}") from None

    def _resolve(self, i: int | str) -> int:
        if isinstance(i, str):
            return self.index_of(i)
        n = len(self.samples)
        if not -n <= int(i) < n:
            raise IndexError(f"sample index {i} out of range for {n} samples")
        return int(i) % n

    # ------------------------------------------------------------------ reading
    def load_image(self, i: int | str) -> np.ndarray:
        """The image as ``H×W×3`` uint8 RGB; DataError naming the file if it is missing, unreadable or corrupt."""
        return read_rgb(self[i].image_path)

    def load_mask(self, i: int | str) -> np.ndarray | None:
        """The ground-truth mask as ``H×W`` uint8 label ids, or None when the dataset has no masks.

        DataError naming the file if the mask is missing or unreadable, holds an id outside
        ``0..num_classes`` and 255, or differs in size from the image (checked on the image header).
        """
        sample = self[i]
        if not self.has_masks:
            return None
        mask = self._read_mask(sample)
        if mask is None:
            return None
        where = sample.mask_path if sample.mask_path is not None else sample.image_path
        check_label_ids(mask, self.num_classes, where)
        w, h = image_size(sample.image_path)
        if mask.shape != (h, w):
            raise DataError(
                f"{where}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image size {w}x{h} "
                f"({sample.image_path})"
            )
        return mask

    def sample_stamp(self, i: int | str) -> list[Any]:
        """What the CAM and seed stages read of a sample, as a stamp that changes when it changes: the image
        file's name, size and modification time, and the image's tags (:func:`tag2mask.io.file_stamp`)."""
        sample = self[i]
        return [file_stamp(sample.image_path), list(sample.labels)]

    def label_vector(self, i: int | str) -> np.ndarray:
        """The image tags as a ``num_classes`` uint8 multi-hot vector."""
        vec = np.zeros(self.num_classes, dtype=np.uint8)
        vec[list(self[i].labels)] = 1
        return vec

    def _read_mask(self, sample: Sample) -> np.ndarray | None:
        """Decode the mask of ``sample`` (override for masks that are not label PNGs)."""
        if sample.mask_path is None:
            return None
        return read_mask_png(sample.mask_path)

    def _mask_size(self, sample: Sample) -> tuple[int, int] | None:
        """``(width, height)`` of the mask of ``sample`` without decoding it, or None if it has none."""
        if sample.mask_path is None:
            return None
        return image_size(sample.mask_path, what="mask")

    # ------------------------------------------------------------------ validation
    def validate(self, on_error: str = "raise") -> None:
        """Open every image (PIL ``verify``) and every mask header; check that sizes agree.

        With ``on_error="raise"`` the first problem raises a DataError naming the file. With ``"skip"`` the bad
        samples are removed, recorded in :attr:`skipped` and their number is logged.
        """
        check_on_error(on_error)
        keep: list[Sample] = []
        dropped = 0
        for s in self.samples:
            try:
                verify_image(s.image_path)
                if self.has_masks:
                    msize = self._mask_size(s)
                    if msize is not None:
                        isize = image_size(s.image_path)
                        if msize != isize:
                            where = s.mask_path if s.mask_path is not None else s.image_path
                            raise DataError(
                                f"{where}: mask size {msize[0]}x{msize[1]} differs from image size "
                                f"{isize[0]}x{isize[1]} ({s.image_path})"
                            )
            except DataError as e:
                if on_error == "raise":
                    raise
                self.skipped.append((s.id, str(e)))
                dropped += 1
                continue
            keep.append(s)
        if dropped:
            log.warning("%s/%s: validate dropped %d of %d samples", self.name, self.split, dropped, len(self.samples))
            self.samples = keep
            self._reindex()


# ---------------------------------------------------------------------- file helpers
def check_on_error(on_error: str) -> None:
    """DataError unless ``on_error`` is ``"raise"`` or ``"skip"``."""
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")


def read_rgb(path: str | Path) -> np.ndarray:
    """Read any image file as ``H×W×3`` uint8 RGB; DataError naming the file on any failure."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode != "RGB":
                if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    arr = np.asarray(img, dtype=np.float64)
                    top = 65535.0 if img.mode.startswith("I") and arr.max(initial=0) > 255 else 255.0
                    grey = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
                    return np.repeat(grey[:, :, None], 3, axis=2)
                img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA") else img.convert("RGB")
            return np.array(img, dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... for bad files
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def image_size(path: str | Path, what: str = "image") -> tuple[int, int]:
    """``(width, height)`` from the file header (cheap); DataError naming the file if it cannot be opened."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        with Image.open(path) as img:
            return int(img.size[0]), int(img.size[1])
    except Exception as e:
        raise DataError(f"{path}: cannot read {what} header ({type(e).__name__}: {e})") from e


def working_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(height, width)`` scaled down so that the longer side is ``max_side`` (aspect kept, each side rounded, at
    least 1); unchanged when it already fits or ``max_side`` is 0. How stages bound the work on very large photos."""
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return height, width
    scale = max_side / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_image(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` (``H×W×3`` uint8) downscaled to :func:`working_size` with PIL bicubic (antialiased); the same
    array when it already fits."""
    h, w = image.shape[:2]
    size = working_size(h, w, max_side)
    if size == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))


def resize_labels(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map (``h×w`` uint8) resized to ``size`` = ``(H, W)`` by nearest neighbour (PIL), e.g. a seed made at
    the working size enlarged to its image's size."""
    if tuple(label.shape) == tuple(size):
        return label
    return np.asarray(Image.fromarray(np.asarray(label, np.uint8)).resize((size[1], size[0]), Image.NEAREST))


def capped_size(path: str | Path, max_side: int) -> list[int] | None:
    """The working size of the image file at ``path`` when ``max_side`` downscales it (from its header), None when
    it fits; ``[-1, -1]`` when the header cannot be read (the stage that reads the image says why)."""
    if max_side <= 0:
        return None
    try:
        w, h = image_size(path)
    except DataError:
        return [-1, -1]
    size = working_size(h, w, max_side)
    return list(size) if size != (h, w) else None


def verify_image(path: str | Path) -> None:
    """PIL ``verify`` on the file (structure and checksums); DataError naming the file if it fails."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as e:
        raise DataError(f"{path}: corrupt image ({type(e).__name__}: {e})") from e


def read_mask_png(path: str | Path) -> np.ndarray:
    """Read a label PNG (palette or greyscale) as ``H×W`` uint8 ids; DataError naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mask file not found")
    try:
        return read_label_png(path)
    except Exception as e:
        raise DataError(f"{path}: cannot read mask ({type(e).__name__}: {e})") from e


def check_label_ids(mask: np.ndarray, num_classes: int, where: str | Path) -> None:
    """DataError naming ``where`` if ``mask`` holds an id outside ``0..num_classes`` and 255."""
    present = np.flatnonzero(np.bincount(mask.reshape(-1), minlength=256))
    bad = [int(v) for v in present if num_classes < v < IGNORE]
    if bad:
        raise DataError(
            f"{where}: mask holds label ids {bad[:10]} outside 0..{num_classes} and 255 "
            f"(0 background, c+1 class c, 255 ignore)"
        )


def labels_from_mask(mask: np.ndarray, num_classes: int, where: str | Path) -> tuple[int, ...]:
    """0-based foreground classes present in ``mask`` (ids ``1..num_classes``; 0 and 255 ignored)."""
    check_label_ids(mask, num_classes, where)
    present = np.flatnonzero(np.bincount(mask.reshape(-1), minlength=256))
    return tuple(int(v) - 1 for v in present if 1 <= v <= num_classes)


# ---------------------------------------------------------------------- label cache
def default_cache_dir() -> Path:
    """``$TAG2MASK_CACHE`` if set, else ``~/.cache/tag2mask``."""
    env = os.environ.get("TAG2MASK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tag2mask"


def cached_mask_labels(
    *,
    kind: str,
    root: Path,
    split: str,
    source: str,
    items: list[tuple[str, Path]],
    compute: Callable[[Path], tuple[int, ...]],
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, tuple[int, ...] | str], bool]:
    """Image labels derived from masks, through a JSON cache.

    ``items`` are ``(sample id, mask path)``; ``compute(mask_path)`` returns the labels or raises DataError.
    Returns ``({id: labels or error message}, cache_hit)``. The cache file lives in
    ``<cache_dir>/labels/<kind>_<split>_<hash of root, split, source>.json``; it is reused only when its key
    (a SHA-256 of root, split, label source and every mask file's name, size and mtime) matches, so any
    changed, added or removed mask recomputes it. It is written atomically; a corrupt one is recomputed.
    Errors are cached too, so ``on_error`` behaves the same on a cache hit.
    """
    root_s = str(Path(root).resolve())
    stamps = [[sid, *file_stamp(p)] for sid, p in items]
    key = hashlib.sha256(
        json.dumps([CACHE_VERSION, kind, root_s, split, source, stamps], separators=(",", ":")).encode()
    ).hexdigest()
    slot = hashlib.sha256(json.dumps([kind, root_s, split, source]).encode()).hexdigest()[:16]
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = base / "labels" / f"{kind}_{split}_{slot}.json"

    if path.is_file():
        try:
            data = read_json(path)
            if data.get("key") == key:
                out: dict[str, tuple[int, ...] | str] = {k: tuple(v) for k, v in data["labels"].items()}
                out.update(data.get("errors", {}))
                if all(sid in out for sid, _ in items):
                    log.debug("label cache hit: %s", path)
                    return out, True
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("label cache %s is unreadable (%s); recomputing", path, e)

    labels: dict[str, list[int]] = {}
    errors: dict[str, str] = {}
    for sid, mpath in items:
        try:
            labels[sid] = list(compute(mpath))
        except DataError as e:
            errors[sid] = str(e)
    log.info("derived image labels of %d masks (%s/%s); caching in %s", len(items), kind, split, path)
    try:
        write_json(
            path,
            {"version": CACHE_VERSION, "key": key, "kind": kind, "root": root_s, "split": split,
             "source": source, "labels": labels, "errors": errors},
        )
    except OSError as e:
        log.warning("could not write label cache %s: %s", path, e)
    result: dict[str, tuple[int, ...] | str] = {k: tuple(v) for k, v in labels.items()}
    result.update(errors)
    return result, False


# ---------------------------------------------------------------------- factory
def open_dataset(kind: str, root: str | Path, split: str, *, on_error: str = "raise", **options: Any) -> SegDataset:
    """Open a dataset of ``kind`` (``voc``, ``coco``, ``folder``, ``synthetic``) at ``root``.

    ``options`` go to the reader (e.g. ``label_source="xml"`` for VOC, ``source="png"`` for COCO,
    ``csv=PATH`` for folder); an unknown option or kind is a DataError listing the valid ones.
    """
    check_on_error(on_error)
    if kind == "voc":
        from tag2mask.data.voc import VOCDataset as cls
    elif kind == "coco":
        from tag2mask.data.coco import COCODataset as cls
    elif kind == "folder":
        from tag2mask.data.folder import FolderDataset as cls
    elif kind == "synthetic":
        from tag2mask.data.synthetic import SyntheticDataset as cls
    else:
        raise DataError(f"unknown dataset kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    valid = cls.OPTIONS
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DataError(
            f"unknown option(s) {', '.join(unknown)} for dataset kind {kind!r}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )
    return cls(root, split, on_error=on_error, **options)
