"""PASCAL VOC 2012 (+ SBD ``SegmentationClassAug``) reader.

``root`` is the ``VOC2012`` folder::

    JPEGImages/<id>.jpg
    SegmentationClassAug/<id>.png      (SBD masks, 10,582 trainaug + 1,449 val; default ``mask_dir``)
    SegmentationClass/<id>.png         (official masks, train/val only; fallback when the Aug folder is absent)
    Annotations/<id>.xml               (only needed for ``label_source="xml"``)
    ImageSets/Segmentation/{train,val,trainval,test}.txt
    ImageSets/SegmentationAug/train_aug.txt   (or ImageSets/Segmentation/train_aug.txt)

Splits: ``train_aug`` (10,582), ``train`` (1,464), ``val`` (1,449), ``trainval``, ``test`` (no masks).
List lines may be bare ids (``2007_000032``) or IRN/PSA style
(``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``): the id is the stem of the first
field. Blank lines and ``#`` comments are ignored; a repeated id is an error.

Image-level labels (``label_source``):

* ``"masks"`` (default; the FMA convention, SPEC §5.4): the classes whose ids 1..20 occur in the GT mask,
  255 ignored. Derived labels are cached as JSON (see :func:`tag2mask.data.base.cached_mask_labels`).
* ``"xml"``: the object names of ``Annotations/<id>.xml``, difficult objects included unless
  ``xml_skip_difficult=True`` (the CLIP-ES convention). The two sources disagree on about 818 images:
  record which one a run used.

An image without any foreground label is an error (``on_error="raise"``) or dropped (``"skip"``); the test
split has no masks, so under ``label_source="masks"`` its samples carry no labels and are kept.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

from tag2mask.data.base import (
    Sample,
    SegDataset,
    cached_mask_labels,
    check_on_error,
    labels_from_mask,
    read_mask_png,
)
from tag2mask.errors import DataError

log = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
SPLIT_ALIASES = {"trainaug": "train_aug", "train_aug": "train_aug"}
LABEL_SOURCES = ("masks", "xml")


def voc_list_candidates(root: Path, split: str) -> list[Path]:
    """Where the list file of ``split`` may live, in the order they are tried."""
    if split == "train_aug":
        return [root / "ImageSets" / "SegmentationAug" / "train_aug.txt",
                root / "ImageSets" / "Segmentation" / "train_aug.txt"]
    return [root / "ImageSets" / "Segmentation" / f"{split}.txt"]


def available_splits(root: Path) -> list[str]:
    """Split names that have a list file under ``root/ImageSets/{Segmentation,SegmentationAug}``."""
    found: set[str] = set()
    for sub in ("Segmentation", "SegmentationAug"):
        d = root / "ImageSets" / sub
        if d.is_dir():
            found.update(p.stem for p in d.glob("*.txt"))
    return sorted(found)


def parse_voc_list(path: Path) -> list[str]:
    """Ids of a VOC list file (bare ids or IRN/PSA ``/JPEGImages/<id>.jpg /Seg.../<id>.png`` lines)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read list file ({e})") from e
    ids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        first = line.split()[0]
        sid = Path(first).stem if ("/" in first or "." in first) else first
        if not sid:
            raise DataError(f"{path}, line {lineno}: cannot read an image id from {line!r}")
        if sid in seen:
            raise DataError(f"{path}, line {lineno}: duplicate id {sid!r} (first at line {seen[sid]})")
        seen[sid] = lineno
        ids.append(sid)
    return ids


def parse_voc_xml(path: Path, skip_difficult: bool = False) -> tuple[int, ...]:
    """0-based VOC classes named by the ``<object>`` entries of an annotation XML."""
    if not path.is_file():
        raise DataError(f"{path}: annotation XML not found")
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        raise DataError(f"{path}: cannot parse annotation XML ({e})") from e
    labels: set[int] = set()
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        if skip_difficult and (obj.findtext("difficult") or "0").strip() == "1":
            continue
        if name not in VOC_CLASSES:
            raise DataError(f"{path}: unknown object name {name!r}; VOC classes: {', '.join(VOC_CLASSES)}")
        labels.add(VOC_CLASSES.index(name))
    return tuple(sorted(labels))


class VOCDataset(SegDataset):
    """PASCAL VOC 2012 segmentation split with image-level labels (see the module docstring)."""

    OPTIONS = ("mask_dir", "label_source", "xml_skip_difficult", "cache_dir")

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        on_error: str = "raise",
        mask_dir: str = "SegmentationClassAug",
        label_source: str = "masks",
        xml_skip_difficult: bool = False,
        cache_dir: str | Path | None = None,
    ) -> None:
        check_on_error(on_error)
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: VOC root folder not found (expected the VOC2012 folder)")
        if label_source not in LABEL_SOURCES:
            raise DataError(f"label_source must be one of {', '.join(LABEL_SOURCES)}, got {label_source!r}")
        split = SPLIT_ALIASES.get(split, split)

        candidates = voc_list_candidates(root, split)
        list_file = next((p for p in candidates if p.is_file()), None)
        if list_file is None:
            have = available_splits(root)
            raise DataError(
                f"VOC list file for split {split!r} not found: {' or '.join(str(p) for p in candidates)}; "
                f"splits available under {root / 'ImageSets'}: {', '.join(have) or '(none)'}"
            )
        ids = parse_voc_list(list_file)

        mdir: Path | None = None
        if split != "test":
            mdir = root / mask_dir
            if not mdir.is_dir():
                fallback = root / "SegmentationClass"
                if mask_dir == "SegmentationClassAug" and fallback.is_dir():
                    log.info("%s not found; using masks from %s", mdir, fallback)
                    mdir = fallback
                elif label_source == "xml":
                    log.warning("%s not found; VOC %s has no masks (labels from XML)", mdir, split)
                    mdir = None
                else:
                    raise DataError(
                        f"VOC mask folder {mdir} not found (nor {fallback}); "
                        f"label_source='masks' needs the masks (or use label_source='xml')"
                    )
        self.list_file = list_file
        self.mask_dir = mdir
        self.label_source = label_source
        self.label_cache_hit = False

        def mask_of(sid: str) -> Path | None:
            return mdir / f"{sid}.png" if mdir is not None else None

        # image-level labels
        labels: dict[str, tuple[int, ...] | str] = {}
        if label_source == "xml":
            for sid in ids:
                try:
                    labels[sid] = parse_voc_xml(root / "Annotations" / f"{sid}.xml", xml_skip_difficult)
                except DataError as e:
                    labels[sid] = str(e)
        elif mdir is not None:
            items = [(sid, mdir / f"{sid}.png") for sid in ids]
            labels, self.label_cache_hit = cached_mask_labels(
                kind="voc", root=root, split=split, source=f"masks:{mdir.name}", items=items,
                compute=lambda p: labels_from_mask(read_mask_png(p), len(VOC_CLASSES), p),
                cache_dir=cache_dir,
            )
        else:  # test split, labels unknown
            labels = {sid: () for sid in ids}

        samples: list[Sample] = []
        skipped: list[tuple[str, str]] = []
        needs_tags = not (split == "test" and label_source == "masks")
        for sid in ids:
            lab = labels[sid]
            if isinstance(lab, str):
                problem = lab
            elif needs_tags and not lab:
                where = root / "Annotations" / f"{sid}.xml" if label_source == "xml" else mask_of(sid)
                problem = f"{where}: image {sid!r} has no foreground label (list {list_file})"
            else:
                samples.append(Sample(sid, root / "JPEGImages" / f"{sid}.jpg", mask_of(sid), lab))
                continue
            if on_error == "raise":
                raise DataError(problem)
            skipped.append((sid, problem))
        if skipped:
            log.warning("VOC %s: skipped %d of %d images (see .skipped)", split, len(skipped), len(ids))
        super().__init__("voc", split, VOC_CLASSES, samples, root=root, skipped=skipped,
                         has_masks=mdir is not None)
