"""Prompt training (SPEC §5): the classification task (MCL on ground-truth image labels) or the segmentation task
(CAL on coarse seeds, through Softmax-GradCAM with second-order gradients).

Reproducibility. The images of iteration ``t`` are the ``t``-th slice of a per-epoch permutation drawn from
``numpy.random.default_rng([seed, epoch])`` (``drop_last``), and the augmentation of the ``k``-th image of the
iteration draws from ``default_rng([seed, t, k])``. Nothing depends on worker processes, on how the batch is split
into accumulation steps or across ranks, or on where a run was resumed: an interrupted and resumed run ends with
the same context as an uninterrupted one, and ``R`` ranks with batch ``B/R`` each match one process with ``B``.

Losses are normalised over the whole global batch (each rank's loss is weighted by its share of the loss's own
normaliser — positive pairs for MCL, labelled pixels for CAL — and gradients are summed over ranks), which is what
makes the multi-process run equal the single-process one. Accumulation steps (``sub_iter``) average their
sub-batch losses, as the reference does.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tag2mask.config import TrainTaskConfig
from tag2mask.cam.image import clip_normalise
from tag2mask.prompt_training.augment import augment, online_labels
from tag2mask.errors import ConfigError, Tag2MaskError
from tag2mask import amp, resume
from tag2mask.prompt_training.losses import (
    IGNORE_INDEX,
    ScaledBCE,
    ScaledSigmoidPixelCE,
    bce_loss,
    cam_activation_loss,
    multilabel_contrastive_loss,
    sigmoid_pixel_ce_loss,
)
from tag2mask.prompt_training.schedule import learning_rate
from tag2mask.io import read_label_png

PIXEL_LOSSES = ("cal", "ce", "ce_manual", "ce_auto")


# -- data ----------------------------------------------------------------------------------------------------------


class PromptTrainData(torch.utils.data.Dataset):
    """Augmented training samples keyed by ``(dataset index, iteration, position in the global batch)``."""

    def __init__(self, dataset: Any, cfg: TrainTaskConfig, seeds_dir: Path | None, need_label_map: bool) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self.seeds_dir = seeds_dir
        self.need_label_map = need_label_map

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index, t, k = key
        cfg, a = self.cfg, self.cfg.augment
        rng = np.random.default_rng([cfg.seed, t, k])
        image = self.dataset.load_image(index)
        label = None
        if self.need_label_map:
            image_id = self.dataset.ids[index]
            path = Path(self.seeds_dir) / f"{image_id}.png"
            if not path.is_file():
                raise Tag2MaskError(f"seed {path} not found; make the coarse seeds first ('tag2mask seeds --task cls')")
            label = read_label_png(path)
        image, label = augment(
            image, label, rng, color_jitter=a.color_jitter, scale_low=a.scale_low, scale_high=a.scale_high,
            short_thresh=a.short_thresh, crop_size=a.crop_size, flip_p=a.flip_p,
        )
        if cfg.online_labels and label is not None:
            fg = online_labels(label, self.dataset.num_classes)
        else:
            fg = self.dataset.label_vector(index)
        lab = torch.from_numpy(label.astype(np.int64)) if label is not None else torch.zeros(0, dtype=torch.int64)
        return clip_normalise(image), lab, torch.from_numpy(np.asarray(fg, np.float32))


# -- losses --------------------------------------------------------------------------------------------------------


def build_loss_module(cfg: TrainTaskConfig) -> nn.Module | None:
    """The learnable/scaled loss module of the ablation losses (App. Table S5), or None for the plain ones."""
    if cfg.loss in ("bce_manual", "bce_auto"):
        return ScaledBCE(cfg.loss_scale, cfg.loss_bias, learnable=cfg.loss == "bce_auto")
    if cfg.loss in ("ce_manual", "ce_auto"):
        return ScaledSigmoidPixelCE(cfg.loss_scale, cfg.loss_bias, learnable=cfg.loss == "ce_auto")
    return None


def loss_and_weight(
    cfg: TrainTaskConfig, module: nn.Module | None, out: Any, fg: torch.Tensor, label_map: torch.Tensor
) -> tuple[torch.Tensor, float, dict[str, float]]:
    """The task loss of one (sub-)batch and its normaliser (how many terms it averages over)."""
    loss_type = cfg.loss
    if loss_type == "mcl":
        loss = multilabel_contrastive_loss(out.fg_logits.float(), fg)
        valid = (fg.sum(1) > 0) & ((1 - fg).sum(1) > 0)
        return loss, float(fg[valid].sum()), {"mcl": float(loss.detach())}
    if loss_type in ("bce", "bce_manual", "bce_auto"):
        loss = bce_loss(out.fg_logits.float(), fg) if module is None else module(out.fg_logits.float(), fg)
        return loss, float(fg.numel()), {loss_type: float(loss.detach())}
    positives = fg.nonzero()
    valid_pixels = (label_map != IGNORE_INDEX).flatten(1).sum(1).float()
    weight = float(valid_pixels[positives[:, 0]].sum()) if len(positives) else 0.0
    if loss_type == "cal":
        fg_loss, bg_loss = cam_activation_loss(out.cam.float(), fg, label_map)
        return fg_loss + bg_loss, weight, {"cal_fg": float(fg_loss.detach()), "cal_bg": float(bg_loss.detach())}
    loss = (sigmoid_pixel_ce_loss(out.cam.float(), fg, label_map) if module is None
            else module(out.cam.float(), fg, label_map))
    return loss, weight, {loss_type: float(loss.detach())}


def _all_reduce_gradients(params: list[nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, with the same collectives on every rank whatever its data:
    a rank whose sub-batches had nothing to learn from (no positive pair: its gradients are None) sends zeros.
    A parameter no rank has a gradient for keeps ``grad = None``, as in one process (the optimiser skips it)."""
    had = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(had)
    for p, any_rank in zip(params, had.tolist()):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        if any_rank == 0:
            p.grad = None


# -- state -------------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    iterations: int
    resumed_from: int
    seconds: float
    final_context: Path
    last_loss: float


def _save_resume(out_dir: Path, t: int, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                 scaler: Any, config_hash: str) -> None:
    tensors = {f"param_{i}": p.detach().cpu().contiguous() for i, p in enumerate(params)}
    for i, p in enumerate(params):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum_{i}"] = buf.detach().cpu().contiguous()
    resume.save_state(out_dir, tensors, {"iteration": t, "config_hash": config_hash,
                                         "scaler": scaler.state_dict() if scaler is not None else None})


def _load_resume(out_dir: Path, params: list[nn.Parameter], optimizer: torch.optim.Optimizer, scaler: Any,
                 config_hash: str) -> int:
    meta = resume.read_meta(out_dir)
    if meta is None:
        return 0
    resume.check_matches(out_dir, meta, "config_hash", config_hash)
    tensors = resume.load_tensors(out_dir)
    missing = [f"param_{i}" for i in range(len(params)) if f"param_{i}" not in tensors]
    if missing:
        raise Tag2MaskError(f"resume state {out_dir / resume.FILE} lacks {missing[0]}: delete it to train afresh")
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"param_{i}"].to(p))
            if f"momentum_{i}" in tensors:
                optimizer.state[p]["momentum_buffer"] = tensors[f"momentum_{i}"].to(p)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return int(meta["iteration"])


def checkpoint_iterations(cfg: TrainTaskConfig) -> set[int]:
    """Iterations (1-based counts) after which the context is saved: every ``max(max_iter // 10, 1000)`` (SPEC §5.1),
    the configured checkpoint, and the last one."""
    step = max(cfg.max_iter // 10, 1000)
    out = set(range(step, cfg.max_iter + 1, step)) | {cfg.max_iter}
    if cfg.checkpoint != "final":
        out.add(int(cfg.checkpoint))
    return out


# -- the loop ------------------------------------------------------------------------------------------------------


def train_prompts(
    model: nn.Module,
    dataset: Any,
    cfg: TrainTaskConfig,
    out_dir: Path,
    *,
    context_path: Callable[[int | str], Path],
    config_hash: str,
    seeds_dir: Path | None = None,
    device: str = "cpu",
    num_workers: int = 0,
    max_iter: int | None = None,
    show_progress: bool = True,
    amp_dtype: str = "bfloat16",
) -> TrainResult:
    """Train ``model.prompt_learner.ctx`` (a :class:`~tag2mask.cam.GradCAMClip`) on ``dataset`` with ``cfg``.

    Writes into ``out_dir``: ``metrics.jsonl`` (one line per iteration), ``resume.safetensors`` (:mod:`tag2mask.resume`)
    every ``cfg.resume_every`` iterations, and the contexts at :func:`checkpoint_iterations` through
    ``context_path(iteration)`` and ``context_path("final")``. ``max_iter`` stops early (for tests and
    interruption); the schedule still follows ``cfg.max_iter``. Under ``torchrun`` each rank takes its slice of
    every global batch and the gradients are summed over ranks.
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    micro = cfg.batch_size // cfg.sub_iter
    if micro % world:
        raise ConfigError(f"the sub-batch of {micro} images does not split over {world} ranks")
    per_rank = micro // world
    needs_cam = cfg.loss in PIXEL_LOSSES
    data = PromptTrainData(dataset, cfg, seeds_dir, need_label_map=needs_cam)

    module = build_loss_module(cfg)
    ctx = model.prompt_learner.ctx
    params = [ctx]
    groups: list[dict[str, Any]] = [{"params": [ctx], "weight_decay": cfg.weight_decay}]
    if module is not None:
        module.to(device)
        extra = module.param_groups(cfg.lr)
        groups += extra
        params += [p for g in extra for p in g["params"]]
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and str(device).startswith("cuda")  # mixed precision on GPUs; float32 on the CPU
    half = amp.amp_dtype(amp_dtype, device)
    scaler = amp.grad_scaler(device, half, use_amp, init_scale=2.0**16)  # float16 only

    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        resume.remove_orphans(out_dir)  # temporary files of a killed run
    start = _load_resume(out_dir, params, optimizer, scaler, config_hash)
    metrics = out_dir / "metrics.jsonl"
    if rank == 0:
        resume.truncate_metrics(metrics, start)
    stop = min(cfg.max_iter, max_iter if max_iter is not None else cfg.max_iter)
    saves = checkpoint_iterations(cfg)

    def batches():
        for t in range(start, stop):
            idx = resume.iteration_indices(t, len(dataset), cfg.batch_size, cfg.seed)
            for j in range(cfg.sub_iter):
                lo = j * micro + rank * per_rank
                yield [(int(idx[k]), t, k) for k in range(lo, lo + per_rank)]

    loader = torch.utils.data.DataLoader(data, batch_sampler=batches(), num_workers=num_workers)
    from tqdm import tqdm

    from tag2mask.progress import bar_options

    bar = tqdm(total=stop - start, desc=f"train {cfg.loss}", unit="it", disable=not show_progress or rank != 0,
               **bar_options())
    t0 = time.perf_counter()
    last = float("nan")
    it = iter(loader)
    for t in range(start, stop):
        lr = learning_rate(t, cfg.lr, cfg.max_iter, cfg.warmup_iter, cfg.warmup_lr, cfg.warmup_mode)
        for g in optimizer.param_groups:
            g["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        total = 0.0
        for _ in range(cfg.sub_iter):
            images, label_map, fg = (x.to(device) for x in next(it))
            with amp.autocast(device, half, use_amp):  # the CAM gradient itself stays float32 (cam.gradcam)
                out = model(images, fg, create_graph=needs_cam, compute_cam=needs_cam)
            loss, weight, parts = loss_and_weight(cfg, module, out, fg, label_map)
            share = 1.0
            if world > 1:
                w = torch.tensor([weight], dtype=torch.float64, device=device)
                dist.all_reduce(w)
                share = weight / float(w) if float(w) > 0 else 1.0 / world
            scaled = loss * (share / cfg.sub_iter)
            if scaled.requires_grad:  # a sub-batch without any positive pair has nothing to learn from
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            total += float(loss.detach()) * share / cfg.sub_iter
            for k, v in parts.items():
                logs[k] = logs.get(k, 0.0) + v / cfg.sub_iter
        if world > 1:
            _all_reduce_gradients(params)
            t_total = torch.tensor([total], dtype=torch.float64, device=device)
            dist.all_reduce(t_total)
            total = float(t_total)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        last = total
        done = t + 1
        if rank == 0:
            with open(metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps({"iter": t, "lr": lr, "loss": total, **logs,
                                    "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
            if done in saves:
                model.prompt_learner.save_context(context_path(done))
            if done % cfg.resume_every == 0 or done == stop:
                _save_resume(out_dir, done, params, optimizer, scaler, config_hash)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4g}", lr=f"{lr:.2g}")
    bar.close()
    final = context_path("final")
    if rank == 0 and stop == cfg.max_iter:
        model.prompt_learner.save_context(final)
    return TrainResult(stop, start, time.perf_counter() - t0, final, last)
