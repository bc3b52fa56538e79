"""The method's stage commands (``superpixels``, ``train``, ``cams``, ``seeds``, ``evaluate``) and ``run``, the
whole pipeline. Each stage command keeps its books through :func:`tag2mask.stages.lifecycle.run_stage`, as
``tag2mask run`` does."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tag2mask.commands.common import load_config_and_run, ranks, stage_two_hint
from tag2mask.errors import Tag2MaskError

if TYPE_CHECKING:  # annotations only
    from tag2mask.config import Config
    from tag2mask.stages.rundir import ItemsResult, RunDir


def superpixels_command(args: argparse.Namespace) -> int:
    from tag2mask.stages.graph import stage_hashes
    from tag2mask.stages.lifecycle import item_counts, run_stage
    from tag2mask.stages.superpixels import run_superpixels, superpixels_dir, superpixels_stage

    if args.import_dir:
        args.overrides = [*args.overrides, f"superpixels.import_dir={Path(args.import_dir).expanduser().resolve()}"]
    config, run = load_config_and_run(args)
    split = args.split or config.data.train_split
    rank, world = ranks(args, config)
    inputs = {"split": split, "folder": str(superpixels_dir(config, split))}
    if args.import_dir:
        inputs["import"] = str(Path(args.import_dir).expanduser().resolve())
    results = []

    def work(_folder: Path | None, quiet: bool) -> tuple[dict[str, int], bool]:
        results.append(run_superpixels(config, split, rank=rank, world_size=world, limit=args.limit,
                                       shared=bool(args.shard), show_progress=not quiet))
        return item_counts(results[-1])

    run_stage(run, superpixels_stage(config, split), stage_hashes(config)["superpixels"], inputs, work,
              rank=rank, world=world, collective=not args.shard)
    r = results[0]
    print(f"superpixels: {r.done}/{r.total} images of {split} in {r.folder} "
          f"({r.computed} {'imported' if args.import_dir else 'computed'} now, {r.seconds:.1f} s"
          + (f", {r.skipped} skipped: no annotations" if r.skipped else "") + ")")
    return 0


def cams_command(args: argparse.Namespace) -> int:
    from tag2mask.stages.graph import stage_hashes
    from tag2mask.stages.cams import run_cams
    from tag2mask.stages.common import context_path

    config, run = load_config_and_run(args)
    split = args.split or config.data.train_split
    weights = Path(args.weights) if args.weights else context_path(
        run.path, args.task, getattr(config.train, args.task).checkpoint)
    inputs = {"split": split, "external": args.external} if args.external else {"split": split, "weights": str(weights)}
    external = Path(args.external) if args.external else None
    stage = f"cams_{args.task}"
    return _per_image_command(args, config, run, stage, stage_hashes(config)[stage], inputs, split, "labelled images",
                              lambda out, **kw: run_cams(config, args.task, split, out, context=weights,
                                                         external=external, **kw))


def train_command(args: argparse.Namespace) -> int:
    from tag2mask.stages.common import join_process_group
    from tag2mask.stages.lifecycle import run_stage
    from tag2mask.stages.train import run_train, train_stage_hash

    config, run = load_config_and_run(args)
    rank, world = join_process_group(config)
    stage, cfg = f"train_{args.task}", getattr(config.train, args.task)
    seeds = Path(args.seeds) if args.seeds else None
    h = train_stage_hash(config, args.task, seeds, run.path)
    results = []

    def work(folder: Path | None, _quiet: bool) -> tuple[dict[str, int], bool]:
        results.append(run_train(config, args.task, run.path, folder, h, seeds_dir=seeds, max_iter=args.max_iter))
        return {"iterations": results[-1].iterations}, results[-1].iterations == cfg.max_iter

    outcome = run_stage(run, stage, h, {"split": config.data.train_split, "seeds": args.seeds}, work,
                        rank=rank, world=world, per_image=False)
    if outcome.skipped:
        print(f"train {args.task}: done earlier under the same settings and data, skipped "
              f"(context in {run.stage_dir(stage)})")
        return 0
    r = results[0]
    print(f"train {args.task}: iterations {r.resumed_from}..{r.iterations} of {cfg.max_iter} "
          f"({r.seconds:.1f} s), last loss {r.last_loss:.4g}")
    if outcome.complete and rank == 0:
        print(f"prompt context: {r.final_context}")
    return 0


def seeds_command(args: argparse.Namespace) -> int:
    from tag2mask.stages.graph import stage_hashes
    from tag2mask.stages.seeds import SEEDS_OF_TASK, run_seeds

    config, run = load_config_and_run(args)
    split = args.split or config.data.train_split
    stage = f"seeds_{SEEDS_OF_TASK[args.task]}"
    cams_dir = Path(args.cams) if args.cams else run.stage_dir(f"cams_{args.task}")
    return _per_image_command(args, config, run, stage, stage_hashes(config)[stage],
                              {"split": split, "cams": str(cams_dir)}, split, "images",
                              lambda out, **kw: run_seeds(config, args.task, split, cams_dir, out, **kw))


def _per_image_command(args: argparse.Namespace, config: Config, run: RunDir, stage: str, key: str,
                       inputs: dict[str, Any], split: str, what: str, compute: Callable[..., ItemsResult]) -> int:
    """A per-image stage command (cams, seeds) in ``run``: ``compute(out_dir, rank=, world_size=, limit=,
    show_progress=)`` does this worker's share; the books are :func:`~tag2mask.stages.lifecycle.run_stage`'s."""
    from tag2mask.stages.lifecycle import item_counts, run_stage

    rank, world = ranks(args, config)
    results = []

    def work(folder: Path | None, quiet: bool) -> tuple[dict[str, int], bool]:
        results.append(compute(folder, rank=rank, world_size=world, limit=args.limit, show_progress=not quiet))
        return item_counts(results[-1])

    run_stage(run, stage, key, inputs, work, rank=rank, world=world, collective=not args.shard)
    r = results[0]
    print(f"{stage.replace('_', ' ', 1)}: {r.done}/{r.total} {what} of {split} in {r.folder} "
          f"({r.computed} computed now, {r.seconds:.1f} s)")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    from tag2mask.stages.evaluate import miou_percent, run_evaluate, write_report
    from tag2mask.stages.seeds import SEEDS_OF_TASK

    config, run = load_config_and_run(args, writes=False)
    split = args.split or config.data.eval_split
    if args.pred:
        pred, name = Path(args.pred), Path(args.pred).name
    elif run is not None:
        name = f"seeds_{SEEDS_OF_TASK[args.task]}"
        pred = run.stage_dir(name)
    else:
        raise Tag2MaskError("give --pred DIR (label PNGs) or --run RUN_DIR (its seeds)")
    tuned = None
    if (pred / "refine.json").is_file():
        from tag2mask.stages.evaluate import gt_tuned_choices
        from tag2mask.stages.refine import tuned_on_gt_lines

        tuned = [*gt_tuned_choices(config), *tuned_on_gt_lines(pred)]
    report = run_evaluate(config, pred, split, tuned_on_gt=tuned, limit=args.limit)
    if args.sweep:
        if run is None:
            raise Tag2MaskError("--sweep scores the run's CAMs: give --run RUN_DIR")
        report["argmax_sweep"] = _argmax_sweep(config, run.stage_dir(f"cams_{args.task}"), split, args.limit)
    if args.out:
        stem = Path(args.out)
    elif run is not None:
        stem = run.path / "evaluate" / f"{name}_{split}"
    else:
        stem = pred.parent / f"{name}_{split}_eval"
    json_path, md_path = write_report(report, stem)
    print(report["protocol"]["description"])
    print(f"mIoU {miou_percent(report):.2f} %  ({name} vs ground truth of {split})")
    if "argmax_sweep" in report:
        sweep = report["argmax_sweep"]
        cells = ", ".join(f"p={p}: {100 * v:.2f}" for p, v in sweep["miou"].items())
        print(f"argmax seeds, bg = (1 - max)^p, tuned on ground truth of {split}: {cells}")
    print(f"report: {json_path} and {md_path}")
    return 0


def _argmax_sweep(config: Config, cams_dir: Path, split: str, limit: int | None) -> dict[str, Any]:
    from tag2mask.stages.evaluate import argmax_sweep

    powers = list(config.evaluate.argmax_bg_powers)
    result = argmax_sweep(config, cams_dir, split, limit)
    return {"tuned_on_ground_truth": f"bg exponent p searched among {powers} by GT mIoU on {split}",
            "miou": {str(p): v for p, v in result.items()}}


def run_command(args: argparse.Namespace) -> int:
    from tag2mask.config import load_config
    from tag2mask.stages.pipeline import final_seeds, run_pipeline
    from tag2mask.stages.rundir import RunDir

    overrides = list(args.overrides) + ([f"data.root={args.data}"] if args.data else [])
    run_dir = Path(args.run or Path("runs") / Path(str(args.preset)).stem)
    if (run_dir / RunDir.CONFIG).is_file():
        config = load_config(run_dir / RunDir.CONFIG, overrides)
    else:
        config = load_config(args.preset, overrides)
    result = run_pipeline(config, run_dir, limit=args.limit)
    total = sum(result.seconds.values())
    from tag2mask.viz.report import write_report

    report = write_report(run_dir)
    print(f"tag2mask run: finished in {total:.1f} s; seeds in {run_dir / final_seeds(config)}; report {report}")
    print(stage_two_hint(run_dir, "next, stage II: tag2mask train-seg --run {run} --net deeplabv3plus (or mask2former)"))
    return 0
