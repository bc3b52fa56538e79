"""The ``predict`` stage: a trained stage-II network's class probabilities for every image of a split.

Reads a checkpoint of ``tag2mask train-seg`` (``RUN/stage2/<name>/model.safetensors`` or
``checkpoints/iter_<n>.safetensors``; the folder itself means the final weights) and writes, per image,
``<id>.npz`` (:mod:`tag2mask.segmenters.predictions`: float16 probabilities, background first, and the classes
kept) and ``<id>.png`` (the argmax as a palette PNG), plus ``predict.json`` (checkpoint, split, test settings). Default output folder:
``RUN/stage2/<name>/predictions_<split>`` (``predictions_<split>_iter_<n>`` for an intermediate checkpoint).
Single scale by default; ``flip`` and ``scales`` add test-time augmentation. Resumable and shardable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tag2mask.config import Config
from tag2mask.errors import Tag2MaskError
from tag2mask.io import file_stamp, read_json, write_json, write_label_png
from tag2mask.segmenters.predictions import keep_classes, prediction_labels, present_classes, save_prediction
from tag2mask.segmenters.recipes import recipe_from_dict
from tag2mask.stages.common import open_split, progress, runtime_device
from tag2mask.stages.inputs import InputLedger
from tag2mask.stages.rundir import ItemsResult, shard
from tag2mask.stages.train_seg import build_segmenter, read_model_info


PREDICT_JSON = "predict.json"


def predictions_split(folder: Path) -> str | None:
    """The split a predict output folder holds (from its ``predict.json``), or None."""
    path = Path(folder) / PREDICT_JSON
    return str(read_json(path)["split"]) if path.is_file() else None


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint: the weights file, its ``stage2/<name>`` folder and a short tag (``final``, ``iter_<n>``)."""

    weights: Path
    folder: Path
    tag: str

    @property
    def run_path(self) -> Path:
        return self.folder.parent.parent


def resolve_checkpoint(path: str | Path) -> Checkpoint:
    """A train-seg folder or weights file → :class:`Checkpoint`; a clear error for anything else."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise Tag2MaskError(f"checkpoint {p} does not exist: train first (tag2mask train-seg) or name a file in "
                            "RUN/stage2/<net>/checkpoints")
    folder = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    read_model_info(folder)
    return Checkpoint(p, folder, "final" if p.name == "model.safetensors" else p.stem)


def default_output(checkpoint: Checkpoint, split: str) -> Path:
    suffix = "" if checkpoint.tag == "final" else f"_{checkpoint.tag}"
    return checkpoint.folder / f"predictions_{split}{suffix}"


def load_segmenter(checkpoint: Checkpoint, device: str):  # -> Segmenter
    """The network of a checkpoint with its trained weights, in eval mode on ``device``."""
    from tag2mask.segmenters.loop import load_weights

    info = read_model_info(checkpoint.folder)
    model = build_segmenter(recipe_from_dict(info["recipe"]), int(info["num_classes"]), pretrained=False)
    load_weights(checkpoint.weights, model)
    return model.to(device).eval()


def run_predict(
    config: Config,
    checkpoint: Checkpoint,
    split: str,
    out_dir: Path | None = None,
    *,
    flip: bool | None = None,
    scales: list[float] | None = None,
    classes: Literal["present", "all"] = "present",
    limit: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    show_progress: bool = True,
) -> ItemsResult:
    """Predict every image of ``split`` with ``checkpoint`` (flip/scales default to the recipe's test settings)."""
    from tag2mask.segmenters.inference import predict_probabilities

    info = read_model_info(checkpoint.folder)
    recipe = recipe_from_dict(info["recipe"])
    dataset = open_split(config, split)
    if ["background", *dataset.class_names] != list(info["class_names"]):
        raise Tag2MaskError(f"the network in {checkpoint.folder} was trained on other classes than {split!r} of "
                            f"{config.data.root} has")
    device = runtime_device(config)
    model = load_segmenter(checkpoint, device)
    out = Path(out_dir) if out_dir is not None else default_output(checkpoint, split)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "checkpoint": str(checkpoint.weights.resolve()), "split": split, "classes": classes,
        "flip": recipe.test_flip if flip is None else flip, "scales": list(scales or recipe.test_scales),
        "base_size": list(recipe.base_size),
    }
    previous = read_json(out / PREDICT_JSON) if (out / PREDICT_JSON).is_file() else None
    if previous is not None and previous != settings and any(out.glob("*.npz")):
        changed = ", ".join(f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in settings.items() if previous.get(k) != v)
        raise Tag2MaskError(f"{out} holds predictions made with other settings ({changed}): give another --out, "
                            "or delete the folder")
    if rank == 0:
        write_json(out / PREDICT_JSON, settings)
    ids = dataset.ids[:limit] if limit else dataset.ids
    weights = file_stamp(checkpoint.weights)  # what each prediction reads (tag2mask.stages.inputs)
    ledger = InputLedger(out, lambda image_id: [file_stamp(dataset[image_id].image_path), weights])
    todo = ledger.pending(shard(ids, rank, world_size), lambda i: out / f"{i}.npz")
    t0 = time.perf_counter()
    for image_id in progress(todo, len(todo), f"predict {split}", show_progress and rank == 0):
        prob = predict_probabilities(
            model, dataset.load_image(image_id), base_size=recipe.base_size, scales=scales or recipe.test_scales,
            flip=recipe.test_flip if flip is None else flip, device=device, amp=recipe.amp,
        )
        prob = prob.astype(np.float16).astype(np.float32)  # as stored: the PNG is the argmax of the file's values
        fg = present_classes(prob) if classes == "present" else np.arange(model.num_classes - 1)
        kept = keep_classes(prob, fg)
        write_label_png(out / f"{image_id}.png", prediction_labels(kept, fg))
        save_prediction(out / f"{image_id}.npz", kept, fg)  # written last: its presence marks the image done
        ledger.record(image_id)
    done = ledger.done(ids, lambda i: out / f"{i}.npz")
    return ItemsResult(out, done, len(ids), len(todo), time.perf_counter() - t0)
