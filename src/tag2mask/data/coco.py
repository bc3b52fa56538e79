"""MS COCO 2014 reader (WSSS convention: ``train`` = train2014, ``val`` = val2014).

Layout under ``root``::

    train2014/, val2014/                      images (also accepted: images/<x>2014, JPEGImages/<x>2014)
    annotations/instances_{train,val}2014.json    source="instances" (default)
    SegmentationClass/{train,val}2014/<stem>.png  source="png"

Class indices: the categories of the JSON sorted by category id map to contiguous classes ``0..79`` (label
ids 1..80); class names come from the JSON (``source="png"`` uses the standard 80 COCO names).

``source="instances"``: masks are rasterised on demand with pycocotools (polygons, compressed RLE and
uncompressed RLE; polygons with fewer than 3 points are ignored). **Overlap rule:** the instances of an
image are painted in descending order of their rasterised area (ties: annotation order), so smaller objects
stay on top of larger ones. Crowd annotations (``iscrowd=1``) take part in the same order and are painted as
their class (``crowd="class"``, default) or as 255 ignore (``crowd="ignore"``). Image labels are the categories
of all its annotations, crowd included (an instance completely hidden by others still counts). Images
without any annotation are dropped, as in the WSSS lists (82,081 train / 40,137 val); their number is in
:attr:`COCODataset.dropped_unlabelled` and logged. ``load_mask`` returns the rasterised mask
(``Sample.mask_path`` is None).

``source="png"``: masks are read from ``SegmentationClass/<split>2014/<stem>.png`` (or ``mask_dir``). Such PNGs
come in two encodings: contiguous ids 1..80, or raw COCO category ids 1..90 with gaps. **Detection rule**, per
file, on the ids present (0 and 255 aside): an id in 81..90 proves raw ids; an id that is a gap of the raw
table (12, 26, 29, 30, 45, 66, 68, 69, 71) proves contiguous ids; both at once, an id above 90, or the raw
gap 83 are errors. A file with neither proof (all ids <= 80 and none a gap, e.g. person only) is read in the
encoding of the majority of the decided files of the split (contiguous when there are none or on a tie);
``png_ids="contiguous"`` or ``"raw"`` forces one encoding for all files. Raw ids are mapped to contiguous ones
on load. Labels are derived from the (mapped) masks and cached like VOC's; images whose mask has no
foreground are dropped and counted like unannotated images.

``list_file`` (optional, both modes) restricts the split to the ids of a list (first field of each line,
e.g. CLIP-ES ``coco14/train.txt``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from tag2mask.data.base import (
    IGNORE,
    Sample,
    SegDataset,
    cached_mask_labels,
    check_on_error,
    read_mask_png,
)
from tag2mask.errors import DataError
from tag2mask.io import read_json

log = logging.getLogger(__name__)

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)
#: COCO category ids of the 80 classes, in contiguous order (class c has raw id COCO_CATEGORY_IDS[c]).
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
    34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
#: Ids in 1..90 that are not COCO categories.
RAW_GAP_IDS: frozenset[int] = frozenset(set(range(1, 91)) - set(COCO_CATEGORY_IDS))

SPLITS = ("train", "val")
SOURCES = ("instances", "png")
CROWD_MODES = ("class", "ignore")
PNG_ID_MODES = ("auto", "contiguous", "raw")


def _raw_to_contiguous_lut() -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    for c, raw in enumerate(COCO_CATEGORY_IDS):
        lut[raw] = c + 1
    lut[IGNORE] = IGNORE
    return lut


RAW_TO_CONTIGUOUS = _raw_to_contiguous_lut()


def png_id_encoding(values: set[int] | list[int] | tuple[int, ...], where: str | Path) -> str | None:
    """Which id encoding the foreground ``values`` of one mask prove: ``"raw"``, ``"contiguous"`` or None.

    See the module docstring for the rule; DataError naming ``where`` for impossible combinations.
    """
    vals = {int(v) for v in values} - {0, IGNORE}
    too_big = sorted(v for v in vals if v > 90)
    if too_big:
        raise DataError(f"{where}: mask holds ids {too_big[:10]} above 90 (neither contiguous 1..80 nor raw COCO ids)")
    high = sorted(v for v in vals if v > 80)
    gaps = sorted(v for v in vals if v in RAW_GAP_IDS and v <= 80)
    if high and gaps:
        raise DataError(
            f"{where}: mask mixes raw COCO ids {high} (> 80) with ids {gaps} that are not COCO categories"
        )
    if 83 in vals:
        raise DataError(f"{where}: mask holds id 83, which is neither a contiguous nor a raw COCO id")
    if high:
        return "raw"
    if gaps:
        return "contiguous"
    return None


def map_png_mask(mask: np.ndarray, encoding: str) -> np.ndarray:
    """Map a COCO mask PNG in ``encoding`` (``"raw"`` or ``"contiguous"``) to contiguous label ids."""
    return RAW_TO_CONTIGUOUS[mask] if encoding == "raw" else mask


def segmentation_to_rle(segm: Any, h: int, w: int, where: str) -> dict | None:
    """A COCO ``segmentation`` (polygons, compressed or uncompressed RLE) as one compressed RLE, or None if empty."""
    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if not polys:
            return None
        try:
            return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        except Exception as e:
            raise DataError(f"{where}: bad polygon ({e})") from e
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if [int(x) for x in segm["size"]] != [h, w]:
            raise DataError(f"{where}: RLE size {segm['size']} differs from image size [h, w] = [{h}, {w}]")
        counts = segm["counts"]
        if isinstance(counts, list):
            try:
                return mask_utils.frPyObjects(segm, h, w)
            except Exception as e:
                raise DataError(f"{where}: bad uncompressed RLE ({e})") from e
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        if isinstance(counts, bytes):
            return {"size": [h, w], "counts": counts}
    raise DataError(f"{where}: unsupported segmentation format {type(segm).__name__}")


def rasterize_annotations(
    anns: list[dict[str, Any]], h: int, w: int, crowd: str = "class", where: str = ""
) -> np.ndarray:
    """Paint instance annotations into an ``h×w`` uint8 label map (the overlap rule of the module docstring).

    Each annotation needs ``segmentation``, ``label`` (the label id to paint, 1..C) and optionally ``iscrowd``
    and ``id``. Larger instances are painted first; crowd regions get 255 when ``crowd="ignore"``.
    """
    layers: list[tuple[int, int, np.ndarray, int]] = []
    for order, ann in enumerate(anns):
        rle = segmentation_to_rle(ann["segmentation"], h, w, f"{where} annotation {ann.get('id', order)}")
        if rle is None:
            continue
        try:
            with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                m = mask_utils.decode(rle)
        except Exception as e:
            raise DataError(f"{where} annotation {ann.get('id', order)}: cannot decode RLE ({e})") from e
        m = m.astype(bool)
        value = IGNORE if (ann.get("iscrowd", 0) and crowd == "ignore") else int(ann["label"])
        layers.append((-int(m.sum()), order, m, value))
    layers.sort(key=lambda t: (t[0], t[1]))
    out = np.zeros((h, w), dtype=np.uint8)
    for _, _, m, value in layers:
        out[m] = value
    return out


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read list file ({e})") from e
    ids = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(Path(line.split()[0]).stem)
    return ids


class COCODataset(SegDataset):
    """MS COCO 2014 with image labels and masks from instances JSON or mask PNGs (see the module docstring)."""

    OPTIONS = ("source", "crowd", "png_ids", "ann_file", "mask_dir", "list_file", "cache_dir")

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        on_error: str = "raise",
        source: str = "instances",
        crowd: str = "class",
        png_ids: str = "auto",
        ann_file: str | Path | None = None,
        mask_dir: str | Path = "SegmentationClass",
        list_file: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        check_on_error(on_error)
        root = Path(root)
        split = split[:-4] if split in ("train2014", "val2014") else split
        if split not in SPLITS:
            raise DataError(f"COCO split must be one of {', '.join(SPLITS)}, got {split!r}")
        if source not in SOURCES:
            raise DataError(f"COCO source must be one of {', '.join(SOURCES)}, got {source!r}")
        if crowd not in CROWD_MODES:
            raise DataError(f"crowd must be one of {', '.join(CROWD_MODES)}, got {crowd!r}")
        if png_ids not in PNG_ID_MODES:
            raise DataError(f"png_ids must be one of {', '.join(PNG_ID_MODES)}, got {png_ids!r}")
        if not root.is_dir():
            raise DataError(f"{root}: COCO root folder not found")
        self.source = source
        self.crowd = crowd
        self.dropped_unlabelled = 0
        self.label_cache_hit = False
        self._anns: dict[str, list[dict[str, Any]]] = {}
        self._dims: dict[str, tuple[int, int]] = {}
        self._encoding: dict[str, str] = {}
        self.ann_path: Path | None = None
        folder = f"{split}2014"
        candidates = [root / folder, root / "images" / folder, root / "JPEGImages" / folder]
        image_dir = next((p for p in candidates if p.is_dir()), None)
        if image_dir is None:
            raise DataError(f"COCO image folder not found: tried {', '.join(str(p) for p in candidates)}")
        self.image_dir = image_dir
        wanted = _read_list(Path(list_file)) if list_file is not None else None

        if source == "instances":
            ann_path = Path(ann_file) if ann_file is not None else root / "annotations" / f"instances_{folder}.json"
            class_names, samples, skipped = self._build_instances(ann_path, image_dir, wanted, on_error)
        else:
            mdir = Path(mask_dir) if Path(mask_dir).is_absolute() else root / mask_dir
            mdir = mdir / folder
            class_names, samples, skipped = self._build_png(
                root, split, mdir, image_dir, wanted, png_ids, on_error, cache_dir
            )
        if self.dropped_unlabelled:
            log.info("COCO %s: dropped %d images without labels", split, self.dropped_unlabelled)
        if skipped:
            log.warning("COCO %s: skipped %d bad inputs (see .skipped)", split, len(skipped))
        super().__init__("coco", split, class_names, samples, root=root, skipped=skipped, has_masks=True)

    # ------------------------------------------------------------------ instances
    def _build_instances(
        self, ann_path: Path, image_dir: Path, wanted: list[str] | None, on_error: str
    ) -> tuple[list[str], list[Sample], list[tuple[str, str]]]:
        self.ann_path = ann_path
        if not ann_path.is_file():
            raise DataError(
                f"{ann_path}: COCO annotation file not found (or open with source='png' for mask PNGs)"
            )
        try:
            data = read_json(ann_path)
            cats = sorted(data["categories"], key=lambda c: int(c["id"]))
            images = data["images"]
            anns = data.get("annotations", [])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{ann_path}: not a readable COCO instances file ({type(e).__name__}: {e})") from e
        cat_index = {int(c["id"]): i for i, c in enumerate(cats)}
        class_names = [str(c["name"]) for c in cats]
        skipped: list[tuple[str, str]] = []

        def problem(key: str, msg: str) -> None:
            if on_error == "raise":
                raise DataError(msg)
            skipped.append((key, msg))

        by_image: dict[int, dict[str, Any]] = {}
        for img in images:
            by_image[int(img["id"])] = img
        anns_of: dict[int, list[dict[str, Any]]] = {}
        for ann in anns:
            aid = ann.get("id")
            img_id = ann.get("image_id")
            if img_id not in by_image:
                problem(f"annotation {aid}", f"{ann_path}: annotation {aid} refers to unknown image_id {img_id}")
                continue
            if ann.get("category_id") not in cat_index:
                problem(
                    f"annotation {aid}",
                    f"{ann_path}: annotation {aid} has unknown category_id {ann.get('category_id')}",
                )
                continue
            if "segmentation" not in ann:
                problem(f"annotation {aid}", f"{ann_path}: annotation {aid} has no segmentation")
                continue
            anns_of.setdefault(img_id, []).append(
                {"id": aid, "label": cat_index[ann["category_id"]] + 1, "iscrowd": int(ann.get("iscrowd", 0)),
                 "segmentation": ann["segmentation"]}
            )

        by_stem = {Path(img["file_name"]).stem: img for img in images}
        if wanted is not None:
            chosen = []
            for sid in wanted:
                if sid not in by_stem:
                    problem(sid, f"{ann_path}: image {sid!r} of the list file is not in the annotations")
                else:
                    chosen.append(by_stem[sid])
        else:
            chosen = sorted(images, key=lambda im: str(im["file_name"]))
        samples: list[Sample] = []
        for img in chosen:
            sid = Path(img["file_name"]).stem
            img_anns = anns_of.get(int(img["id"]), [])
            if not img_anns:
                self.dropped_unlabelled += 1
                continue
            labels = {a["label"] - 1 for a in img_anns}
            self._anns[sid] = img_anns
            self._dims[sid] = (int(img["height"]), int(img["width"]))
            samples.append(Sample(sid, image_dir / str(img["file_name"]), None, tuple(labels)))
        return class_names, samples, skipped

    # ------------------------------------------------------------------ png
    def _build_png(
        self, root: Path, split: str, mdir: Path, image_dir: Path, wanted: list[str] | None,
        png_ids: str, on_error: str, cache_dir: str | Path | None,
    ) -> tuple[list[str], list[Sample], list[tuple[str, str]]]:
        if not mdir.is_dir():
            raise DataError(f"COCO mask folder {mdir} not found (source='png')")
        ids = wanted if wanted is not None else sorted(p.stem for p in mdir.glob("*.png"))
        items = [(sid, mdir / f"{sid}.png") for sid in ids]

        def present_values(p: Path) -> tuple[int, ...]:
            mask = read_mask_png(p)
            vals = tuple(int(v) for v in np.flatnonzero(np.bincount(mask.reshape(-1), minlength=256)))
            png_id_encoding(vals, p)  # raises on impossible ids
            return vals

        values, self.label_cache_hit = cached_mask_labels(
            kind="coco", root=root, split=split, source=f"png-values:{mdir}", items=items,
            compute=present_values, cache_dir=cache_dir,
        )
        decided: dict[str, str | None] = {}
        for sid, vals in values.items():
            if not isinstance(vals, str):
                decided[sid] = png_id_encoding(vals, mdir / f"{sid}.png")
        n_raw = sum(1 for e in decided.values() if e == "raw")
        n_contig = sum(1 for e in decided.values() if e == "contiguous")
        default = png_ids
        if png_ids == "auto":
            default = "raw" if n_raw > n_contig else "contiguous"
            log.info(
                "COCO %s masks: %d files with raw category ids, %d contiguous, %d undecided (read as %s)",
                split, n_raw, n_contig, len(decided) - n_raw - n_contig, default,
            )
        skipped: list[tuple[str, str]] = []
        samples: list[Sample] = []
        for sid, mpath in items:
            vals = values[sid]
            msg: str | None = None
            if isinstance(vals, str):
                msg = vals
            else:
                found = decided[sid]
                enc = (found or default) if png_ids == "auto" else png_ids
                if png_ids != "auto" and found is not None and found != png_ids:
                    msg = f"{mpath}: mask ids {sorted(set(vals) - {0, IGNORE})[:10]} are not {png_ids} COCO ids"
                elif enc == "contiguous" and any(80 < v < IGNORE for v in vals):
                    msg = f"{mpath}: mask ids above 80 cannot be contiguous class ids"
                else:
                    mapped = {int(RAW_TO_CONTIGUOUS[v]) if enc == "raw" else v for v in vals}
                    labels = tuple(v - 1 for v in mapped if 1 <= v <= 80)
                    if not labels:
                        self.dropped_unlabelled += 1
                        continue
                    self._encoding[sid] = enc
                    samples.append(Sample(sid, image_dir / f"{sid}.jpg", mpath, labels))
                    continue
            if on_error == "raise":
                raise DataError(msg)
            skipped.append((sid, msg))
        return list(COCO_CLASSES), samples, skipped

    # ------------------------------------------------------------------ masks
    def _read_mask(self, sample: Sample) -> np.ndarray | None:
        if self.source == "instances":
            h, w = self._dims[sample.id]
            where = f"{self.ann_path} (image {sample.id})"
            return rasterize_annotations(self._anns[sample.id], h, w, self.crowd, where=where)
        assert sample.mask_path is not None
        return map_png_mask(read_mask_png(sample.mask_path), self._encoding[sample.id])

    def _mask_size(self, sample: Sample) -> tuple[int, int] | None:
        if self.source == "instances":
            h, w = self._dims[sample.id]
            return w, h
        return super()._mask_size(sample)

    def encoding_of(self, i: int | str) -> str | None:
        """``"raw"`` or ``"contiguous"``: how the mask PNG of sample ``i`` is read (None in instances mode)."""
        return self._encoding.get(self[i].id)
