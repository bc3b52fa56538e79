"""The ``train`` stage: prompt training of one task inside a run (SPEC §5).

``cls``: the classification-task prompts on the training split with ground-truth image labels (MCL).
``seg``: the segmentation-task prompts supervised by the run's coarse seeds (CAL), online labels per the config.
Writes ``RUN/train_<task>/`` (contexts, ``metrics.jsonl``, resume state). Under ``torchrun`` the process group is
initialised here (NCCL on GPUs, Gloo on CPUs) and every rank trains on its slice of each global batch.
"""

from __future__ import annotations

from pathlib import Path

from tag2mask.config import Config
from tag2mask.stages.common import (
    build_prompt_learner,
    context_path,
    join_process_group,
    log,
    open_split,
    runtime_device,
)
from tag2mask.prompt_training.loop import TrainResult, train_prompts


def check_batch_sizes(config: Config, n_images: int, tasks: tuple[str, ...] = ("cls", "seg")) -> None:
    """ConfigError naming the keys when a task's batch is larger than the training split (no batch would fit)."""
    from tag2mask.errors import ConfigError

    too_big = [t for t in tasks if getattr(config.train, t).batch_size > n_images]
    if too_big:
        keys = " and ".join(f"train.{t}.batch_size ({getattr(config.train, t).batch_size})" for t in too_big)
        fix = " ".join(f"train.{t}.batch_size={n_images}" for t in tasks)
        raise ConfigError(f"{keys} larger than the training split {config.data.train_split!r} ({n_images} images): "
                          f"set at most {n_images}, e.g. {fix}")


def train_stage_hash(config: Config, task: str, seeds_dir: Path | None = None, run_path: Path | None = None) -> str:
    """The hash of ``task``'s prompt training: its settings (:func:`tag2mask.stages.graph.stage_hashes`) and the data it
    reads (:func:`tag2mask.stages.inputs.data_fingerprint`): every image and its tags, and for the seg task the seed
    PNGs of ``seeds_dir`` (default: the run's coarse seeds). A changed image, tag or seed trains again."""
    from tag2mask.stages.graph import stage_hashes
    from tag2mask.stages.inputs import data_fingerprint, with_data

    dataset = open_split(config, config.data.train_split)
    seeds = _seeds_used(config, task, seeds_dir, run_path)
    files_of = (lambda item: [seeds / f"{item}.png"]) if seeds is not None else None
    return with_data(stage_hashes(config)[f"train_{task}"], data_fingerprint(dataset, files_of))


def _seeds_used(config: Config, task: str, seeds_dir: Path | None, run_path: Path | None) -> Path | None:
    """The seed folder ``task``'s loss reads, or None (the cls task, and seg losses without pixel supervision)."""
    if getattr(config.train, task).loss not in ("cal", "ce", "ce_manual", "ce_auto"):
        return None
    if seeds_dir is not None:
        return Path(seeds_dir)
    return Path(run_path) / "seeds_coarse" if run_path is not None and task == "seg" else None


def run_train(
    config: Config,
    task: str,
    run_path: Path,
    out_dir: Path,
    config_hash: str,
    *,
    seeds_dir: Path | None = None,
    max_iter: int | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train ``task``'s prompts of the run at ``run_path`` into ``out_dir`` (resuming from its saved state)."""
    from tag2mask.cam import GradCAMClip
    from tag2mask.models.clip import load_clip

    cfg = getattr(config.train, task)
    device = runtime_device(config)
    rank, world = join_process_group(config)
    dataset = open_split(config, config.data.train_split)
    check_batch_sizes(config, len(dataset), (task,))
    clip = load_clip(config.models.clip, device=device, arch=config.models.clip_arch)
    learner = build_prompt_learner(clip, config, task, dataset.class_names).to(device)
    model = GradCAMClip(clip, learner, softmax=config.cams.softmax, att_layers=config.cams.att_layers)
    seeds_dir = _seeds_used(config, task, seeds_dir, run_path)
    log.info("train %s: %d images, %s loss, %d iterations, device %s, %d rank(s)", task, len(dataset), cfg.loss,
             cfg.max_iter, device, world)
    return train_prompts(
        model, dataset, cfg, out_dir,
        context_path=lambda it: context_path(run_path, task, it), config_hash=config_hash,
        seeds_dir=seeds_dir, device=device,
        num_workers=config.runtime.num_workers, max_iter=max_iter, show_progress=show_progress and rank == 0,
        amp_dtype=config.runtime.amp_dtype,
    )
