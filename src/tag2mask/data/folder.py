"""Your own dataset: a folder of images, a CSV of tags per split and a class-name file.

Layout under ``root``::

    classes.txt          one class name per line; the order defines the class indices (first line = class 0,
                         label id 1); blank lines and lines starting with ``#`` are ignored; duplicates
                         (case-insensitive) are an error
    images/              .jpg .jpeg .png .bmp .webp (sub-folders allowed)
    train.csv, val.csv   one CSV per split (or pass ``csv=PATH``)
    masks/<stem>.png     optional ground-truth label PNGs (0 bg, c+1 class c, 255 ignore), same relative path
                         as the image with ``.png``; present => the dataset can be evaluated

CSV format: a header row with the columns ``image`` and ``tags`` (other columns are ignored; a UTF-8 BOM is
fine). ``image`` is the file name relative to ``images/``; ``tags`` holds one or more class names separated by
``;`` (or ``|``), e.g. ``dog.jpg,dog;person``. Tags match class names case-insensitively, surrounding spaces are
stripped, repeated tags count once. The sample id is the image path relative to ``images/`` without its
extension (``sub/dog``), so two images differing only by extension collide (an error).

Every problem names the CSV and its line number (the header is line 1): unknown tag (the known classes are
listed), row without tags, image file missing or with an unsupported extension, duplicate image row;
a CSV without the required header is an error for the whole file. With ``on_error="skip"`` bad rows (and,
when ``masks/`` exists, rows whose mask is missing) are dropped and recorded in ``skipped``.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from tag2mask.data.base import Sample, SegDataset, check_on_error
from tag2mask.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TAG_SEPARATORS = re.compile(r"[;|]")


def read_class_names(path: Path) -> list[str]:
    """Class names of a ``classes.txt`` (order kept; blank lines and ``#`` comments skipped)."""
    if not path.is_file():
        raise DataError(f"{path}: class-name file not found (one class name per line)")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read class-name file ({e})") from e
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        key = name.lower()
        if key in seen:
            raise DataError(f"{path}, line {lineno}: duplicate class name {name!r} (first at line {seen[key]})")
        seen[key] = lineno
        names.append(name)
    if not names:
        raise DataError(f"{path}: no class names")
    return names


def available_csvs(root: Path) -> list[str]:
    """Split names that have a ``<split>.csv`` in ``root``."""
    return sorted(p.stem for p in root.glob("*.csv")) if root.is_dir() else []


class FolderDataset(SegDataset):
    """A folder dataset (images + CSV of tags + classes.txt [+ masks]); see the module docstring."""

    OPTIONS = ("csv",)
    KIND = "folder"

    def __init__(
        self, root: str | Path, split: str, *, on_error: str = "raise", csv: str | Path | None = None
    ) -> None:
        check_on_error(on_error)
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: dataset folder not found")
        class_names = read_class_names(root / "classes.txt")
        csv_path = Path(csv) if csv is not None else root / f"{split}.csv"
        if not csv_path.is_file():
            have = available_csvs(root)
            raise DataError(
                f"{csv_path}: CSV for split {split!r} not found; CSV splits in {root}: {', '.join(have) or '(none)'}"
            )
        image_dir = root / "images"
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: image folder not found")
        mask_dir = root / "masks"
        has_masks = mask_dir.is_dir()
        self.csv_path = csv_path
        self.image_dir = image_dir
        self.mask_dir = mask_dir if has_masks else None

        lookup = {name.lower(): i for i, name in enumerate(class_names)}
        samples: list[Sample] = []
        skipped: list[tuple[str, str]] = []
        first_line: dict[str, int] = {}
        for lineno, image, tags_field in _read_rows(csv_path):
            where = f"{csv_path}, line {lineno}"
            try:
                sample = self._row_sample(
                    where, image, tags_field, lookup, class_names, image_dir, mask_dir if has_masks else None
                )
                if sample.id in first_line:
                    raise DataError(f"{where}: duplicate image {image!r} (first at line {first_line[sample.id]})")
            except DataError as e:
                if on_error == "raise":
                    raise
                skipped.append((image or where, str(e)))
                continue
            first_line[sample.id] = lineno
            samples.append(sample)
        if not samples and not skipped:
            raise DataError(f"{csv_path}: no image rows")
        if skipped:
            log.warning("%s: skipped %d bad rows (see .skipped)", csv_path, len(skipped))
        super().__init__(self.KIND, split, class_names, samples, root=root, skipped=skipped, has_masks=has_masks)

    @staticmethod
    def _row_sample(
        where: str, image: str, tags_field: str, lookup: dict[str, int], class_names: list[str],
        image_dir: Path, mask_dir: Path | None,
    ) -> Sample:
        if not image:
            raise DataError(f"{where}: empty image name")
        rel = Path(image)
        if rel.is_absolute() or ".." in rel.parts:
            raise DataError(f"{where}: image {image!r} must be a path relative to {image_dir}")
        if rel.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(
                f"{where}: image {image!r} has an unsupported extension; use one of {' '.join(IMAGE_EXTENSIONS)}"
            )
        tags = [t.strip() for t in TAG_SEPARATORS.split(tags_field)]
        tags = [t for t in tags if t]
        if not tags:
            raise DataError(f"{where}: no tags for image {image!r} (separate class names with ';')")
        labels = []
        for t in tags:
            if t.lower() not in lookup:
                raise DataError(
                    f"{where}: unknown tag {t!r} for image {image!r}; known classes: {', '.join(class_names)}"
                )
            labels.append(lookup[t.lower()])
        image_path = image_dir / rel
        if not image_path.is_file():
            raise DataError(f"{where}: image file not found: {image_path}")
        sid = rel.with_suffix("").as_posix()
        mask_path = None
        if mask_dir is not None:
            mask_path = mask_dir / rel.with_suffix(".png")
            if not mask_path.is_file():
                raise DataError(f"{where}: mask file not found: {mask_path}")
        return Sample(sid, image_path, mask_path, tuple(labels))


def _read_rows(path: Path) -> list[tuple[int, str, str]]:
    """``(line number, image, tags)`` for every data row of a tags CSV; DataError on a missing header."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty CSV; expected a header row 'image,tags'")
            cols = [h.strip().lower() for h in header]
            if "image" not in cols or "tags" not in cols:
                raise DataError(
                    f"{path}, line 1: CSV header must have the columns 'image' and 'tags', found {header}"
                )
            i_img, i_tags = cols.index("image"), cols.index("tags")
            rows: list[tuple[int, str, str]] = []
            for row in reader:
                lineno = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                image = row[i_img].strip() if i_img < len(row) else ""
                tags = row[i_tags] if i_tags < len(row) else ""
                rows.append((lineno, image, tags))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV ({e})") from e
