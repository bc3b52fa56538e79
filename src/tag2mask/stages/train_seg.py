"""The ``train-seg`` stage: a stage-II segmentation network trained on a run's fine seeds (SPEC §11, App. G).

Layout, one folder per network name (``--name``, default the network)::

    RUN/stage2/<name>/
      stage.json            the recipe hash (another recipe clears the folder, so results never mix)
      recipe.yaml           the resolved recipe
      model.json            network, backbone, classes, dataset, labels folder, iterations — what ``predict`` needs
      metrics.jsonl         training loss and learning rate
      val.jsonl             validation mIoU (when the validation split has ground truth)
      checkpoints/iter_<n>.safetensors   every ``checkpoint_every`` iterations before the last
      resume.safetensors    the state to resume from, one file (:mod:`tag2mask.resume`); once finished it holds
                            only that fact (``keep_resume=true`` keeps the full state)
      model.safetensors     the final weights

Labels: the run's ``seeds_fine`` (``--labels DIR`` for any folder of label PNGs named ``<image id>.png``; 0
background, ``c+1`` class ``c``, 255 ignored). Training resumes from the last saved state.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tag2mask.config import Config
from tag2mask.hashing import config_hash
from tag2mask.errors import ConfigError, DataError, Tag2MaskError
from tag2mask.io import read_json, write_json, write_text
from tag2mask.segmenters.base import Segmenter
from tag2mask.segmenters.recipes import SegmenterRecipe, backbone_weight_name, load_recipe, total_iterations
from tag2mask.stages.common import join_process_group, log, open_split, runtime_device
from tag2mask.stages.lifecycle import begin_shared_stage, end_shared_stage
from tag2mask.stages.inputs import data_fingerprint, with_data
from tag2mask.stages.rundir import RunDir

STAGE2 = "stage2"
# recipe keys that never change the trained weights: excluded from the stage hash
NEUTRAL_KEYS = ("log_every", "checkpoint_every", "keep_resume", "val_every", "val_split", "val_limit", "test_flip",
                "test_scales")


def stage_name(name: str) -> str:
    return f"{STAGE2}/{name}"


def recipe_hash(recipe: SegmenterRecipe, labels: str) -> str:
    """Hash of what decides the weights: the recipe without :data:`NEUTRAL_KEYS`, plus the labels' identity."""
    values = {k: v for k, v in recipe.to_dict().items() if k not in NEUTRAL_KEYS}
    return config_hash(values, labels)


def build_segmenter(recipe: SegmenterRecipe, num_classes: int, *, pretrained: bool = True) -> Segmenter:
    """The recipe's network with ``num_classes`` outputs; ImageNet backbone weights unless ``pretrained=False``.

    The random initialisation is drawn from ``recipe.seed`` (the caller's torch RNG is left as it was), so two
    runs of one recipe start from the same weights.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return _build(recipe, num_classes, backbone_weight_name(recipe) if pretrained else None)


def _build(recipe: SegmenterRecipe, num_classes: int, weights: str | None) -> Segmenter:
    if recipe.net == "deeplabv3plus":
        from tag2mask.segmenters.deeplab import build_deeplabv3plus

        return build_deeplabv3plus(num_classes, recipe.backbone, weights, recipe.output_stride)
    from tag2mask.segmenters.mask2former import build_mask2former

    return build_mask2former(num_classes, recipe.backbone, weights, num_queries=recipe.num_queries,
                             small_head=recipe.small_head or None)


def check_labels(dataset: Any, labels_dir: Path) -> None:
    """Every training image needs ``labels_dir/<id>.png``; one clear error otherwise."""
    if not labels_dir.is_dir():
        raise DataError(f"label folder {labels_dir} does not exist: run the pipeline first (tag2mask run) so that "
                        "the fine seeds exist, or pass --labels DIR")
    missing = [i for i in dataset.ids if not (labels_dir / f"{i}.png").is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(dataset)} training images have no label PNG in {labels_dir} "
                        f"(first: {missing[0]}.png)")


def validation_split(config: Config, recipe: SegmenterRecipe) -> str | None:
    """The split to validate on: ``recipe.val_split`` or ``val``; None when it does not exist or has no masks."""
    split = recipe.val_split or "val"
    try:
        dataset = open_split(config, split)
    except Tag2MaskError:
        if recipe.val_split:
            raise
        return None
    return split if dataset.has_masks and len(dataset) else None


def make_validator(config: Config, recipe: SegmenterRecipe, split: str, device: str,
                   rank: int = 0, world_size: int = 1):  # -> Validator
    """``validate(model) → mIoU %`` on ``split`` (first ``val_limit`` images) with the recipe's test settings.

    Under torchrun every rank takes every ``world_size``-th image and the confusion matrices are summed over the
    ranks, so validation takes ``1/world_size`` of the time and every rank returns the same number.
    """
    import numpy as np
    import torch

    from tag2mask.metrics import ConfusionMatrix
    from tag2mask.segmenters.inference import predict_probabilities
    from tag2mask.stages.rundir import shard

    dataset = open_split(config, split)
    ids = dataset.ids[: recipe.val_limit] if recipe.val_limit else dataset.ids

    def validate(model: Segmenter) -> float:
        conf = ConfusionMatrix(model.num_classes, ignore_index=config.evaluate.ignore_index)
        for image_id in shard(ids, rank, world_size):
            prob = predict_probabilities(model, dataset.load_image(image_id), base_size=recipe.base_size,
                                         scales=recipe.test_scales, flip=recipe.test_flip, device=device,
                                         amp=recipe.amp)
            conf.update(np.argmax(prob, axis=0).astype(np.uint8), dataset.load_mask(image_id))
        if world_size > 1:
            import torch.distributed as dist

            counts = torch.from_numpy(np.ascontiguousarray(conf.matrix, dtype=np.int64)).to(device)
            dist.all_reduce(counts)
            conf.matrix[...] = counts.cpu().numpy()
        return 100.0 * conf.miou()

    return validate


@dataclass
class TrainSegResult:
    out_dir: Path
    iterations: int
    total_iterations: int
    resumed_from: int
    last_loss: float
    val: list[dict[str, float]]
    seconds: float


def run_train_seg(
    run: RunDir,
    net: str,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    labels_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
    stop_at: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> TrainSegResult:
    """Train ``net`` on the run's fine seeds (or ``labels_dir``); see the module doc.

    A folder trained under another recipe (or on other images, tags or labels) is refused, naming the differences, unless
    ``overwrite`` (then it is cleared) — choose another ``name`` to keep both.
    """
    from tag2mask.segmenters.loop import SeedTrainSet, train_segmenter
    from tag2mask.stages.pipeline import final_seeds

    config = run.config
    recipe = load_recipe(net, config.data.dataset, overrides)
    weights_path = Path(recipe.backbone_weights).expanduser()
    if recipe.backbone_weights not in ("auto", "none") and weights_path.is_file():
        recipe.backbone_weights = str(weights_path.resolve())  # the same file under any spelling, one hash
    name = name or net
    seeds_stage = final_seeds(config)  # seeds_fine, or seeds_clip_es for a training-free run
    labels = Path(labels_dir) if labels_dir is not None else run.stage_dir(seeds_stage)
    dataset = open_split(config, config.data.train_split)
    check_labels(dataset, labels)
    device = runtime_device(config)
    rank, world = join_process_group(config)
    num_classes = 1 + dataset.num_classes
    if recipe.batch_size > len(dataset):
        raise ConfigError(f"batch_size {recipe.batch_size} (a train-seg recipe key) is larger than the training "
                          f"split {config.data.train_split!r} ({len(dataset)} images): pass batch_size={len(dataset)} "
                          "or less to tag2mask train-seg")
    total = total_iterations(recipe, len(dataset))
    labels_id = str(labels.resolve())
    seeds = run.stage_record(seeds_stage)
    if labels_dir is None and seeds is not None:
        labels_id = f"{seeds_stage}:{seeds.config_hash}"
    # the images, their tags and every label PNG read: a changed one trains again (tag2mask.stages.inputs)
    h = with_data(recipe_hash(recipe, labels_id), data_fingerprint(dataset, lambda item: [labels / f"{item}.png"]))
    stage = stage_name(name)
    if not overwrite:
        refuse_other_recipe(run.stage_dir(stage), h, recipe)
    # a resume state replaces every weight: then the ImageNet file is not needed (nor read)
    resuming = _resume_hash(run.stage_dir(stage)) == h
    model = build_segmenter(recipe, num_classes, pretrained=not resuming)  # a missing backbone file fails here
    out = begin_shared_stage(run, stage, h, {"labels": str(labels), "net": net}, rank)
    if rank == 0:
        write_text(out / "recipe.yaml", recipe.to_yaml())
        write_json(out / "model.json", {
            "net": recipe.net, "backbone": recipe.backbone, "backbone_weights": backbone_weight_name(recipe),
            "num_classes": num_classes, "class_names": ["background", *dataset.class_names],
            "dataset": config.data.dataset, "train_split": config.data.train_split, "labels": str(labels),
            "train_images": len(dataset), "total_iterations": total, "recipe": recipe.to_dict(),
        })
    val_split = validation_split(config, recipe) if recipe.val_every else None
    validate = make_validator(config, recipe, val_split, device, rank, world) if val_split else None
    log.info("train-seg %s (%s): %d images, %d iterations at batch %d, device %s, %d rank(s), validation on %s",
             name, recipe.backbone, len(dataset), total, recipe.batch_size, device, world, val_split or "nothing")
    t0 = time.perf_counter()
    result = train_segmenter(model, SeedTrainSet(dataset, labels, recipe), recipe, out, total_iter=total,
                             recipe_hash=h, device=device, validate=validate, stop_at=stop_at,
                             num_workers=config.runtime.num_workers, show_progress=show_progress)
    seconds = time.perf_counter() - t0
    end_shared_stage(run, stage, {"images": len(dataset), "iterations": result.iterations}, seconds,
                     result.final_weights is not None, rank)
    return TrainSegResult(out, result.iterations, total, result.resumed_from, result.last_loss, result.val, seconds)


def _resume_hash(folder: Path) -> str | None:
    from tag2mask import resume

    meta = resume.read_meta(folder)
    return None if meta is None else meta.get("recipe_hash")


def refuse_other_recipe(folder: Path, new_hash: str, recipe: SegmenterRecipe) -> None:
    """Tag2MaskError when ``folder`` holds a network trained under another recipe hash, naming what differs."""
    marker = folder / "stage.json"
    if not marker.is_file() or read_json(marker).get("config_hash") == new_hash:
        return
    trained = ("resume.safetensors", "resume.json", "model.safetensors", "checkpoints")
    if not any((folder / f).exists() for f in trained):
        return  # nothing trained there yet
    old: dict[str, Any] = {}
    if (folder / "recipe.yaml").is_file():
        import yaml

        old = yaml.safe_load((folder / "recipe.yaml").read_text(encoding="utf-8")) or {}
    new = recipe.to_dict()
    changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if k not in NEUTRAL_KEYS and old.get(k) != v]
    what = ("another recipe: " + "; ".join(changed[:6]) if changed else
            "other training data: an image, a tag or a label PNG was replaced, added or removed since")
    raise Tag2MaskError(
        f"{folder} holds a network trained with {what}: pass --name NEW to train beside it, or "
        "--overwrite to replace it (its checkpoints, predictions and refinements are deleted)"
    )


def read_model_info(folder: Path) -> dict[str, Any]:
    """``model.json`` of a ``stage2/<name>`` folder; a clear error when it is not one."""
    path = Path(folder) / "model.json"
    if not path.is_file():
        raise Tag2MaskError(f"{folder} is not a train-seg output folder (no model.json)")
    return read_json(path)
