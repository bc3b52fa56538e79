"""The ``refine`` stage: SAMS refinement (or dense CRF) of a segmentation network's probabilities (SPEC §11.2, §8.1).

Reads the prediction files that ``tag2mask predict`` writes (``<predictions>/<id>.npz``, see
:mod:`tag2mask.segmenters.predictions`: ``(1+P)×H×W`` probabilities, background first, and the ``P`` classes) and,
for SAMS, the split's cached quasi-superpixels (``tag2mask superpixels --split <split>``). Layout of the output::

    <out>/
      <id>.png        palette label map (0 background, c+1 class c), one per image of the split
      refine.json     method, alpha and how it was chosen, uncovered mode, CRF parameter set, inputs, counts

Methods (:func:`refine_one`):

* ``"sams"`` — :func:`tag2mask.seeding.sams.sams_refine`: mean probability per superpixel (no normalisation),
  background score raised to the power ``alpha``, argmax, priority painting (higher level, then higher
  confidence, wins). Pixels covered by no superpixel become background (``uncovered="background"``, the reference)
  or keep the network's own argmax (``uncovered="argmax"``, SPEC §13 item 16).
* ``"crf"`` — dense CRF (SPEC §8.1, :func:`tag2mask.seeding.crf.dense_crf`) on the probabilities as given: unary
  ``−log(max(p, 1e-5))``, not renormalised; argmax of ``Q``. The seeds' confidence mask (255 below a threshold) is
  not applied: a refined prediction labels every pixel.

``alpha`` is fixed by the user (``alpha=...``), or swept (``sweep=[...]``): every listed value is scored against
the ground truth of the *same* split (one pass over the images: each prediction and superpixel file is decoded
once and refined with every alpha), the best mIoU wins (ties → the first listed), and a second pass writes the PNGs
of that value (the label maps of every alpha are not kept in memory).

**Ground-truth caveat (SPEC §13 item 9).** The reference searched ``alpha`` on the evaluation split's ground truth
(VOC val α ∈ {1,…,5}, COCO val α ∈ {0.6,…,1.0}, :data:`SPEC_ALPHA_SWEEPS`). A swept alpha is therefore tuned on
the ground truth it is then evaluated on: ``refine.json`` says so in a sentence naming the split
(``alpha_choice``, and ``tuned_on_gt``: lines ready for ``Protocol.tuned_on_gt``, see :func:`tuned_on_gt_lines`),
and a number made that way is not a clean held-out number.

Resumable (existing PNGs are skipped; ``refine.json`` guards against mixing PNGs of other settings) and shardable
(``rank`` / ``world_size``). A sweep always scores the whole split (or its first ``limit`` images), whatever the
shard, so that every worker picks the same alpha.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from tag2mask.config import Config
from tag2mask.data.base import resize_labels, working_size
from tag2mask.errors import ConfigError, DataError, Tag2MaskError
from tag2mask.metrics import ConfusionMatrix
from tag2mask.io import file_stamp, read_json, write_json, write_label_png
from tag2mask.segmenters.predictions import load_prediction, prediction_labels
from tag2mask.stages.common import open_split, progress
from tag2mask.stages.inputs import InputLedger
from tag2mask.stages.rundir import ItemsResult, shard

__all__ = [
    "METHODS",
    "REFINE_JSON",
    "RefineResult",
    "SPEC_ALPHA_SWEEPS",
    "refine_one",
    "run_refine",
    "tuned_on_gt_lines",
]

METHODS = ("sams", "crf")
UNCOVERED_MODES = ("background", "argmax")
REFINE_JSON = "refine.json"

# SPEC §11.2 step 5: the alpha values the reference searched by GT mIoU on the evaluated split.
SPEC_ALPHA_SWEEPS: dict[str, tuple[float, ...]] = {
    "voc": (1.0, 2.0, 3.0, 4.0, 5.0),
    "coco": (0.6, 0.7, 0.8, 0.9, 1.0),
}

# refine.json keys that must agree for PNGs already in the output folder to be reused
_SETTING_KEYS = ("method", "alpha", "uncovered", "crf_params", "predictions_dir", "superpixels_dir", "split")


@dataclass
class RefineResult(ItemsResult):
    """What :func:`run_refine` reports: the :class:`ItemsResult` counts plus the method, the alpha used (``None``
    for CRF) and, when swept, ``{alpha: mIoU (0..1)}`` in the order of the sweep."""

    method: str = "sams"
    alpha: Optional[float] = None
    sweep: Optional[dict[float, float]] = None

    @property
    def out_dir(self) -> Path:
        """The output folder (same as ``folder``)."""
        return self.folder


# ----------------------------------------------------------------------------------------------------------------
# one image


def refine_one(
    prob: np.ndarray,
    fg_cls: Sequence[int] | np.ndarray,
    method: str,
    *,
    alpha: float = 1.0,
    uncovered: str = "background",
    superpixels: Any = None,
    levels: Optional[Sequence[int] | np.ndarray] = None,
    image: Optional[np.ndarray] = None,
    crf: str = "deeplab_crf",
) -> np.ndarray:
    """One image's refined ``H×W`` uint8 label map (0 background, ``c+1`` class ``c``).

    Args:
        prob: ``(1+P)×H×W`` probabilities, background first, row ``k ≥ 1`` = class ``fg_cls[k−1]`` (the prediction
            file's layout; not required to sum to one).
        fg_cls: the ``P`` classes (0-based).
        method: ``"sams"`` (SPEC §11.2) or ``"crf"`` (SPEC §8.1).
        alpha: SAMS background exponent ``bg ← bg^alpha``.
        uncovered: SAMS, pixels in no superpixel: ``"background"`` (reference) or ``"argmax"`` (the network's own
            argmax, SPEC §13 item 16).
        superpixels: SAMS: a :class:`tag2mask.superpixels.Superpixels` of the image, or an ``S×H×W`` bool mask
            stack with ``levels``. The probabilities' size, or its working size (a large photo's superpixels,
            ``superpixels.max_side``): then SAMS works at that size (the probabilities resized bilinearly to it,
            as any map SAMS is given) and the labels are enlarged back.
        levels: the ``S`` levels of a mask stack (0 subpart, 1 part, 2 whole); ``None`` with a ``Superpixels``.
        image: CRF: the ``H×W×3`` uint8 RGB image.
        crf: CRF: the parameter-set name (:data:`tag2mask.seeding.crf.CRF_PARAM_SETS`).

    An image with no foreground class (``P = 0``) gives all zeros (the argmax of a background-only map).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    prob = np.asarray(prob)
    fg = np.asarray(fg_cls, np.int64).reshape(-1)
    if prob.ndim != 3 or prob.shape[0] != 1 + fg.size:
        raise ValueError(f"prob must be (1+P)xHxW for {fg.size} classes, got shape {prob.shape}")
    size = (int(prob.shape[1]), int(prob.shape[2]))
    if fg.size == 0:
        return np.zeros(size, np.uint8)
    if method == "sams":
        from tag2mask.seeding.sams import sams_refine

        if superpixels is None:
            raise ValueError("SAMS refinement needs the image's superpixels")
        sp_size = tuple(superpixels.size) if hasattr(superpixels, "atoms") else tuple(np.shape(superpixels)[-2:])
        if sp_size != size and working_size(*size, max(sp_size)) != sp_size:
            raise ValueError(f"superpixels are {sp_size} but the probabilities are {size}")
        # at the superpixels' size (SAMS resizes the probabilities to it: a large photo's working size), then the
        # labels at the probabilities' size
        label = sams_refine(prob, fg, superpixels, levels, float(alpha), uncovered)  # type: ignore[arg-type]
        return resize_labels(np.asarray(label), size)
    from tag2mask.seeding.crf import dense_crf

    if image is None:
        raise ValueError("CRF refinement needs the image")
    return prediction_labels(dense_crf(image, prob, crf), fg)


# ----------------------------------------------------------------------------------------------------------------
# checks


def _check_args(method: str, alpha: Optional[float], sweep: Optional[Sequence[float]], uncovered: str,
                crf_params: str) -> Optional[list[float]]:
    """Validate the options; returns the sweep as a list of floats (``None`` without one)."""
    if method not in METHODS:
        raise ConfigError(f"refine method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "crf":
        if alpha is not None or sweep is not None:
            raise ConfigError("alpha / --sweep apply to SAMS refinement only, not to the dense CRF")
        from tag2mask.seeding.crf import _import_densecrf, crf_params as named_params

        try:
            named_params(crf_params)
        except ValueError as e:
            raise ConfigError(f"refine: {e}") from None
        _import_densecrf()  # the optional backend must be there: fail before any work
        return None
    if uncovered not in UNCOVERED_MODES:
        raise ConfigError(f"uncovered must be one of {', '.join(UNCOVERED_MODES)}, got {uncovered!r}")
    if alpha is not None and sweep is not None:
        raise ConfigError("give either a fixed alpha or a sweep of alphas, not both")
    values = [float(alpha)] if alpha is not None else ([float(a) for a in sweep] if sweep is not None else [])
    for a in values:
        if not (math.isfinite(a) and a > 0):
            raise ConfigError(f"alpha must be a positive number, got {a}")
    if sweep is None:
        return None
    if not values:
        raise ConfigError("the alpha sweep is empty")
    if len(set(values)) != len(values):
        raise ConfigError(f"the alpha sweep has duplicates: {values}")
    return values


def _check_predictions(predictions_dir: Path, ids: Sequence[str], needed: Sequence[str], split: str) -> None:
    """A clear error when ``predictions_dir`` holds no prediction of ``ids`` at all, or lacks one of ``needed``."""
    if ids and not any((predictions_dir / f"{i}.npz").is_file() for i in ids):
        raise Tag2MaskError(
            f"no prediction file (<id>.npz) of split {split!r} in {predictions_dir}; "
            f"run 'tag2mask predict --split {split}' first"
        )
    missing = [i for i in needed if not (predictions_dir / f"{i}.npz").is_file()]
    if missing:
        raise Tag2MaskError(
            f"prediction file {predictions_dir / (missing[0] + '.npz')} is missing ({len(missing)} of {len(needed)} "
            f"images to refine have none); run 'tag2mask predict --split {split}' first"
        )


def _superpixels_hint(split: str) -> str:
    return f"run 'tag2mask superpixels --run RUN --split {split}' first (with the same superpixels settings)"


def _load_superpixels(folder: Path, image_id: str, size: tuple[int, int], split: str, max_side: int) -> Any:
    """The cached superpixels of one image, checked against the prediction's size (or its working size under
    ``superpixels.max_side``)."""
    from tag2mask.superpixels import Superpixels

    stem = folder / image_id
    if not Path(str(stem) + ".json").is_file():
        raise Tag2MaskError(f"quasi-superpixels of {image_id} not found in {folder}; {_superpixels_hint(split)}")
    try:
        sp = Superpixels.load(stem)
    except (ValueError, KeyError, OSError) as e:
        raise DataError(f"{stem}.json: unreadable quasi-superpixels: {e}") from None
    if tuple(sp.size) not in (size, working_size(*size, max_side)):
        raise DataError(f"{stem}.json: superpixels are {tuple(sp.size)}, the prediction is {size} (working size "
                        f"{working_size(*size, max_side)} with superpixels.max_side={max_side})")
    return sp


# ----------------------------------------------------------------------------------------------------------------
# the stage


def _best_alpha(table: dict[float, float]) -> float:
    """The alpha with the highest mIoU; ties (and NaN) → the first listed."""
    best, best_miou = None, -math.inf
    for a, m in table.items():
        if best is None or (not math.isnan(m) and m > best_miou):
            best, best_miou = a, (m if not math.isnan(m) else best_miou)
    assert best is not None
    return best


def _alpha_sentence(values: list[float], split: str, n_images: int) -> str:
    listed = ", ".join(f"{a:g}" for a in values)
    return (
        f"alpha tuned on the ground truth of split {split} (best mIoU among alpha in {{{listed}}} over {n_images} "
        "images, SPEC §13 item 9): not a clean held-out number"
    )


def tuned_on_gt_lines(out_dir: str | Path) -> list[str]:
    """The GT-tuning lines of a refinement folder's ``refine.json`` (empty for a fixed alpha or CRF), ready for
    :attr:`tag2mask.metrics.Protocol.tuned_on_gt` when the refined PNGs are evaluated."""
    path = Path(out_dir) / REFINE_JSON
    if not path.is_file():
        return []
    return list(read_json(path).get("tuned_on_gt", []))


def _check_settings(out: Path, record: dict[str, Any], keys: Sequence[str]) -> None:
    """Refuse an output folder whose ``refine.json`` was written with other settings (no mixing of PNGs)."""
    path = out / REFINE_JSON
    if not path.is_file():
        return
    previous = read_json(path)
    differ = [f"{k}: {previous.get(k)!r} → {record[k]!r}" for k in keys if previous.get(k) != record[k]]
    if differ:
        raise Tag2MaskError(
            f"{out} holds refinements made with other settings ({'; '.join(differ)}); "
            "choose another output folder or delete it"
        )


def run_refine(
    config: Config,
    predictions_dir: str | Path,
    out_dir: str | Path,
    *,
    method: str,
    split: str,
    alpha: Optional[float] = None,
    sweep: Optional[Sequence[float]] = None,
    uncovered: str = "background",
    crf_params: str = "deeplab_crf",
    superpixels_dir: Optional[str | Path] = None,
    limit: Optional[int] = None,
    show_progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> RefineResult:
    """Refine the predictions of ``split`` in ``predictions_dir`` into ``out_dir/<id>.png`` (see the module doc).

    Args:
        config: the run's config (dataset, superpixel cache key, ``evaluate.ignore_index``).
        predictions_dir: ``<id>.npz`` prediction files (``tag2mask predict``).
        out_dir: where the PNGs and ``refine.json`` go.
        method: ``"sams"`` or ``"crf"``.
        split: the dataset split the predictions belong to.
        alpha: SAMS: fixed background exponent (default 1.0 when neither ``alpha`` nor ``sweep`` is given).
        sweep: SAMS: alphas to score against the split's ground truth; the best is used (tuned on GT: labelled).
        uncovered: SAMS: ``"background"`` or ``"argmax"``.
        crf_params: CRF: parameter-set name.
        superpixels_dir: SAMS: the superpixel folder (default: the split's cache folder under ``config``).
        limit: only the first ``limit`` images of the split.
        show_progress, rank, world_size: progress bar; this worker's shard.

    Raises:
        Tag2MaskError: missing predictions / superpixels / ground truth for a sweep, conflicting options, or an
            output folder holding refinements made with other settings.
    """
    values = _check_args(method, alpha, sweep, uncovered, crf_params)
    dataset = open_split(config, split)
    ids = list(dataset.ids[:limit] if limit else dataset.ids)
    pred_dir = Path(predictions_dir).expanduser().resolve()
    out = Path(out_dir)
    if values is not None and not dataset.has_masks:
        raise Tag2MaskError(
            f"split {split!r} of {config.data.root} has no ground-truth masks: an alpha sweep needs them "
            "(give a fixed alpha instead)"
        )
    sp_dir: Optional[Path] = None
    if method == "sams":
        if superpixels_dir is None:
            from tag2mask.stages.superpixels import superpixels_dir as default_dir

            superpixels_dir = default_dir(config, split)
        sp_dir = Path(superpixels_dir).expanduser().resolve()
        if not sp_dir.is_dir():
            raise Tag2MaskError(f"no quasi-superpixels of split {split!r} in {sp_dir}; {_superpixels_hint(split)}")

    def output(image_id: str) -> Path:
        return out / f"{image_id}.png"

    num_classes = dataset.num_classes

    def load(image_id: str) -> tuple[np.ndarray, np.ndarray, Any, Optional[np.ndarray]]:
        prob, fg = load_prediction(pred_dir / f"{image_id}.npz")
        if fg.size and (int(fg.min()) < 0 or int(fg.max()) >= num_classes):
            raise DataError(f"{pred_dir / (image_id + '.npz')}: classes {fg.tolist()} outside the dataset's "
                            f"{num_classes} classes")
        size = (int(prob.shape[1]), int(prob.shape[2]))
        sp = (_load_superpixels(sp_dir, image_id, size, split, config.superpixels.max_side)
              if sp_dir is not None and fg.size else None)
        image = dataset.load_image(image_id) if method == "crf" and fg.size else None
        if image is not None and image.shape[:2] != size:
            raise DataError(f"{pred_dir / (image_id + '.npz')}: prediction is {size}, the image {image.shape[:2]}")
        return prob, fg, sp, image

    record: dict[str, Any] = {
        "stage": "refine",
        "method": method,
        "alpha": None,
        "uncovered": uncovered if method == "sams" else None,
        "crf_params": crf_params if method == "crf" else None,
        "predictions_dir": str(pred_dir),
        "superpixels_dir": str(sp_dir) if sp_dir is not None else None,
        "split": split,
    }
    _check_settings(out, record, [k for k in _SETTING_KEYS if k != "alpha"])  # before a (long) sweep

    t0 = time.perf_counter()
    table: Optional[dict[float, float]] = None
    if values is not None:  # the sweep: every image of the split, every alpha, against the ground truth
        _check_predictions(pred_dir, ids, ids, split)
        cms = {a: ConfusionMatrix(num_classes + 1, config.evaluate.ignore_index) for a in values}
        for image_id in progress(ids, len(ids), f"refine sweep {split}", show_progress and rank == 0):
            prob, fg, sp, _ = load(image_id)
            gt = dataset.load_mask(image_id)
            if gt is None:
                raise DataError(f"image {image_id} of split {split!r} has no ground-truth mask "
                                "(an alpha sweep needs one)")
            if gt.shape != prob.shape[1:]:
                raise DataError(f"{pred_dir / (image_id + '.npz')}: prediction is {prob.shape[1:]}, "
                                f"the ground truth {gt.shape}")
            for a in values:
                cms[a].update(refine_one(prob, fg, "sams", alpha=a, uncovered=uncovered, superpixels=sp), gt)
        table = {a: cms[a].miou() for a in values}
        alpha = _best_alpha(table)
        sentence = _alpha_sentence(values, split, len(ids))
        record.update(alpha=alpha, alpha_choice=sentence, tuned_on_gt=[sentence],
                      sweep=[{"alpha": a, "miou": (None if math.isnan(m) else m)} for a, m in table.items()])
    elif method == "sams":
        alpha = 1.0 if alpha is None else float(alpha)
        record.update(alpha=alpha, alpha_choice="fixed (given, not tuned on ground truth)", tuned_on_gt=[], sweep=None)
    else:
        record.update(alpha_choice=None, tuned_on_gt=[], sweep=None)
    _check_settings(out, record, _SETTING_KEYS)

    def inputs(image_id: str) -> list:  # what one refined map reads (tag2mask.stages.inputs)
        read = [file_stamp(pred_dir / f"{image_id}.npz"), record["alpha"]]
        if sp_dir is not None:
            read.append(file_stamp(f"{sp_dir / image_id}.json"))
        if method == "crf":
            read.append(file_stamp(dataset[image_id].image_path))
        return read

    ledger = InputLedger(out, inputs)
    todo = ledger.pending(shard(ids, rank, world_size), output)
    if todo:
        _check_predictions(pred_dir, ids, todo, split)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / REFINE_JSON, {**record, "status": "running"})
    for image_id in progress(todo, len(todo), f"refine {method} {split}", show_progress and rank == 0):
        prob, fg, sp, image = load(image_id)
        label = refine_one(prob, fg, method, alpha=alpha if alpha is not None else 1.0, uncovered=uncovered,
                           superpixels=sp, image=image, crf=crf_params)
        output(image_id).parent.mkdir(parents=True, exist_ok=True)
        write_label_png(output(image_id), label)
        ledger.record(image_id)
    done = ledger.done(ids, output)
    seconds = time.perf_counter() - t0
    write_json(out / REFINE_JSON, {**record, "status": "done" if done == len(ids) else "running",
                                   "images": len(ids), "done": done})
    return RefineResult(out, done, len(ids), len(todo), seconds, method=method, alpha=record["alpha"], sweep=table)
