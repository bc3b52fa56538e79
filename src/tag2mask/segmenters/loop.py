"""The stage-II training loop: a :class:`~tag2mask.segmenters.base.Segmenter` on seed label maps.

Iteration ``t`` takes the global batch :func:`tag2mask.resume.iteration_indices` gives (a fresh permutation
per epoch, seeded), augments sample ``k`` of it with ``numpy.random.default_rng([seed, t, k])`` and seeds torch
with ``(seed, t)`` before the forward pass (dropout, Mask2Former's point sampling). The whole run is therefore a
pure function of the recipe and the data, and a run resumed from its last saved state gives the same weights as
an uninterrupted one.

Per iteration: poly learning rate (``(lr·mult − min_lr)·(1 − t/T)^power + min_lr`` per parameter group, as
mmengine's ``PolyLR``), forward under float16 autocast on CUDA when ``amp``, backward through a ``GradScaler``,
optional global-norm gradient clipping, optimiser step (SGD with momentum, or AdamW). Under ``torchrun`` the
model is wrapped in ``DistributedDataParallel`` (batch norms become synchronised on CUDA, as MMSeg's SyncBN)
and each rank takes its slice of every global batch.

Files in ``out_dir``: ``metrics.jsonl`` (``iter``, ``loss``, ``lr``, ``seconds`` every ``log_every``
iterations), ``val.jsonl`` (``iter``, ``miou`` at each validation), ``checkpoints/iter_<n>.safetensors``
(weights), ``resume.safetensors`` (weights, optimiser state and, in its metadata, scaler and iteration: one file,
:mod:`tag2mask.resume`) and, at the end, ``model.safetensors``. Everything is written atomically; no pickle. Ctrl-C lets the current iteration finish, saves
the resume state there and stops (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import contextlib

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tag2mask import resume
from tag2mask.data.base import SegDataset, check_label_ids, read_mask_png
from tag2mask.errors import ConfigError, DataError, Tag2MaskError
from tag2mask.io import atomic_write
from tag2mask.resume import truncate_metrics
from tag2mask.segmenters.augment import train_sample
from tag2mask.segmenters.base import Segmenter
from tag2mask.segmenters.inference import autocast
from tag2mask.segmenters.recipes import SegmenterRecipe
from tag2mask.resume import iteration_indices

Validator = Callable[[Segmenter], float]
"""``validate(model) → mIoU %``; called on every rank (it splits the images over the ranks and sums their counts)."""


class SeedTrainSet(torch.utils.data.Dataset):
    """Training samples: key ``(index, t, k)`` → augmented ``(image, label)`` of image ``index`` (see module doc)."""

    def __init__(self, dataset: SegDataset, labels_dir: Path, recipe: SegmenterRecipe) -> None:
        self.dataset = dataset
        self.labels_dir = Path(labels_dir)
        self.recipe = recipe

    def __len__(self) -> int:
        return len(self.dataset)

    def label_path(self, index: int) -> Path:
        return self.labels_dir / f"{self.dataset[index].id}.png"

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, t, k = key
        r = self.recipe
        image = self.dataset.load_image(index)
        label = read_mask_png(self.label_path(index))
        check_label_ids(label, self.dataset.num_classes, self.label_path(index))
        if label.shape != image.shape[:2]:
            raise DataError(f"{self.label_path(index)}: label size {label.shape[::-1]} differs from its image "
                            f"{image.shape[1::-1]} ({self.dataset[index].image_path})")
        rng = np.random.default_rng([r.seed, t, k])
        x, y = train_sample(image, label, rng, crop_size=r.crop_size, base_size=r.base_size,
                            scale_range=r.scale_range, cat_max_ratio=r.cat_max_ratio, flip=r.flip,
                            photometric=r.photometric)
        return torch.from_numpy(x), torch.from_numpy(y)


def poly_lr(t: int, total: int, base_lr: float, min_lr: float, power: float) -> float:
    """mmengine ``PolyLR`` at iteration ``t`` of ``total``: ``(base − min)·(1 − t/total)^power + min``."""
    return (base_lr - min_lr) * (1.0 - min(t, total) / total) ** power + min_lr


def build_optimizer(model: Segmenter, recipe: SegmenterRecipe) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over the model's parameter groups; each group keeps its ``lr_mult``."""
    groups = model.param_groups(recipe.lr, recipe.weight_decay, recipe.backbone_lr_mult)
    for g in groups:
        g.setdefault("lr_mult", g["lr"] / recipe.lr if recipe.lr else 1.0)
        g["initial_lr"] = g["lr"]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=tuple(recipe.betas), eps=1e-8,
                             weight_decay=recipe.weight_decay)


def training_step(
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    recipe: SegmenterRecipe,
    t: int,
    total_iter: int,
    *,
    scaler: Any = None,
    device: str = "cpu",
) -> torch.Tensor:
    """One optimiser step at iteration ``t``: poly learning rate per group, loss under autocast when ``scaler`` is
    given (CUDA AMP), backward, gradient clipping when the recipe clips, step. Returns the (detached-able) loss."""
    for g in optimizer.param_groups:
        g["lr"] = poly_lr(t, total_iter, recipe.lr * g["lr_mult"], recipe.min_lr, recipe.poly_power)
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, scaler is not None):
        loss = net(images, labels)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if recipe.grad_clip > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss


# -- saving and resuming -------------------------------------------------------------------------------------------


def save_weights(path: Path, model: Segmenter) -> None:
    """The model's state dict (parameters and buffers) as safetensors, atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(path, "wb") as f:
        f.write(save(tensors))


def load_weights(path: Path, model: Segmenter) -> None:
    """Load :func:`save_weights` output into ``model`` (every tensor must match)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise DataError(f"{path} does not fit this network: {len(missing)} tensors missing, {len(unexpected)} "
                        f"unexpected, {len(wrong)} of another shape (first: {', '.join((missing + unexpected + wrong)[:3])})")
    model.load_state_dict(state)


def _save_resume(out_dir: Path, done: int, model: Segmenter, optimizer: torch.optim.Optimizer, scaler: Any,
                 recipe_hash: str, finished: bool = False) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for name, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{i}.{name}"] = value.detach().cpu().contiguous()
    resume.save_state(out_dir, tensors, {"iteration": done, "recipe_hash": recipe_hash, "finished": finished,
                                         "scaler": scaler.state_dict() if scaler is not None else None})


def _finish(out_dir: Path, model: Segmenter, optimizer: torch.optim.Optimizer, scaler: Any, total_iter: int,
            recipe_hash: str, *, keep_resume: bool) -> None:
    """Write the final weights once (``model.safetensors``), then mark the training finished in the resume state,
    which keeps no tensors unless ``keep_resume`` (the weights are the final file's)."""
    save_weights(out_dir / "model.safetensors", model)
    if keep_resume:
        _save_resume(out_dir, total_iter, model, optimizer, scaler, recipe_hash, finished=True)
    else:
        resume.save_state(out_dir, {}, {"iteration": total_iter, "recipe_hash": recipe_hash, "finished": True,
                                        "scaler": None})


def _load_resume(out_dir: Path, model: Segmenter, optimizer: torch.optim.Optimizer, scaler: Any,
                 recipe_hash: str, device: str) -> int:
    meta = resume.read_meta(out_dir)
    if meta is None:
        return 0
    resume.check_matches(out_dir, meta, "recipe_hash", recipe_hash)
    final = out_dir / "model.safetensors"
    if meta.get("finished") and final.is_file():  # nothing left to train: the final weights are the state
        load_weights(final, model)
        return int(meta["iteration"])
    tensors = resume.load_tensors(out_dir)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if not weights:
        raise Tag2MaskError(f"resume state {out_dir / resume.FILE} holds no weights: delete it to train afresh")
    model.load_state_dict(weights)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        prefix = f"optim.{i}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            optimizer.state[p] = {k: (v.to(device) if k != "step" else v) for k, v in state.items()}
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return int(meta["iteration"])


# -- the loop ------------------------------------------------------------------------------------------------------


class _DeferredInterrupt:
    """While training, a first Ctrl-C only sets :attr:`requested` (the loop stops after the current iteration, whose
    state is then consistent); a second one interrupts at once. Only in the main thread; restores the old handler."""

    def __init__(self) -> None:
        import signal
        import threading

        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def last_logged_loss(metrics: Path) -> float:
    """The loss of the last row of ``metrics.jsonl`` (the mean over its ``log_every`` iterations), NaN if none."""
    if not metrics.is_file():
        return float("nan")
    for line in reversed(metrics.read_text(encoding="utf-8").splitlines()):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return float(json.loads(line)["loss"])
    return float("nan")


@dataclass
class SegTrainResult:
    iterations: int
    resumed_from: int
    seconds: float
    final_weights: Path | None
    last_loss: float
    """Mean loss of the last logged window (``log_every`` iterations): the last row of ``metrics.jsonl``."""
    val: list[dict[str, float]] = field(default_factory=list)


def train_segmenter(
    model: Segmenter,
    data: SeedTrainSet,
    recipe: SegmenterRecipe,
    out_dir: Path,
    *,
    total_iter: int,
    recipe_hash: str,
    device: str = "cpu",
    validate: Validator | None = None,
    stop_at: int | None = None,
    num_workers: int = 0,
    show_progress: bool = True,
) -> SegTrainResult:
    """Train ``model`` for ``total_iter`` iterations (the schedule's length); see the module doc.

    ``stop_at`` ends early after that many iterations (the state is saved, the schedule still follows
    ``total_iter``), which is how tests interrupt a run. ``validate(model) → mIoU %`` runs on every rank every
    ``recipe.val_every`` iterations and at the end.
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    if recipe.batch_size % world:
        raise ConfigError(f"batch_size {recipe.batch_size} does not split over {world} ranks")
    per_rank = recipe.batch_size // world
    if per_rank < 2 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(f"batch_size {recipe.batch_size} leaves {per_rank} image per rank: the network's batch "
                          "norms need at least 2")
    model.to(device)
    optimizer = build_optimizer(model, recipe)
    use_amp = recipe.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        resume.remove_orphans(out_dir)  # temporary files of a killed run
    start = _load_resume(out_dir, model, optimizer, scaler, recipe_hash, device)
    metrics, val_log = out_dir / "metrics.jsonl", out_dir / "val.jsonl"
    if rank == 0:
        truncate_metrics(metrics, start)
        truncate_metrics(val_log, start)
    stop = min(total_iter, stop_at if stop_at is not None else total_iter)
    if len(data) < recipe.batch_size:
        raise ConfigError(f"batch_size {recipe.batch_size} (a train-seg recipe key) is larger than the training "
                          f"split ({len(data)} images): pass batch_size={len(data)} or less to tag2mask train-seg")

    def batches() -> Iterator[list[tuple[int, int, int]]]:
        for t in range(start, stop):
            idx = iteration_indices(t, len(data), recipe.batch_size, recipe.seed)
            lo = rank * per_rank
            yield [(int(idx[k]), t, k) for k in range(lo, lo + per_rank)]

    loader = torch.utils.data.DataLoader(data, batch_sampler=batches(), num_workers=num_workers,
                                         pin_memory=device.startswith("cuda"))
    net: torch.nn.Module = model
    if world > 1:
        if device.startswith("cuda"):
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=_ddp_device_ids(device), find_unused_parameters=recipe.net == "mask2former")

    from tqdm import tqdm

    from tag2mask.progress import bar_options

    bar = tqdm(total=stop - start, desc=f"train {recipe.net}", unit="it", disable=not show_progress or rank != 0,
               **bar_options())
    t0 = time.perf_counter()
    last, window = last_logged_loss(metrics), []
    val_rows: list[dict[str, float]] = []
    model.train()
    it = iter(loader)
    completed = start  # iterations whose optimiser step has finished
    interrupt = _DeferredInterrupt()
    try:
        for t in range(start, stop):
            lr = poly_lr(t, total_iter, recipe.lr, recipe.min_lr, recipe.poly_power)
            images, labels = (x.to(device, non_blocking=True) for x in next(it))
            torch.manual_seed(recipe.seed * 1_000_003 + t)
            loss = training_step(net, images, labels, optimizer, recipe, t, total_iter, scaler=scaler,
                                 device=device)
            completed = t + 1
            value = float(loss.detach())
            if world > 1:  # the mean loss, and whether any rank got a Ctrl-C: then all stop after this iteration
                v = torch.tensor([value, float(interrupt.requested)], dtype=torch.float64, device=device)
                dist.all_reduce(v)
                value = float(v[0]) / world
                interrupt.requested = bool(v[1] > 0)
            window.append(value)
            done = t + 1
            if done % recipe.log_every == 0 or done == stop:
                last = float(np.mean(window))  # the "last loss": the last row of metrics.jsonl, on every rank
                if rank == 0:
                    with open(metrics, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"iter": t, "loss": last, "lr": lr,
                                            "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
                window = []
            # the last iteration's weights are model.safetensors (written after the loop), kept once
            checkpoint = done % recipe.checkpoint_every == 0 and done != total_iter
            if validate is not None and recipe.val_every and (done % recipe.val_every == 0 or done == total_iter):
                model.eval()
                miou = float(validate(model))
                model.train()
                val_rows.append({"iter": t, "miou": miou})
                if rank == 0:
                    with open(val_log, "a", encoding="utf-8") as f:
                        f.write(json.dumps(val_rows[-1]) + "\n")
                    bar.write(f"iteration {done}: validation mIoU {miou:.1f}")
            save_state = checkpoint or (done == stop and done != total_iter)
            if rank == 0 and save_state:
                if checkpoint:
                    save_weights(out_dir / "checkpoints" / f"iter_{done}.safetensors", model)
                _save_resume(out_dir, done, model, optimizer, scaler, recipe_hash)
            if world > 1 and save_state:
                dist.barrier()
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4g}", lr=f"{lr:.2g}")
            if interrupt.requested:  # Ctrl-C during this iteration: it has finished, stop cleanly after it
                raise KeyboardInterrupt
    except KeyboardInterrupt:  # keep what is done, so that the same command resumes right here
        if rank == 0 and completed > start:
            _save_resume(out_dir, completed, model, optimizer, scaler, recipe_hash)
        raise
    finally:
        interrupt.restore()
    bar.close()
    final = out_dir / "model.safetensors"
    if stop == total_iter:
        if rank == 0 and (start < total_iter or not final.is_file()):
            _finish(out_dir, model, optimizer, scaler, total_iter, recipe_hash, keep_resume=recipe.keep_resume)
        if world > 1:
            dist.barrier()
        return SegTrainResult(stop, start, time.perf_counter() - t0, final, last, val_rows)
    return SegTrainResult(stop, start, time.perf_counter() - t0, None, last, val_rows)


def _ddp_device_ids(device: str) -> list[int] | None:
    """DistributedDataParallel's ``device_ids``: this process's GPU (``cuda:N``, or the current one for a bare
    ``cuda``, e.g. when a launcher sets no LOCAL_RANK), None on the CPU."""
    if not device.startswith("cuda"):
        return None
    index = torch.device(device).index
    return [index if index is not None else torch.cuda.current_device()]
