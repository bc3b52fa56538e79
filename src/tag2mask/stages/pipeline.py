"""``tag2mask run``: the whole coarse-to-fine pipeline in one run folder (SPEC §0).

quasi-superpixels → classification-task training → CAMs + CAA → coarse seeds → segmentation-task training →
CAMs + CAA → fine seeds → evaluation (when the split has ground truth).

Training-free (``pipeline: clip_es``, presets ``*-clip-es``): quasi-superpixels (when the seeds are SAMS's) →
CLIP-ES's CAMs with fixed prompts → seeds (SAMS on them, or CLIP-ES's own argmax) → evaluation.

Each stage is skipped when the manifest says it finished under the same config hash; a stage that was interrupted
resumes where it stopped (per image, or from the training resume state). Under ``torchrun`` every per-image stage
shards its images over the ranks and prompt training runs data-parallel; rank 0 keeps the books.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tag2mask.config import Config
from tag2mask.stages.graph import stage_hashes
from tag2mask.errors import Tag2MaskError
from tag2mask.io import write_json
from tag2mask.lock import holding
from tag2mask.stages.common import (
    barrier,
    check_data,
    clip_fit_warning,
    context_path,
    join_process_group,
    open_split,
    runtime_device,
)
from tag2mask.stages.lifecycle import Work, item_counts, run_stage
from tag2mask.stages.rundir import RunDir

STEPS = ("superpixels", "train_cls", "cams_cls", "seeds_coarse", "train_seg", "cams_seg", "seeds_fine", "evaluate")
STEPS_TRAINING_FREE = ("superpixels", "cams_clip_es", "seeds_clip_es", "evaluate")  # pipeline: clip_es


def steps_of(config: Config) -> tuple[str, ...]:
    """The stages ``tag2mask run`` goes through for ``config.pipeline``."""
    return STEPS_TRAINING_FREE if config.pipeline == "clip_es" else STEPS


TRAINING_FREE_SEEDS = {"sams": "CLIP-ES + SAMS", "argmax": "CLIP-ES argmax", "crf": "CLIP-ES + dense CRF"}
"""What the training-free seeds are called, by ``seeds.coarse.method``."""


def final_seeds(config: Config) -> str:
    """The stage folder of the run's final seeds (what stage II trains on by default)."""
    return "seeds_clip_es" if config.pipeline == "clip_es" else "seeds_fine"


def needs_superpixels(config: Config) -> bool:
    """Whether any seed stage of the pipeline seeds by SAMS (and so reads quasi-superpixels)."""
    if config.pipeline == "clip_es":
        return config.seeds.coarse.method == "sams"
    return "sams" in (config.seeds.coarse.method, config.seeds.fine.method)


@dataclass
class PipelineResult:
    run: Path
    seconds: dict[str, float] = field(default_factory=dict)  # this call's time per stage (0 when skipped)
    skipped: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def run_pipeline(
    config: Config,
    run_dir: Path,
    *,
    say: Callable[[str], None] = print,
    show_progress: bool = True,
    limit: int | None = None,
) -> PipelineResult:
    """Run (or resume) every stage of the pipeline in ``run_dir``; returns per-stage times and the metrics.

    The run directory is locked for the whole call (:mod:`tag2mask.lock`): a second command on it stops at once."""
    device = runtime_device(config)
    rank, world = join_process_group(config)
    skipped = preflight(config, limit=limit)  # before the run folder is made: bad settings leave nothing behind
    with holding(run_dir, "run directory", rank=rank):
        return _run_stages(config, run_dir, device, rank, world, say, show_progress, limit, skipped)


def _run_stages(config: Config, run_dir: Path, device: str, rank: int, world: int, say: Callable[[str], None],
                show_progress: bool, limit: int | None, skipped: list[tuple[str, str]]) -> PipelineResult:
    from tag2mask.stages.cams import run_cams
    from tag2mask.stages.seeds import run_seeds
    from tag2mask.stages.superpixels import run_superpixels, superpixels_dir
    from tag2mask.stages.train import run_train, train_stage_hash

    lead = rank == 0
    run = RunDir.create(run_dir, config) if lead else RunDir(run_dir)
    barrier()
    hashes = stage_hashes(config)
    split = config.data.train_split
    result = PipelineResult(run.path)
    out = say if lead else (lambda _msg: None)

    def step(number: int, name: str, inputs: dict[str, Any], work: Work, key: str | None = None) -> None:
        """Run one stage under ``key`` (default: its config hash) with the books of :func:`run_stage`."""
        label = f"[{number}/{len(steps_of(config))}] {name}"
        outcome = run_stage(run, name, key or hashes[name], inputs, work, rank=rank, world=world,
                            per_image=not name.startswith("train_"))
        result.seconds[name] = outcome.seconds
        if outcome.skipped:
            result.skipped.append(name)
        elif not outcome.complete:
            raise Tag2MaskError(f"{name} did not finish ({outcome.counts}); run the same command again to resume")
        out(f"{label}: {outcome.summary()}")

    def common(quiet: bool) -> dict[str, Any]:
        return {"rank": rank, "world_size": world, "limit": limit, "show_progress": show_progress and lead and not quiet}

    def superpixels(_folder: Path | None, quiet: bool) -> tuple[dict[str, int], bool]:
        return item_counts(run_superpixels(config, split, **common(quiet)))

    def train(task: str, key: str) -> Work:
        def work(folder: Path | None, _quiet: bool) -> tuple[dict[str, int], bool]:
            r = run_train(config, task, run.path, folder, key, show_progress=show_progress and lead)
            return {"iterations": r.iterations}, r.iterations == getattr(config.train, task).max_iter

        return work

    def cams(task: str) -> Work:
        def work(folder: Path | None, quiet: bool) -> tuple[dict[str, int], bool]:
            ctx = context_path(run.path, task, getattr(config.train, task).checkpoint)
            return item_counts(run_cams(config, task, split, folder, context=ctx, **common(quiet)))

        return work

    def cams_training_free(folder: Path | None, quiet: bool) -> tuple[dict[str, int], bool]:
        return item_counts(run_cams(config, "clip_es", split, folder, **common(quiet)))

    def seeds(task: str) -> Work:
        def work(folder: Path | None, quiet: bool) -> tuple[dict[str, int], bool]:
            return item_counts(run_seeds(config, task, split, run.stage_dir(f"cams_{task}"), folder, **common(quiet)))

        return work

    out(f"tag2mask run: {run.path} (preset {config.preset}, {config.data.dataset} {split}, device {device}, "
        f"{world} worker(s))")
    warning = clip_fit_warning(config, open_split(config, split).class_names)
    if warning:
        out(warning)
    if lead:
        run.set_warnings([warning] if warning else [])
        run.set_data_check(split, skipped)
    if skipped:
        out(f"data check: {len(skipped)} bad sample(s) of {split} left out (data.on_error=skip), e.g. "
            f"{skipped[0][1]}; all listed in manifest.json and the report")
    if config.pipeline == "clip_es":
        _training_free_steps(config, step, superpixels, cams_training_free, seeds, split, out)
        if lead:
            result.metrics = evaluate_run(config, run, limit=limit, say=out)
        barrier()
        return result
    step(1, "superpixels", {"split": split, "folder": str(superpixels_dir(config, split))}, superpixels)
    key = train_stage_hash(config, "cls", run_path=run.path)
    step(2, "train_cls", {"split": split}, train("cls", key), key)
    step(3, "cams_cls", {"split": split}, cams("cls"))
    step(4, "seeds_coarse", {"split": split}, seeds("cls"))
    key = train_stage_hash(config, "seg", run_path=run.path)  # covers the coarse seeds just made
    step(5, "train_seg", {"split": split, "seeds": str(run.stage_dir("seeds_coarse"))}, train("seg", key), key)
    step(6, "cams_seg", {"split": split}, cams("seg"))
    step(7, "seeds_fine", {"split": split}, seeds("seg"))
    if lead:
        result.metrics = evaluate_run(config, run, limit=limit, say=out)
    barrier()
    return result


def _training_free_steps(config: Config, step: Callable, superpixels: Callable, cams: Callable, seeds: Callable,
                         split: str, say: Callable[[str], None]) -> None:
    """The stages of ``pipeline: clip_es`` (no prompt training): superpixels when SAMS seeds, CAMs, seeds."""
    from tag2mask.stages.superpixels import superpixels_dir

    if needs_superpixels(config):
        step(1, "superpixels", {"split": split, "folder": str(superpixels_dir(config, split))}, superpixels)
    else:
        say(f"[1/{len(STEPS_TRAINING_FREE)}] superpixels: not needed (seeds.coarse.method={config.seeds.coarse.method})")
    step(2, "cams_clip_es", {"split": split, "prompts": list(config.clip_es.templates)}, cams)
    step(3, "seeds_clip_es", {"split": split}, seeds("clip_es"))


def preflight(config: Config, *, limit: int | None = None) -> list[tuple[str, str]]:
    """What can be checked before any work, each a one-line error naming what to change: the training split
    opens and passes the data check (every image decodes, every mask fits; ``data.on_error=raise`` stops at the
    first bad sample, ``skip`` leaves them out), both prompt-training batches fit in it, the CLIP file exists,
    and so does the SAM file when SAM has quasi-superpixels left to make. Returns the samples left out, with why.
    """
    from tag2mask.models.weights import resolve_clip, resolve_weight
    from tag2mask.stages.superpixels import (CPU_SOURCES, hf_weights, import_source, superpixel_path,
                                             superpixels_dir)
    from tag2mask.stages.train import check_batch_sizes

    dataset = open_split(config, config.data.train_split)
    if config.data.on_error == "raise":  # (with skip, open_split has checked it already)
        check_data(config, dataset)
    if config.pipeline == "fma":  # the training-free pipeline trains nothing
        check_batch_sizes(config, len(dataset))
    resolve_clip(config.models.clip, config.models.clip_arch)
    if needs_superpixels(config) and config.superpixels.source not in CPU_SOURCES and import_source(config) is None:
        folder = superpixels_dir(config, config.data.train_split)
        ids = dataset.ids[:limit] if limit else dataset.ids
        if any(not Path(f"{superpixel_path(folder, i)}.json").is_file() for i in ids):
            weights = hf_weights(config)
            sam = config.models.sam
            if weights is not None:  # a transformers mask source: its model folder
                from tag2mask.models.weights import HF_MASK_SOURCES, resolve_hf_folder

                what, repo = HF_MASK_SOURCES[config.superpixels.source]
                resolve_hf_folder(weights, what=what, default_repo=repo)
                sam = ""
            elif sam in ("", "default"):  # the official file of models.sam_type ('tiny' has none: load_sam says so)
                sam = "" if config.models.sam_type == "tiny" else config.models.sam_type.replace("default", "vit_h")
            if sam:
                resolve_weight(sam, kind="sam")
    return list(dataset.skipped)


def evaluate_run(config: Config, run: RunDir, *, limit: int | None = None, say: Callable[[str], None] = print) -> dict:
    """Seed mIoU of the run's argmax, coarse and fine seeds against the ground truth (when there is one).

    Writes ``RUN/metrics.json`` and ``RUN/evaluate/*.json|md``. The argmax seeds are scored for every
    ``evaluate.argmax_bg_powers`` and the best is reported, labelled as tuned on ground truth.
    """
    from tag2mask.stages.evaluate import all_background_miou, argmax_sweep, miou_percent, run_evaluate, write_report

    split = config.data.eval_split
    n = len(steps_of(config))
    label = f"[{n}/{n}] evaluate"
    dataset = open_split(config, split)
    if not dataset.has_masks:
        say(f"{label}: split {split} has no ground truth, nothing to evaluate")
        return {}
    if split != config.data.train_split:
        say(f"{label}: seeds are made for {config.data.train_split}; evaluating them needs eval_split == train_split")
        return {}
    ids = dataset.ids[:limit] if limit else dataset.ids
    metrics: dict[str, Any] = {"split": split, "images": len(ids), "all_background": all_background_miou(config, split, limit)}
    if config.pipeline == "clip_es":
        return _evaluate_training_free(config, run, metrics, ids, label, limit, say)
    for name in ("seeds_coarse", "seeds_fine"):
        report = run_evaluate(config, run.stage_dir(name), split, limit=limit, show_progress=False)
        write_report(report, run.path / "evaluate" / f"{name}_{split}")
        metrics[name] = miou_percent(report)
        metrics.setdefault("protocol", report["protocol"]["description"])
    powers = list(config.evaluate.argmax_bg_powers)
    for task in ("cls", "seg"):
        sweep = argmax_sweep(config, run.stage_dir(f"cams_{task}"), split, limit)
        best = max(sweep, key=lambda p: sweep[p])
        metrics[f"argmax_{task}"] = {"miou": 100.0 * sweep[best], "bg_power": best,
                                     "tuned_on_ground_truth": f"p chosen among {powers} by GT mIoU on {split}",
                                     "sweep": {str(p): 100.0 * v for p, v in sweep.items()}}
    write_json(run.path / "metrics.json", metrics)
    say(f"{label}: seed mIoU on {split} ({len(ids)} images): fine {metrics['seeds_fine']:.1f}, "
        f"coarse {metrics['seeds_coarse']:.1f}, argmax (seg CAMs, best p={metrics['argmax_seg']['bg_power']:g}, "
        f"tuned on GT) {metrics['argmax_seg']['miou']:.1f}, all background {metrics['all_background']:.1f}")
    return metrics


def _evaluate_training_free(config: Config, run: RunDir, metrics: dict[str, Any], ids: list[str], label: str,
                            limit: int | None, say: Callable[[str], None]) -> dict:
    """The training-free run's seeds and CLIP-ES's own argmax seeds (α tuned on the ground truth, as CLIP-ES
    reports them), with the protocol."""
    from tag2mask.stages.evaluate import argmax_sweep, miou_percent, run_evaluate, write_report

    split = config.data.eval_split
    report = run_evaluate(config, run.stage_dir("seeds_clip_es"), split, limit=limit, show_progress=False)
    write_report(report, run.path / "evaluate" / f"seeds_clip_es_{split}")
    method = config.seeds.coarse.method
    metrics.update(pipeline="clip_es", seeds_clip_es=miou_percent(report), seed_method=method,
                   protocol=report["protocol"]["description"])
    powers = list(config.evaluate.argmax_bg_powers)
    sweep = argmax_sweep(config, run.stage_dir("cams_clip_es"), split, limit, clip_es=True)
    best = max(sweep, key=lambda p: sweep[p])
    metrics["argmax_clip_es"] = {"miou": 100.0 * sweep[best], "bg_power": best,
                                 "tuned_on_ground_truth": f"alpha chosen among {powers} by GT mIoU on {split}",
                                 "sweep": {str(p): 100.0 * v for p, v in sweep.items()}}
    write_json(run.path / "metrics.json", metrics)
    what = TRAINING_FREE_SEEDS[method] + (f" (alpha {config.clip_es.bg_power:g})" if method == "argmax" else "")
    say(f"{label}: training-free seed mIoU on {split} ({len(ids)} images): {what} {metrics['seeds_clip_es']:.1f}, "
        f"CLIP-ES argmax (best alpha={best:g}, tuned on GT) {metrics['argmax_clip_es']['miou']:.1f}, all background "
        f"{metrics['all_background']:.1f}")
    return metrics
