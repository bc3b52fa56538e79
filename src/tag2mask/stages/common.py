"""What every stage needs: the dataset of a split, the device, the worker's shard, the cache folder, progress."""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tag2mask.config import Config
from tag2mask.data import SegDataset, default_cache_dir, open_dataset
from tag2mask.errors import ConfigError
from tag2mask.progress import bar_options, progress  # noqa: F401 - re-exported for the stages

log = logging.getLogger("tag2mask")
T = TypeVar("T")
R = TypeVar("R")


def dataset_options(config: Config) -> dict[str, Any]:
    """Reader options implied by ``config.data`` (label source) for ``open_dataset``."""
    data = config.data
    if data.dataset == "voc":
        if data.label_source not in ("masks", "xml"):
            raise ConfigError(f"data.label_source: VOC labels come from 'masks' or 'xml', not {data.label_source!r}")
        return {"label_source": data.label_source, "cache_dir": cache_dir(config)}
    if data.dataset == "coco":
        return {"source": "instances" if data.label_source == "instances" else "png", "cache_dir": cache_dir(config)}
    return {}


def open_split(config: Config, split: str) -> SegDataset:
    """The dataset split named ``split`` as ``config.data`` describes it. With ``data.on_error=skip`` the samples
    that fail the data check (:mod:`tag2mask.data.check`: undecodable image, bad mask) are left out, the same ones
    in every stage."""
    data = config.data
    dataset = open_dataset(data.dataset, data.root, split, on_error=data.on_error, **dataset_options(config))
    if data.on_error == "skip":
        check_data(config, dataset)
    return dataset


def check_data(config: Config, dataset: SegDataset) -> SegDataset:
    """The data check of ``dataset`` (:mod:`tag2mask.data.check`) with ``data.on_error``, cached in the run's cache
    folder, with a progress bar when there are many files to check."""
    from tag2mask.data.check import apply_check

    bar = lambda items, n: progress(items, n, f"checking {dataset.split}", enabled=n > 50)  # noqa: E731
    return apply_check(dataset, config.data.on_error, cache_dir(config), bar)


def cache_dir(config: Config) -> Path:
    """``runtime.cache_dir`` if set, else ``$TAG2MASK_CACHE``, else ``~/.cache/tag2mask``."""
    return Path(config.runtime.cache_dir).expanduser() if config.runtime.cache_dir else default_cache_dir()


def runtime_device(config: Config) -> str:
    """The device of ``config.runtime.device`` (:func:`resolve_device`), with ``runtime.deterministic`` applied:
    deterministic algorithms (warn-only, so an operation without a deterministic kernel warns instead of failing)
    and no cuDNN autotuning."""
    if config.runtime.deterministic:
        import torch

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for repeatable results
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return resolve_device(config.runtime.device)


def resolve_device(name: str = "auto") -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"cpu"``; other names are checked and returned.

    Under torchrun, ``"cuda"`` (and ``"auto"`` on a GPU machine) becomes ``"cuda:<LOCAL_RANK>"``: one GPU per process.
    """
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={name!r} but no CUDA device is visible; use runtime.device=cpu")
    if os.environ.get("LOCAL_RANK") and name == "cuda":
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return name


def worker_shard(shard: str | None = None) -> tuple[int, int]:
    """This worker's ``(rank, world_size)``: from ``--shard i/n`` if given, else torchrun's ``RANK``/``WORLD_SIZE``."""
    if shard:
        try:
            i, n = (int(p) for p in shard.split("/"))
        except ValueError:
            raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}") from None
        if not 0 <= i < n:
            raise ConfigError(f"--shard {shard}: need 0 <= i < n")
        return i, n
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# -- models of a run ----------------------------------------------------------------------------------------------


def prompt_names(config: Config, task: str, class_names: tuple[str, ...] | list[str]) -> tuple[list[str], list[str]]:
    """The foreground and background prompt names of ``task`` (SPEC §2.2, §2.3).

    Foreground: ``data.fg_names`` (one per dataset class, same order), or the dataset's class names when empty.
    Background: ``data.bg_names``, or as many empty names (purely learned prompts) with ``bg_prompts: nameless``.
    """
    fg = list(config.data.fg_names) or list(class_names)
    if len(fg) != len(class_names):
        raise ConfigError(
            f"data.fg_names has {len(fg)} names but the dataset has {len(class_names)} classes; "
            "give one CLIP name per class, in the dataset's order"
        )
    bg = list(config.data.bg_names)
    if getattr(config.prompts, task).bg_prompts == "nameless":
        bg = [""] * len(bg)
    return fg, bg


def clip_fit_warning(config: Config, class_names: Sequence[str], *, image: Path | None = None) -> str | None:
    """One sentence when ``models.clip`` cannot know the names its prompts read (both tasks, foreground and
    background) or the images: the run's dataset, or the one ``image`` file (synthetic when a folder above it is a
    synthetic dataset's root), else None."""
    from tag2mask.models.vocabulary import is_synthetic_root, model_fit_warning

    names: list[str] = []
    for task in ("cls", "seg"):
        fg, bg = prompt_names(config, task, class_names)
        names += fg + bg
    if image is None:
        synthetic = is_synthetic_root(config.data.dataset, config.data.root)
    else:
        synthetic = any(is_synthetic_root("", p) for p in list(Path(image).resolve().parents)[:3])
    return model_fit_warning(config.models.clip, names, synthetic_images=synthetic)


def build_prompt_learner(clip_model: Any, config: Config, task: str, class_names: tuple[str, ...] | list[str]) -> Any:
    """The task's :class:`~tag2mask.models.prompts.PromptLearner` with its configured (seeded) initial context."""
    from tag2mask.models.prompts import PromptLearner

    p = getattr(config.prompts, task)
    fg, bg = prompt_names(config, task, class_names)
    return PromptLearner(
        clip_model, fg, bg, n_ctx=p.n_ctx, class_specific=p.class_specific, name_position=p.name_position,
        ctx_std=p.ctx_std, seed=p.seed,
    )


def context_path(run_path: Path, task: str, checkpoint: int | str = "final") -> Path:
    """Where prompt training of ``task`` saves its context at ``checkpoint`` (``"final"`` or an iteration)."""
    name = "final" if checkpoint == "final" else f"iter_{int(checkpoint):06d}"
    return Path(run_path) / f"train_{task}" / f"ctx_{name}.safetensors"


# -- stages shared by several processes ----------------------------------------------------------------------------


def join_process_group(config: Config) -> tuple[int, int]:
    """Under torchrun, join the process group (NCCL on GPUs, Gloo on CPUs) with ``runtime.process_group_timeout``;
    returns ``(rank, world_size)``."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        device = runtime_device(config)
        if device.startswith("cuda"):
            import torch

            torch.cuda.set_device(torch.device(device))  # NCCL's collectives then use this process's own GPU
        timeout = datetime.timedelta(seconds=config.runtime.process_group_timeout)  # a hang becomes an error
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timeout)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def barrier() -> None:
    """Wait for every rank (a no-op outside a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def read_ahead(items: Sequence[T], read: Callable[[T], R]) -> Iterator[tuple[T, R]]:
    """``(item, read(item))`` for each item in order, the next item read in a background thread while the caller
    works on this one (image decoding overlaps the network on a GPU). An error of ``read`` is raised when its item
    is reached, so everything before it has been handled."""
    from concurrent.futures import ThreadPoolExecutor

    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tag2mask-read") as pool:
        pending = pool.submit(read, items[0])
        for k, item in enumerate(items):
            data = pending.result()
            if k + 1 < len(items):
                pending = pool.submit(read, items[k + 1])
            yield item, data
