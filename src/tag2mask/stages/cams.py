"""The ``cams`` stage: Softmax-GradCAM of a task's trained prompts over a split, then CAA (SPEC §1.2, §3, §5.6, §6).

Per image (batch 1 by default, float32, no autocast, single scale, no flip — SPEC §1.2): each side is resized up
to the next multiple of ``cams.align`` (16) with PIL bicubic, normalised with CLIP's mean/std, and the ground-truth
image labels choose the classes. An image whose longer side exceeds ``cams.max_side`` (default 1024; never a VOC or COCO
image) goes to its aligned working size instead, which bounds the patch grid and the attention matrix; ``size``
stays the image's own, and seeding resizes the CAM to whatever size it works at. The raw CAMs are refined by CAA
when ``caa.<task>.enabled``. ``cams.images_per_batch`` > 1 sends up to that many images whose CLIP input has one
size through the network together (:func:`same_size_batches`; a GPU's speed-up): each file is the one the image
gets alone to float32 rounding, and the setting is not part of the stage hash. One ``.npz`` per image:

* ``cam``      P×h×w float32, the CAM seeding reads (after CAA when enabled, else raw)
* ``cam_raw``  P×h×w float32, the raw Softmax-GradCAM
* ``fg_cls``   P int64, the positive classes (0-based), in ``nonzero`` order
* ``size``     (H, W) of the original image
* ``logits``   G float32, all prompt logits (foreground first)
* ``att``      (h·w)×(h·w) float16, merged attention of the last 8 blocks (only with ``cams.save_att``)

Images without any positive label get no file (their seed is all background). ``--external DIR`` takes CAMs made
by another method in this format instead (``cam``, ``fg_cls``, optional ``size`` and ``att``): they are checked,
refined by CAA when the file carries ``att`` and CAA is enabled, and written in the same layout.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

from tag2mask.cam.image import aligned_size, prepare_image
from tag2mask.config import Config
from tag2mask.data.base import capped_size, image_size, working_size
from tag2mask.errors import DataError, NotBuiltError, Tag2MaskError
from tag2mask.io import file_digest, file_stamp, load_npz, save_npz
from tag2mask.progress import progress_bar
from tag2mask.stages.common import build_prompt_learner, log, open_split, read_ahead, runtime_device
from tag2mask.stages.inputs import InputLedger
from tag2mask.stages.rundir import ItemsResult, shard


def refine(cam: np.ndarray, att: np.ndarray, config: Config, task: str) -> np.ndarray:
    """CAA of one image's raw CAMs with the task's settings (SPEC §6)."""
    from tag2mask.cam import caa_refine

    c = getattr(config.caa, task)
    return caa_refine(
        cam.astype(np.float32), att.astype(np.float32), sinkhorn_iters=c.sinkhorn_iters, power=c.power,
        box_thresh=c.box_thresh, propagate=c.propagate, boxes=c.boxes, att_layers=config.cams.att_layers,
    )


def cam_one(model: Any, image: np.ndarray, fg_cls: np.ndarray, config: Config, task: str, device: str,
            text_features: Any = None) -> dict:
    """The arrays of one image's CAM file (``text_features``: the prompts' features computed once for a stage,
    see :meth:`~tag2mask.cam.GradCAMClip.forward`; default: encoded for this image)."""
    return cam_batch(model, [image], [fg_cls], config, task, device, text_features)[0]


def cam_batch(model: Any, images: list[np.ndarray], fg_cls: list[np.ndarray], config: Config, task: str,
              device: str, text_features: Any = None) -> list[dict]:
    """The arrays of each image's CAM file, images of one working size through CLIP together
    (:func:`forward_batch`); a batch of one is :func:`cam_one`."""
    import torch

    caa_on = getattr(config.caa, task).enabled
    need_att = caa_on or config.cams.save_att
    files = []
    for image, out in zip(images, forward_batch(model, images, fg_cls, config, device, need_att, text_features)):
        raw = out.cam.detach().float().cpu().numpy()
        arrays: dict[str, Any] = {"cam_raw": raw, **_common_arrays(out, image)}
        att = out.att[0].float().cpu().numpy() if need_att else None
        with torch.autocast(torch.device(device).type, enabled=False):  # CAA in float32 even under autocast
            arrays["cam"] = refine(raw, att, config, task) if caa_on else raw
        if config.cams.save_att:
            arrays["att"] = att.astype(np.float16)
        files.append(arrays)
    return files


def clip_es_cam_batch(model: Any, images: list[np.ndarray], fg_cls: list[np.ndarray], config: Config, device: str,
                      text_features: Any) -> list[dict]:
    """The arrays of each image's training-free CAM file (``pipeline: clip_es``): ``cam`` is CLIP-ES's refined CAM
    on the patch grid (:func:`~tag2mask.cam.clip_es.clip_es_refine`), ``cam_raw`` its Softmax-GradCAM; ``model``
    has every class's fixed prompt (the softmax runs over the image's tagged classes and the background names
    only, as in CLIP-ES)."""
    import torch

    from tag2mask.cam.clip_es import clip_es_refine

    e = config.clip_es
    files = []
    for image, out in zip(images, forward_batch(model, images, fg_cls, config, device, True, text_features)):
        with torch.autocast(torch.device(device).type, enabled=False):
            arrays = clip_es_refine(out, box_thresh=e.box_thresh, boxes=e.boxes, sinkhorn_iters=e.sinkhorn_iters,
                                    power=e.power)
        files.append({"cam": arrays["cam_refined"], "cam_raw": arrays["cam_raw"], **_common_arrays(out, image)})
    return files


def forward_batch(model: Any, images: list[np.ndarray], fg_cls: list[np.ndarray], config: Config, device: str,
                  need_attention: bool, text_features: Any) -> list[Any]:
    """One :class:`~tag2mask.cam.gradcam.CamOutput` per image (:meth:`~tag2mask.cam.gradcam.CamOutput.image`).

    The images are prepared one by one (SPEC §1.2) and those whose CLIP input has the same size go through the
    network as one batch; the rest in batches of their own sizes. Images do not interact in the network, so each
    output equals that image run alone to float32 rounding (the batched matrix products add in another order).
    """
    import torch

    inputs = [prepare_image(image, config.cams.align, config.cams.max_side) for image in images]
    outputs: list[Any] = [None] * len(images)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for n, x in enumerate(inputs):
        by_size.setdefault(tuple(x.shape), []).append(n)
    for members in by_size.values():
        x = torch.cat([inputs[n] for n in members]).to(device)
        labels = torch.zeros(len(members), model.num_fg, device=device)
        for row, n in enumerate(members):
            labels[row, torch.as_tensor(fg_cls[n], dtype=torch.long, device=device)] = 1.0
        out = model(x, labels, need_attention=need_attention, text_features=text_features)
        for row, n in enumerate(members):
            outputs[n] = out.image(row)
    return outputs


def _common_arrays(out: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    """What every CAM file holds besides its maps: the positive classes, the photo's size, the prompt logits."""
    return {
        "fg_cls": out.pairs[:, 1].cpu().numpy().astype(np.int64),
        "size": np.asarray(image.shape[:2], np.int64),
        "logits": out.logits[0].detach().float().cpu().numpy(),
    }


def load_cam_file(path: Path) -> dict[str, np.ndarray]:
    """Read and check one CAM file (ours or external): ``cam`` P×h×w, ``fg_cls`` P, optional ``size``/``att``."""
    try:
        arrays = load_npz(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz CAM file ({e.__class__.__name__}: {e})") from None
    if "cam" not in arrays or "fg_cls" not in arrays:
        raise DataError(f"{path}: a CAM file needs the arrays 'cam' (P×h×w) and 'fg_cls' (P); has {sorted(arrays)}")
    cam, fg = arrays["cam"], np.asarray(arrays["fg_cls"]).reshape(-1)
    if cam.ndim != 3 or cam.shape[0] != fg.shape[0]:
        raise DataError(f"{path}: 'cam' must be P×h×w with P = len(fg_cls) = {fg.shape[0]}, got {cam.shape}")
    arrays["cam"], arrays["fg_cls"] = cam.astype(np.float32), fg.astype(np.int64)
    return arrays


def run_cams(
    config: Config,
    task: str,
    split: str,
    out_dir: Path,
    *,
    context: Path | None = None,
    external: Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    limit: int | None = None,
    show_progress: bool = True,
) -> ItemsResult:
    """Compute (or import) the CAMs of ``split`` for ``task`` into ``out_dir``; finished images are skipped."""
    if config.cams.scales != [1.0] or config.cams.flip:
        raise NotBuiltError("multi-scale or flipped CAM inference is not built yet; use cams.scales=[1.0] cams.flip=false")
    dataset = open_split(config, split)
    ids = [i for i in (dataset.ids[:limit] if limit else dataset.ids) if dataset[i].labels]
    out_dir.mkdir(parents=True, exist_ok=True)

    def output(image_id: str) -> Path:
        return out_dir / f"{image_id}.npz"

    ledger = InputLedger(out_dir, _inputs(dataset, context, external, config.cams.max_side))
    todo = ledger.pending(shard(ids, rank, world_size), output)
    t0 = time.perf_counter()
    if todo:
        if external is not None:
            step, batches, read = _importer(config, task, Path(external), dataset), [[i] for i in todo], _ids
        else:
            step, batches = _computer(config, task, dataset, context), same_size_batches(todo, dataset, config.cams)
            read = functools.partial(_read, dataset)
        with progress_bar(len(todo), f"cams {task} {split}", show_progress and rank == 0) as bar:
            for batch, data in read_ahead(batches, read):  # the next batch's images decoded meanwhile
                for image_id, arrays in zip(batch, step(data)):
                    output(image_id).parent.mkdir(parents=True, exist_ok=True)
                    save_npz(output(image_id), **arrays)
                    ledger.record(image_id)
                    bar.update(1)
    done = ledger.done(ids, output)
    return ItemsResult(out_dir, done, len(ids), len(todo), time.perf_counter() - t0)


def _inputs(dataset: Any, context: Path | None, external: Path | None, max_side: int):  # -> Callable[[str], list]
    """What one image's CAM file is made from (:mod:`tag2mask.stages.inputs`): the image and its tags, and the
    content of the prompt weights and the working size (for an image larger than ``max_side``), or the imported
    file."""
    if external is not None:
        return lambda image_id: [dataset.sample_stamp(image_id), file_stamp(Path(external) / f"{image_id}.npz")]
    weights = file_digest(context) if context is not None and Path(context).is_file() else None

    def inputs(image_id: str) -> list:
        read = [dataset.sample_stamp(image_id), weights]
        working = capped_size(dataset[image_id].image_path, max_side)  # for an image larger than cams.max_side
        return read if working is None else [*read, working]

    return inputs


def _computer(config: Config, task: str, dataset: Any, context: Path | None):
    import torch

    from tag2mask.cam import GradCAMClip
    from tag2mask.models.clip import load_clip

    if task == "clip_es":
        return _clip_es_computer(config, dataset)
    if context is None or not Path(context).is_file():
        raise Tag2MaskError(
            f"prompt weights for the {task} task not found ({context}); train them with "
            f"'tag2mask train --task {task} --run RUN' or pass --weights FILE"
        )
    device = runtime_device(config)
    clip = load_clip(config.models.clip, device=device, arch=config.models.clip_arch)
    learner = build_prompt_learner(clip, config, task, dataset.class_names).to(device)
    learner.load_context(context)
    model = GradCAMClip(clip, learner, softmax=config.cams.softmax, att_layers=config.cams.att_layers).eval()
    log.info("cams: %s task, prompt weights %s, device %s", task, context, device)
    with torch.no_grad():  # the prompts are fixed here: their text features are the same for every image
        text_features = model.text_features()

    def step(data: tuple[list[np.ndarray], list[np.ndarray]]) -> list[dict]:
        images, fg = data
        return cam_batch(model, images, fg, config, task, device, text_features)

    return step


def _clip_es_computer(config: Config, dataset: Any):
    """The training-free CAMs: every class's fixed prompt encoded once, then the images (one at a time, or in
    batches of one size with ``cams.images_per_batch``)."""
    from tag2mask.cam.clip_es import clip_es_model, clip_es_text_features
    from tag2mask.models.clip import load_clip

    device = runtime_device(config)
    clip = load_clip(config.models.clip, device=device, arch=config.models.clip_arch)
    fg = list(config.data.fg_names) or list(dataset.class_names)
    e = config.clip_es
    text_features = clip_es_text_features(clip, [*fg, *config.data.bg_names], e.templates)
    model = clip_es_model(clip, len(fg), e.pos_embed_f16, config.cams.att_layers)
    log.info("cams: training-free (CLIP-ES), %d templates, device %s", len(e.templates), device)

    def step(data: tuple[list[np.ndarray], list[np.ndarray]]) -> list[dict]:
        images, fg = data
        return clip_es_cam_batch(model, images, fg, config, device, text_features)

    return step


def _read(dataset: Any, batch: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The images of ``batch`` and their positive classes."""
    return [dataset.load_image(i) for i in batch], [np.asarray(dataset[i].labels, np.int64) for i in batch]


def _ids(batch: list[str]) -> list[str]:
    """What an import step reads ahead: nothing (it reads each file itself)."""
    return batch


ATTENTION_BUDGET = 16 * 769**2
"""The most attention entries (images × tokens²) one batch of the CAM stage may hold: 16 VOC images (512×384 with
16-pixel patches: 769 tokens). Larger images go in smaller batches (a 1024×768 one alone needs 3073² tokens²: 1
per batch), so that a batch needs no more memory than 16 VOC images, whatever the photos."""


def same_size_batches(ids: list[str], dataset: Any, cams: Any) -> list[list[str]]:
    """``ids`` in batches of images whose CLIP input has one size (from the file headers): sizes in the order they
    first appear, each size's images in their order, at most ``cams.images_per_batch`` per batch and at most
    :data:`ATTENTION_BUDGET` attention entries. With 1 (the default), one image at a time in the given order. An
    image whose header cannot be read goes alone (reading it says why)."""
    if cams.images_per_batch <= 1:
        return [[i] for i in ids]
    groups: dict[Any, list[str]] = {}
    for image_id in ids:
        try:
            width, height = image_size(dataset[image_id].image_path)
            key: Any = aligned_size(*working_size(height, width, cams.max_side), cams.align)
        except DataError:
            key = ("unreadable", image_id)
        groups.setdefault(key, []).append(image_id)
    batches = []
    for key, members in groups.items():
        per_batch = cams.images_per_batch
        if isinstance(key[0], int):  # tokens of the ViT: one per patch (the patch is the alignment) and the class
            tokens = (key[0] // cams.align) * (key[1] // cams.align) + 1
            per_batch = max(1, min(per_batch, ATTENTION_BUDGET // tokens**2))
        batches += [members[k : k + per_batch] for k in range(0, len(members), per_batch)]
    return batches


def _importer(config: Config, task: str, folder: Path, dataset: Any):
    caa_on = getattr(config.caa, task).enabled

    def step(batch: list[str]) -> list[dict]:
        return [one(image_id) for image_id in batch]

    def one(image_id: str) -> dict:
        path = folder / f"{image_id}.npz"
        if not path.is_file():
            raise DataError(f"external CAM file {path} not found (one <id>.npz per image with 'cam' and 'fg_cls')")
        arrays = load_cam_file(path)
        expected = np.asarray(dataset[image_id].labels, np.int64)
        if not np.array_equal(np.sort(arrays["fg_cls"]), expected):
            raise DataError(f"{path}: fg_cls {arrays['fg_cls'].tolist()} differ from the image labels {expected.tolist()}")
        out = {"cam_raw": arrays["cam"], "fg_cls": arrays["fg_cls"]}
        out["size"] = np.asarray(arrays["size"] if "size" in arrays else dataset.load_image(image_id).shape[:2], np.int64)
        if caa_on and "att" in arrays:
            out["cam"] = refine(arrays["cam"], arrays["att"], config, task)
        else:
            out["cam"] = arrays["cam"]
        if "att" in arrays and config.cams.save_att:
            out["att"] = arrays["att"].astype(np.float16)
        return out

    return step
