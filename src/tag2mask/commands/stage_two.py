"""Stage II commands: ``train-seg`` (a segmentation network on the seeds), ``predict`` and ``refine``."""

from __future__ import annotations

import argparse
from pathlib import Path

from tag2mask.commands.common import count_files, evaluate_into, lock_run, ranks, run_of, split_overrides
from tag2mask.errors import Tag2MaskError


def train_seg_command(args: argparse.Namespace) -> int:
    from tag2mask.stages.train_seg import run_train_seg

    config_items, recipe_items = split_overrides(args.overrides)
    if args.backbone:
        recipe_items.append(f"backbone={args.backbone}")
    if args.backbone_weights:
        recipe_items.append(f"backbone_weights={args.backbone_weights}")
    from tag2mask.stages.rundir import RunDir

    config, run = run_of(Path(args.run), args.run, config_items)
    if args.show:
        from tag2mask.segmenters.recipes import load_recipe, total_iterations
        from tag2mask.stages.common import open_split

        recipe = load_recipe(args.net, config.data.dataset, recipe_items)
        n = len(open_split(config, config.data.train_split))
        print(recipe.to_yaml(), end="")
        print(f"# {total_iterations(recipe, n)} iterations on {n} training images ({config.data.train_split})")
        return 0
    lock_run(run, args)
    run = RunDir.create(run.path, config)  # records the config overrides (runtime.device=...) in config.yaml
    result = run_train_seg(run, args.net, recipe_items, labels_dir=args.labels, name=args.name,
                           stop_at=args.stop_after, overwrite=args.overwrite)
    print(f"train-seg {args.name or args.net}: iterations {result.resumed_from}..{result.iterations} of "
          f"{result.total_iterations} ({result.seconds:.1f} s), last loss {result.last_loss:.4g}")
    if result.val:
        cells = ", ".join(f"{v['miou']:.1f} (iteration {int(v['iter']) + 1})" for v in result.val)
        print(f"validation mIoU: {cells}")
    if result.iterations == result.total_iterations:
        print(f"weights: {result.out_dir / 'model.safetensors'}; next: tag2mask predict --checkpoint {result.out_dir}")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    from tag2mask.stages.predict import resolve_checkpoint, run_predict

    checkpoint = resolve_checkpoint(args.checkpoint)
    config, run = run_of(checkpoint.folder, args.run, args.overrides)
    lock_run(run, args)
    rank, world = ranks(args, config)
    result = run_predict(config, checkpoint, args.split, Path(args.out) if args.out else None, flip=args.flip or None,
                         scales=args.scales, classes=args.classes, limit=args.limit, rank=rank, world_size=world)
    print(f"predict: {result.done}/{result.total} images of {args.split} in {result.folder} "
          f"({result.computed} computed now, {result.seconds:.1f} s)")
    if world > 1 and not args.shard:
        from tag2mask.stages.common import barrier

        barrier()  # every rank has written its share: count again
        result.done = count_files(result.folder, config, args.split, args.limit, ".npz")
    if rank == 0 and result.complete and not args.shard:
        tuned = []
        if checkpoint.tag != "final":
            tuned.append(f"checkpoint {checkpoint.tag} evaluated on {args.split}: if it was picked by the training's "
                         f"validation mIoU on this split, the number is tuned on this ground truth (SPEC §13 item 9)")
        miou = evaluate_into(config, result.folder, args.split, args.limit, tuned)
        if miou is not None:
            print(f"mIoU {miou:.2f} % vs ground truth of {args.split} (report: {result.folder / 'evaluation.md'})")
    return 0


def refine_command(args: argparse.Namespace) -> int:
    from tag2mask.io import read_json
    from tag2mask.stages.predict import predictions_split
    from tag2mask.stages.refine import SPEC_ALPHA_SWEEPS, run_refine, tuned_on_gt_lines

    pred = Path(args.predictions)
    if not pred.is_dir():
        raise Tag2MaskError(f"predictions folder {pred} does not exist: run tag2mask predict first")
    config, run = run_of(pred, args.run, args.overrides)
    lock_run(run, args)
    split = args.split or predictions_split(pred) or "val"
    sweep = args.sweep
    if sweep is not None and not sweep:
        sweep = list(SPEC_ALPHA_SWEEPS.get(config.data.dataset, SPEC_ALPHA_SWEEPS["voc"]))
    out = Path(args.out) if args.out else pred.parent / f"{pred.name}_{args.method}"
    rank, world = ranks(args, config)
    result = run_refine(config, pred, out, method=args.method, split=split, alpha=args.alpha, sweep=sweep,
                        uncovered=args.uncovered, crf_params=args.crf,
                        superpixels_dir=Path(args.superpixels) if args.superpixels else None,
                        limit=args.limit, rank=rank, world_size=world)
    print(f"refine {args.method}: {result.done}/{result.total} images of {split} in {result.folder} "
          f"({result.computed} computed now, {result.seconds:.1f} s)" + (
              f", alpha {result.alpha:g}" if result.alpha is not None else ""))
    if result.sweep:
        cells = ", ".join(f"{a:g}: {100 * v:.2f}" for a, v in result.sweep.items())
        print(f"alpha sweep (mIoU %, tuned on the ground truth of {split}: not a held-out number): {cells}")
    if world > 1 and not args.shard:
        from tag2mask.stages.common import barrier

        barrier()  # every rank has written its share: count again
        result.done = count_files(result.folder, config, split, args.limit, ".png")
    if rank == 0 and result.complete and not args.shard:
        miou = evaluate_into(config, result.folder, split, args.limit, tuned_on_gt_lines(result.folder))
        if miou is not None:
            before = pred / "evaluation.json"
            gain = ""
            base_report = read_json(before) if before.is_file() else {}
            same_images = base_report.get("protocol", {}).get("num_images") == result.total
            if base_report.get("miou") is not None and same_images:
                base = 100.0 * base_report["miou"]
                gain = f" (network alone {base:.2f} %, {miou - base:+.2f})"
            print(f"mIoU {miou:.2f} % vs ground truth of {split}{gain} (report: {result.folder / 'evaluation.md'})")
    return 0
