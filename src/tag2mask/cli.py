"""The ``tag2mask`` command: a thin layer over the stages.

Heavy libraries (torch, open_clip, segment_anything) are imported inside the commands that need them, so
``tag2mask --help`` answers at once. Errors meant for the user (:class:`tag2mask.errors.Tag2MaskError`) print
one line and exit with code 1; a stage that this version does not implement yet prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tag2mask import __version__
from tag2mask.errors import NotBuiltError, Tag2MaskError

# Stages that later versions fill in: name -> (help line, what it will do).
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tag2mask",
        description="Image-level tags in, pixel-accurate segmentation masks out (FMA-WSSS: CLIP task prompts, "
        "Softmax-GradCAM, class-aware attention affinity, SAM quasi-superpixel seeding).",
        epilog="Run 'tag2mask COMMAND --help' for a command's options. Docs: README.md.",
    )
    p.add_argument("--version", action="version", version=f"tag2mask {__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an operating-system error (also TAG2MASK_DEBUG=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sp = sub.add_parser(
        "superpixels",
        help="SAM quasi-superpixels for a split (multi-level masks + hierarchy filter), cached once",
        description="Compute the SAM quasi-superpixels of every image of a split (SPEC §7), cached under "
        "$TAG2MASK_CACHE/superpixels and shared by every run with the same dataset, SAM and generator settings. "
        "Resumes where it stopped; split the work over processes with --shard i/n or torchrun.",
    )
    _add_config_args(sp)
    sp.add_argument("--split", help="dataset split (default: data.train_split)")
    sp.add_argument("--shard", metavar="i/n", help="process every n-th image starting at i (default: torchrun rank)")
    sp.add_argument("--limit", type=int, help="only the first N images of the split (for a quick look)")
    sp.add_argument("--import", dest="import_dir", metavar="DIR",
                    help="do not run SAM: convert SAM-style annotations made by another tool, DIR/<id>.json (a list of "
                    "SamAutomaticMaskGenerator / amg.py annotations with COCO RLE 'segmentation', optional 'level' "
                    "0/1/2, else all are taken as whole) or amg.py's DIR/<id>/ PNG folder (see README)")

    cams = sub.add_parser(
        "cams",
        help="Softmax-GradCAM of trained task prompts, with CAA refinement",
        description="CAMs of a task's prompts for every labelled image of a split (SPEC §1.2, §3), refined by CAA "
        "(SPEC §6) as the config says, written to RUN/cams_<task>/<id>.npz. Resumable and shardable.",
    )
    _add_config_args(cams, run_required=True)
    _add_task_args(cams)
    cams.add_argument("--weights", metavar="FILE", help="prompt context (.safetensors; default: the run's trained one)")
    cams.add_argument("--external", metavar="DIR", help="import CAMs made elsewhere (<id>.npz with cam, fg_cls[, att])")

    train = sub.add_parser(
        "train",
        help="train the classification- or segmentation-task prompts (--task cls|seg)",
        description="Prompt training of one task in a run (SPEC §5): cls on the ground-truth image labels (MCL), "
        "seg on the run's coarse seeds (CAL). Resumes from its last saved state; under torchrun every rank "
        "trains on its slice of each global batch.",
    )
    _add_config_args(train, run_required=True)
    train.add_argument("--task", choices=("cls", "seg"), required=True, help="classification or segmentation task")
    train.add_argument("--seeds", metavar="DIR", help="pixel supervision for seg (default: RUN/seeds_coarse)")
    train.add_argument("--max-iter", type=int, help="stop after this many iterations (resume later)")

    seeds = sub.add_parser(
        "seeds",
        help="SAMS seeds from CAMs and quasi-superpixels (also argmax and dense-CRF seeds)",
        description="Seeds from a run's CAMs (task cls → coarse seeds, seg → fine seeds) by the method of "
        "seeds.coarse / seeds.fine (sams, argmax or crf), as palette PNGs in RUN/seeds_<coarse|fine>/.",
    )
    _add_config_args(seeds, run_required=True)
    _add_task_args(seeds)
    seeds.add_argument("--cams", metavar="DIR", help="CAM folder (default: RUN/cams_<task>)")

    ev = sub.add_parser(
        "evaluate",
        help="seed / prediction mIoU with an explicit protocol",
        description="mIoU of a folder of label PNGs against a split's ground truth (SPEC §9), printed with its "
        "protocol (split, label source, image count, what was tuned on ground truth) and written as JSON and "
        "Markdown. With --run: the run's seeds (--task cls: coarse, seg: fine).",
    )
    _add_config_args(ev)
    ev.add_argument("--task", choices=("cls", "seg"), default="seg", help="which of the run's seeds (default: seg = fine)")
    ev.add_argument("--pred", metavar="DIR", help="label PNGs to evaluate (default: the run's seeds)")
    ev.add_argument("--split", help="dataset split (default: data.eval_split)")
    ev.add_argument("--out", metavar="STEM", help="write STEM.json and STEM.md (default: RUN/evaluate/<name>)")
    ev.add_argument("--sweep", action="store_true",
                    help="also score plain argmax seeds of the run's CAMs for each evaluate.argmax_bg_powers "
                    "(labelled as tuned on ground truth)")
    ev.add_argument("--limit", type=int, help="only the first N images of the split")

    ts = sub.add_parser(
        "train-seg",
        help="stage II: train DeepLabV3+ or Mask2Former on the run's fine seeds",
        description="Train an off-the-shelf segmentation network on the fine seeds (SPEC §11, App. G): "
        "DeepLabV3+ (segmentation-models-pytorch, ResNet-101, batch 16, SGD + poly) or Mask2Former (transformers, "
        "Swin-B/L, batch 4, AdamW + poly), 512 crops, 120 epochs on VOC / 32 on COCO. Writes RUN/stage2/<name>/ "
        "(checkpoints, metrics.jsonl, val.jsonl, model.safetensors); resumes from its last saved state; "
        "data-parallel under torchrun. Needs the extra: pip install -e \".[stage2]\".",
    )
    ts.add_argument("--run", "--run-dir", dest="run", required=True, metavar="RUN_DIR", help="a run with fine seeds")
    ts.add_argument("--net", required=True, choices=("deeplabv3plus", "mask2former"), help="which network")
    ts.add_argument("--backbone", help="resnet101 (default for deeplabv3plus), resnet50, ...; swin-b (default for "
                    "mask2former), swin-l, swin-t")
    ts.add_argument("--backbone-weights", metavar="FILE|none",
                    help="ImageNet weights for the backbone: a file, a known name (tag2mask info), or none to train "
                    "from scratch (default: the known file of the backbone, looked up in $TAG2MASK_WEIGHTS and the "
                    "torch / Hugging Face caches)")
    ts.add_argument("--labels", metavar="DIR", help="train on these label PNGs (<id>.png) instead of the run's "
                    "seeds (RUN/seeds_fine; RUN/seeds_clip_es for a training-free run)")
    ts.add_argument("--name", help="output folder name under RUN/stage2 (default: the network)")
    ts.add_argument("--stop-after", type=int, metavar="N", help="stop after N iterations (resume later)")
    ts.add_argument("--overwrite", action="store_true",
                    help="replace a network of the same name trained with another recipe (default: refuse)")
    ts.add_argument("--show", action="store_true", help="print the resolved recipe (YAML) and the iteration count, "
                    "then exit without training")
    ts.add_argument("overrides", nargs="*", metavar="key=value",
                    help="recipe overrides (batch_size=8 epochs=60 lr=0.005 ...; --show prints them all) and dotted "
                    "config overrides (runtime.device=cuda:1)")

    pr = sub.add_parser(
        "predict",
        help="stage II: class probabilities and label maps of a trained network on a split",
        description="Per-image class probabilities (RUN/stage2/<name>/predictions_<split>/<id>.npz: float16, "
        "background first, plus the classes kept) and palette PNGs; single scale by default. Evaluated against "
        "the split's ground truth when it has one. Resumable and shardable.",
    )
    pr.add_argument("--checkpoint", required=True, metavar="PATH",
                    help="RUN/stage2/<name> (final weights) or a file in it, e.g. checkpoints/iter_2000.safetensors")
    pr.add_argument("--split", default="val", help="dataset split (default: %(default)s)")
    pr.add_argument("--run", "--run-dir", dest="run", metavar="RUN_DIR", help="run folder (default: the checkpoint's)")
    pr.add_argument("--out", metavar="DIR", help="output folder (default: RUN/stage2/<name>/predictions_<split>)")
    pr.add_argument("--flip", action="store_true", help="also average the horizontally flipped image")
    pr.add_argument("--scales", type=float, nargs="+", metavar="S", help="test scales, e.g. 0.75 1.0 1.25")
    pr.add_argument("--classes", choices=("present", "all"), default="present",
                    help="probability channels to keep: the classes that win somewhere (default, as the reference's "
                    "loaders) or all")
    pr.add_argument("--shard", metavar="i/n", help="process every n-th image starting at i (default: torchrun rank)")
    pr.add_argument("--limit", type=int, help="only the first N images of the split")
    pr.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (e.g. runtime.device=cpu)")

    rf = sub.add_parser(
        "refine",
        help="stage II: refine a network's probabilities with SAMS (or dense CRF), App. Table S6",
        description="SAMS refinement of predicted probabilities on the split's quasi-superpixels (SPEC §11.2: mean "
        "probability per superpixel, background to the power alpha, priority painting) or dense CRF. alpha is "
        "given (--alpha) or swept (--sweep), and a swept alpha is labelled as tuned on the ground truth of the "
        "split (SPEC §13 item 9). Writes <predictions>_<method>/<id>.png and refine.json; evaluated when the "
        "split has ground truth.",
    )
    rf.add_argument("--predictions", required=True, metavar="DIR", help="a predict output folder (<id>.npz)")
    rf.add_argument("--method", choices=("sams", "crf"), default="sams", help="default: %(default)s")
    group = rf.add_mutually_exclusive_group()
    group.add_argument("--alpha", type=float, help="background exponent for SAMS (default 1)")
    group.add_argument("--sweep", type=float, nargs="*", metavar="A",
                       help="try these alphas, keep the best by ground-truth mIoU of the split (no values: the "
                       "reference's grid, VOC 1..5, COCO 0.6..1.0)")
    rf.add_argument("--uncovered", choices=("background", "argmax"), default="background",
                    help="pixels no superpixel covers: background (reference) or the network's argmax")
    rf.add_argument("--crf", default="deeplab_crf", metavar="NAME", help="dense-CRF parameter set (default: %(default)s)")
    rf.add_argument("--split", help="dataset split of the predictions (default: the one in its predict.json, else val)")
    rf.add_argument("--run", "--run-dir", dest="run", metavar="RUN_DIR", help="run folder (default: the predictions')")
    rf.add_argument("--superpixels", metavar="DIR", help="quasi-superpixel folder (default: the run's cache for the split)")
    rf.add_argument("--out", metavar="DIR", help="output folder (default: <predictions>_<method>)")
    rf.add_argument("--shard", metavar="i/n", help="process every n-th image starting at i (default: torchrun rank)")
    rf.add_argument("--limit", type=int, help="only the first N images of the split")
    rf.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (e.g. runtime.device=cpu)")

    run = sub.add_parser(
        "run",
        help="the whole coarse-to-fine pipeline, resumable: tags in, fine seeds out",
        description="quasi-superpixels → cls-task training → CAMs + CAA → coarse seeds → seg-task training → "
        "CAMs + CAA → fine seeds → evaluation (SPEC §0). Finished stages are skipped; a killed run resumes. "
        "Under torchrun, per-image stages shard over the ranks and training is data-parallel.",
    )
    run.add_argument("--preset", default="voc", help="voc, coco, demo, or a YAML file (default: %(default)s)")
    run.add_argument("--run", "--run-dir", dest="run", metavar="RUN_DIR",
                     help="run folder (default: runs/<preset>); an existing run resumes with its config")
    run.add_argument("--data", metavar="DIR", help="dataset root (same as data.root=DIR)")
    run.add_argument("--limit", type=int, help="only the first N images (a quick look; not a real run)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    seg = sub.add_parser(
        "segment",
        help="text-to-semantic-mask on any image, with a trained run or training-free",
        description="Segment the named classes in any image with a finished run (App. D): segmentation-task CAMs "
        "for those classes, CAA, quasi-superpixels of the image, SAMS. With --training-free, any class names and "
        "no run: CLIP-ES's fixed prompts (clip_es.*), then SAMS (seeds.coarse.method=sams) or CLIP-ES's argmax "
        "or dense-CRF seeds (argmax, crf). Writes a palette PNG (label k = the k-th class) and an overlay.",
    )
    seg.add_argument("image", help="an image file (jpg, png, ...)")
    seg.add_argument("--classes", required=True, help='comma-separated class names, e.g. "dog,person" (with --run: '
                     "names of the run's classes)")
    seg.add_argument("--run", "--run-dir", dest="run", metavar="RUN_DIR", help="a finished run")
    seg.add_argument("--training-free", action="store_true",
                     help="no run: CLIP-ES's fixed prompts with the weights of --preset (models.clip, and SAM's "
                     "file or superpixels.source=felzenszwalb)")
    seg.add_argument("--preset", default="voc", help="with --training-free: the settings (default: %(default)s)")
    seg.add_argument("--out", default="segment-out", help="output folder (default: %(default)s)")
    seg.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (e.g. runtime.device=cpu)")

    rep = sub.add_parser("report", help="write a run's self-contained HTML report (seed quality, efficiency, figures)")
    rep.add_argument("run", metavar="RUN_DIR")
    rep.add_argument("--out", help="HTML file (default: RUN/report.html)")
    rep.add_argument("--images", type=int, default=4, help="images with figures (default: %(default)s)")

    demo = sub.add_parser(
        "demo",
        help="the whole method on a generated synthetic dataset, no weights or downloads needed",
        description="Make the synthetic dataset in a run folder and run the pipeline on it.",
    )
    demo.add_argument("--out", default="tag2mask-demo", help="run folder to create (default: %(default)s)")
    demo.add_argument("--training-free", action="store_true",
                      help="the training-free mode (preset demo-clip-es: CLIP-ES's fixed prompts, then SAMS) in "
                      "OUT/training-free, on the same synthetic data; prints it beside the trained demo's seeds "
                      "when those exist")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides on the demo preset")

    info = sub.add_parser("info", help="versions, device, and which weight files were found where")
    info.set_defaults()

    cfg = sub.add_parser("config", help="show a preset's resolved config or its stage hashes")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = cfg_sub.add_parser("show", help="print the resolved config as YAML")
    show.add_argument("preset", help="voc, coco, demo, or a YAML file")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. seeds.fine.bg_power=0.8")
    hashes = cfg_sub.add_parser("hashes", help="print each pipeline stage's config hash")
    hashes.add_argument("preset")
    hashes.add_argument("overrides", nargs="*", metavar="key=value")
    keys = cfg_sub.add_parser("keys", help="list every config key")
    keys.add_argument("--prefix", default="", help="only keys starting with this")
    return p


def _add_config_args(p: argparse.ArgumentParser, run_required: bool = False) -> None:
    p.add_argument("--preset", default="voc", help="voc, coco, demo (training-free: voc-clip-es, coco-clip-es, "
                   "demo-clip-es), or a YAML file (default: %(default)s)")
    p.add_argument("--run", "--run-dir", dest="run", metavar="RUN_DIR", required=run_required,
                   help="use (and record into) this run folder's config.yaml; created with --preset if new (under torchrun write --run-dir)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.root=/data/VOC2012")


def _load(args: argparse.Namespace, writes: bool = True):  # -> tuple[Config, RunDir | None]
    """The config (preset or ``--run``'s, with the overrides) and the run. A command that ``writes`` into the run
    locks it (shared between ``--shard`` workers) and records its config; a reading one leaves config.yaml alone."""
    from tag2mask.config import load_config
    from tag2mask.stages.rundir import RunDir

    existing = bool(args.run) and Path(args.run, RunDir.CONFIG).is_file()
    config = load_config(Path(args.run) / RunDir.CONFIG if existing else args.preset, args.overrides)
    if getattr(args, "task", None) in ("cls", "seg") and config.pipeline != "fma":
        raise Tag2MaskError(
            f"--task {args.task} makes a stage of the trained pipeline, but this config is training-free "
            f"(pipeline: {config.pipeline}, stages superpixels, cams_clip_es, seeds_clip_es): run it with 'tag2mask "
            "run', or pass pipeline=fma"
        )
    if not args.run:
        return config, None
    if not writes:
        return config, RunDir.open(args.run)
    _lock_run(RunDir(args.run), args)
    return config, RunDir.create(args.run, config)


def _lock_run(run, args: argparse.Namespace) -> None:  # noqa: ANN001
    """Own ``run`` for a command that writes into it (shared between ``--shard`` workers; torchrun: the lead)."""
    from tag2mask.lock import lock_folder

    shard = bool(getattr(args, "shard", None))
    if shard or _lead_process():
        lock_folder(run.path, "run directory", shared=shard)


def _lead_process() -> bool:
    """Not a torchrun rank other than 0 (those leave the folder's lock to their lead)."""
    import os

    return int(os.environ.get("RANK", "0") or 0) == 0


def _cmd_superpixels(args: argparse.Namespace) -> int:
    from tag2mask.config import stage_hashes
    from tag2mask.stages.common import barrier, begin_shared_stage
    from tag2mask.stages.superpixels import run_superpixels, superpixels_dir

    if args.import_dir:
        args.overrides = [*args.overrides, f"superpixels.import_dir={Path(args.import_dir).expanduser().resolve()}"]
    config, run = _load(args)
    split = args.split or config.data.train_split
    rank, world = _ranks(args, config)
    stage = f"superpixels_{split}"
    folder = superpixels_dir(config, split)
    if run is not None:
        inputs = {"split": split, "folder": str(folder)}
        if args.import_dir:
            inputs["import"] = str(Path(args.import_dir).expanduser().resolve())
        begin_shared_stage(run, stage, stage_hashes(config)["superpixels"], inputs, rank)
    result = run_superpixels(config, split, rank=rank, world_size=world, limit=args.limit, shared=bool(args.shard))
    print(f"superpixels: {result.done}/{result.total} images of {split} in {result.folder} "
          f"({result.computed} {'imported' if args.import_dir else 'computed'} now, {result.seconds:.1f} s"
          + (f", {result.skipped} skipped: no annotations" if result.skipped else "") + ")")
    if world > 1 and not args.shard:
        barrier()
        if rank == 0:  # every rank is done: recount (and finish anything a rank left)
            result = run_superpixels(config, split, limit=args.limit, show_progress=False)
    if run is not None and rank == 0 and result.complete:
        run.end_stage(stage, {"images": result.total, "computed": result.computed}, result.seconds)
    return 0


def _ranks(args: argparse.Namespace, config) -> tuple[int, int]:  # noqa: ANN001
    """``--shard i/n`` (independent processes), else torchrun's ranks (joining its process group), else (0, 1)."""
    from tag2mask.stages.common import join_process_group, worker_shard

    return worker_shard(args.shard) if args.shard else join_process_group(config)


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("cls", "seg"), required=True, help="classification (coarse) or segmentation (fine)")
    p.add_argument("--split", help="dataset split (default: data.train_split)")
    p.add_argument("--shard", metavar="i/n", help="process every n-th image starting at i (default: torchrun rank)")
    p.add_argument("--limit", type=int, help="only the first N images of the split")


def _cmd_cams(args: argparse.Namespace) -> int:
    from tag2mask.config import stage_hashes
    from tag2mask.stages.cams import run_cams
    from tag2mask.stages.common import barrier, begin_shared_stage, context_path

    config, run = _load(args)
    split = args.split or config.data.train_split
    rank, world = _ranks(args, config)
    stage = f"cams_{args.task}"
    weights = Path(args.weights) if args.weights else context_path(
        run.path, args.task, getattr(config.train, args.task).checkpoint)
    inputs = {"split": split, "external": args.external} if args.external else {"split": split, "weights": str(weights)}
    out = begin_shared_stage(run, stage, stage_hashes(config)[stage], inputs, rank)
    external = Path(args.external) if args.external else None
    result = run_cams(config, args.task, split, out, context=weights, external=external,
                      rank=rank, world_size=world, limit=args.limit)
    print(f"cams {args.task}: {result.done}/{result.total} labelled images of {split} in {result.folder} "
          f"({result.computed} computed now, {result.seconds:.1f} s)")
    if world > 1 and not args.shard:
        barrier()
        if rank == 0:  # every rank is done: recount (and finish anything a rank left)
            result = run_cams(config, args.task, split, out, context=weights, external=external, limit=args.limit,
                              show_progress=False)
    if rank == 0 and result.complete:
        run.end_stage(stage, {"images": result.total, "computed": result.computed}, result.seconds)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from tag2mask.stages.common import begin_shared_stage, join_process_group
    from tag2mask.stages.train import run_train, train_stage_hash

    config, run = _load(args)
    rank, _ = join_process_group(config)
    stage = f"train_{args.task}"
    h = train_stage_hash(config, args.task, Path(args.seeds) if args.seeds else None, run.path)
    out = begin_shared_stage(run, stage, h, {"split": config.data.train_split, "seeds": args.seeds}, rank)
    result = run_train(config, args.task, run.path, out, h, seeds_dir=Path(args.seeds) if args.seeds else None,
                       max_iter=args.max_iter)
    cfg = getattr(config.train, args.task)
    print(f"train {args.task}: iterations {result.resumed_from}..{result.iterations} of {cfg.max_iter} "
          f"({result.seconds:.1f} s), last loss {result.last_loss:.4g}")
    if result.iterations == cfg.max_iter and rank == 0:
        print(f"prompt context: {result.final_context}")
        run.end_stage(stage, {"iterations": cfg.max_iter}, result.seconds)
    return 0


def _cmd_seeds(args: argparse.Namespace) -> int:
    from tag2mask.config import stage_hashes
    from tag2mask.stages.common import barrier, begin_shared_stage
    from tag2mask.stages.seeds import SEEDS_OF_TASK, run_seeds

    config, run = _load(args)
    split = args.split or config.data.train_split
    rank, world = _ranks(args, config)
    stage = f"seeds_{SEEDS_OF_TASK[args.task]}"
    cams_dir = Path(args.cams) if args.cams else run.stage_dir(f"cams_{args.task}")
    out = begin_shared_stage(run, stage, stage_hashes(config)[stage], {"split": split, "cams": str(cams_dir)}, rank)
    result = run_seeds(config, args.task, split, cams_dir, out, rank=rank, world_size=world, limit=args.limit)
    print(f"seeds {SEEDS_OF_TASK[args.task]}: {result.done}/{result.total} images of {split} in {result.folder} "
          f"({result.computed} computed now, {result.seconds:.1f} s)")
    if world > 1 and not args.shard:
        barrier()
        if rank == 0:  # every rank is done: recount (and finish anything a rank left)
            result = run_seeds(config, args.task, split, cams_dir, out, limit=args.limit, show_progress=False)
    if rank == 0 and result.complete:
        run.end_stage(stage, {"images": result.total, "computed": result.computed}, result.seconds)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tag2mask.stages.evaluate import miou_percent, run_evaluate, write_report
    from tag2mask.stages.seeds import SEEDS_OF_TASK

    config, run = _load(args, writes=False)
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


def _argmax_sweep(config, cams_dir: Path, split: str, limit: int | None) -> dict:  # noqa: ANN001
    from tag2mask.stages.evaluate import argmax_sweep

    powers = list(config.evaluate.argmax_bg_powers)
    result = argmax_sweep(config, cams_dir, split, limit)
    return {"tuned_on_ground_truth": f"bg exponent p searched among {powers} by GT mIoU on {split}",
            "miou": {str(p): v for p, v in result.items()}}


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """``key=value`` items → (config overrides: dotted keys of a config section, recipe overrides: the rest)."""
    from tag2mask.config import Config

    sections = set(Config.__dataclass_fields__)
    config_items = [o for o in items if "." in o.split("=", 1)[0] and o.split(".", 1)[0] in sections]
    return config_items, [o for o in items if o not in config_items]


def _run_of(path: Path, explicit: str | None, overrides: list[str]):  # -> tuple[Config, RunDir]
    """The run folder given, else the first parent of ``path`` that is one; its config with ``overrides``."""
    from tag2mask.config import load_config
    from tag2mask.stages.rundir import RunDir

    if explicit:
        run = RunDir.open(explicit)
    else:
        found = next((p for p in [path, *path.resolve().parents] if (p / RunDir.CONFIG).is_file()), None)
        if found is None:
            raise Tag2MaskError(f"{path} is not inside a run folder: give --run RUN_DIR")
        run = RunDir.open(found)
    return load_config(run.path / RunDir.CONFIG, overrides), run


def _evaluate_into(config, folder: Path, split: str, limit: int | None, tuned: list[str]) -> float | None:  # noqa: ANN001
    """Evaluate ``folder``'s PNGs on ``split`` when it has ground truth; writes folder/evaluation.{json,md}."""
    from tag2mask.stages.common import open_split
    from tag2mask.stages.evaluate import gt_tuned_choices, miou_percent, run_evaluate, write_report

    if not open_split(config, split).has_masks:
        return None
    report = run_evaluate(config, folder, split, tuned_on_gt=[*gt_tuned_choices(config), *tuned], limit=limit,
                          show_progress=False)
    write_report(report, folder / "evaluation")
    return miou_percent(report)


def _count_files(folder: Path, config, split: str, limit: int | None, suffix: str) -> int:  # noqa: ANN001
    """How many images of ``split`` (its first ``limit``) have ``folder/<id><suffix>``."""
    from tag2mask.stages.common import open_split

    ids = open_split(config, split).ids
    return sum((folder / f"{i}{suffix}").is_file() for i in (ids[:limit] if limit else ids))


def _cmd_train_seg(args: argparse.Namespace) -> int:
    from tag2mask.stages.train_seg import run_train_seg

    config_items, recipe_items = _split_overrides(args.overrides)
    if args.backbone:
        recipe_items.append(f"backbone={args.backbone}")
    if args.backbone_weights:
        recipe_items.append(f"backbone_weights={args.backbone_weights}")
    from tag2mask.stages.rundir import RunDir

    config, run = _run_of(Path(args.run), args.run, config_items)
    if args.show:
        from tag2mask.segmenters.recipes import load_recipe, total_iterations
        from tag2mask.stages.common import open_split

        recipe = load_recipe(args.net, config.data.dataset, recipe_items)
        n = len(open_split(config, config.data.train_split))
        print(recipe.to_yaml(), end="")
        print(f"# {total_iterations(recipe, n)} iterations on {n} training images ({config.data.train_split})")
        return 0
    _lock_run(run, args)
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


def _cmd_predict(args: argparse.Namespace) -> int:
    from tag2mask.stages.predict import resolve_checkpoint, run_predict

    checkpoint = resolve_checkpoint(args.checkpoint)
    config, run = _run_of(checkpoint.folder, args.run, args.overrides)
    _lock_run(run, args)
    rank, world = _ranks(args, config)
    result = run_predict(config, checkpoint, args.split, Path(args.out) if args.out else None, flip=args.flip or None,
                         scales=args.scales, classes=args.classes, limit=args.limit, rank=rank, world_size=world)
    print(f"predict: {result.done}/{result.total} images of {args.split} in {result.folder} "
          f"({result.computed} computed now, {result.seconds:.1f} s)")
    if world > 1 and not args.shard:
        from tag2mask.stages.common import barrier

        barrier()  # every rank has written its share: count again
        result.done = _count_files(result.folder, config, args.split, args.limit, ".npz")
    if rank == 0 and result.complete and not args.shard:
        tuned = []
        if checkpoint.tag != "final":
            tuned.append(f"checkpoint {checkpoint.tag} evaluated on {args.split}: if it was picked by the training's "
                         f"validation mIoU on this split, the number is tuned on this ground truth (SPEC §13 item 9)")
        miou = _evaluate_into(config, result.folder, args.split, args.limit, tuned)
        if miou is not None:
            print(f"mIoU {miou:.2f} % vs ground truth of {args.split} (report: {result.folder / 'evaluation.md'})")
    return 0


def _cmd_refine(args: argparse.Namespace) -> int:
    from tag2mask.io import read_json
    from tag2mask.stages.predict import predictions_split
    from tag2mask.stages.refine import SPEC_ALPHA_SWEEPS, run_refine, tuned_on_gt_lines

    pred = Path(args.predictions)
    if not pred.is_dir():
        raise Tag2MaskError(f"predictions folder {pred} does not exist: run tag2mask predict first")
    config, run = _run_of(pred, args.run, args.overrides)
    _lock_run(run, args)
    split = args.split or predictions_split(pred) or "val"
    sweep = args.sweep
    if sweep is not None and not sweep:
        sweep = list(SPEC_ALPHA_SWEEPS.get(config.data.dataset, SPEC_ALPHA_SWEEPS["voc"]))
    out = Path(args.out) if args.out else pred.parent / f"{pred.name}_{args.method}"
    rank, world = _ranks(args, config)
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
        result.done = _count_files(result.folder, config, split, args.limit, ".png")
    if rank == 0 and result.complete and not args.shard:
        miou = _evaluate_into(config, result.folder, split, args.limit, tuned_on_gt_lines(result.folder))
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


def _cmd_run(args: argparse.Namespace) -> int:
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
    print(_stage_two_hint(run_dir, "next, stage II: tag2mask train-seg --run {run} --net deeplabv3plus (or mask2former)"))
    return 0


def _stage_two_hint(run_dir: Path, untrained: str) -> str:
    """What to do after the seeds: train stage II, or, when a network is already trained, use it."""
    root = run_dir / "stage2"
    trained = sorted(d.name for d in root.iterdir() if (d / "model.safetensors").is_file()) if root.is_dir() else []
    if not trained:
        return untrained.format(run=run_dir)
    return (f"stage II already trained: {', '.join(trained)} in {root}; "
            f"next: tag2mask predict --checkpoint {root / trained[0]}")


def _cmd_segment(args: argparse.Namespace) -> int:
    from tag2mask.config import load_config
    from tag2mask.stages.rundir import RunDir
    from tag2mask.stages.segment import segment_image, segment_image_training_free

    if args.training_free == bool(args.run):
        raise Tag2MaskError("give --run RUN_DIR (a trained run) or --training-free (no run), one of the two")
    if args.training_free:
        config = load_config(args.preset, args.overrides)
        result = segment_image_training_free(config, Path(args.image), args.classes, Path(args.out))
    else:
        run = RunDir.open(args.run)
        config = load_config(run.path / RunDir.CONFIG, args.overrides)
        result = segment_image(config, run.path, Path(args.image), args.classes, Path(args.out))
    if result.warning:
        print(result.warning)
    found = ", ".join(f"{name} {n} px" for name, n in result.pixels.items())
    print(f"segment: {found}; mask {result.mask_path}, overlay {result.overlay_path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from tag2mask.viz.report import write_report

    path = write_report(Path(args.run), Path(args.out) if args.out else None, n_images=args.images)
    print(f"report: {path}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from tag2mask import config as cfgmod

    if args.config_command == "keys":
        for key in cfgmod.leaf_keys():
            if key.startswith(args.prefix):
                print(key)
        return 0
    config = cfgmod.load_config(args.preset, args.overrides)
    if args.config_command == "show":
        sys.stdout.write(cfgmod.annotated_yaml(config, args.preset, args.overrides))
    else:
        for stage, h in cfgmod.stage_hashes(config).items():
            print(f"{stage:14s} {h}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from tag2mask.models.weights import find_weights, weights_dir
    from tag2mask.stages.rundir import versions

    for name, version in versions().items():
        print(f"{name:18s} {version}")
    try:
        import torch

        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            print(f"{'device':18s} cuda ({torch.cuda.device_count()}: {names})")
        else:
            print(f"{'device':18s} cpu ({torch.get_num_threads()} threads; no CUDA device visible)")
    except ImportError:
        print(f"{'device':18s} unknown (torch is not installed)")
    print(f"{'weights folder':18s} {weights_dir()}  (set TAG2MASK_WEIGHTS to change)")
    rows = find_weights()
    width = max(len(filename) for _, filename, _ in rows)
    for name, filename, found in rows:
        print(f"  {name:16s} {filename:{width}s} {found if found else 'not found'}")
    from tag2mask.models.weights import PACKAGED_WEIGHTS

    print(f"{'packaged models':18s} (ship with tag2mask)")
    for w in PACKAGED_WEIGHTS:
        print(f"  {w.name:16s} {w.filename:{width}s} {w.path if w.path.is_file() else 'missing: reinstall tag2mask'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from tag2mask.config import load_config
    from tag2mask.data import open_dataset
    from tag2mask.stages.pipeline import TRAINING_FREE_SEEDS, run_pipeline
    from tag2mask.viz.report import write_report

    out = Path(args.out)
    preset = "demo-clip-es" if args.training_free else "demo"
    config = load_config(preset, args.overrides)
    if not Path(config.data.root).is_absolute():  # the demo keeps its data inside its run folder
        config = load_config(preset, [*args.overrides, f"data.root={(out / config.data.root).resolve()}"])
    run_dir = out / "training-free" if args.training_free else out
    from tag2mask.errors import MissingWeightsError
    from tag2mask.models.weights import resolve_clip

    try:
        resolve_clip(config.models.clip, config.models.clip_arch)
    except MissingWeightsError:
        raise NotBuiltError(
            f"the demo's tiny CLIP ({config.models.clip!r}) is not shipped in this version; the pipeline itself "
            "runs (see 'tag2mask run --help')"
        ) from None
    t0 = time.perf_counter()
    train = open_dataset("synthetic", config.data.root, config.data.train_split)
    print(f"tag2mask demo: {len(train)} synthetic images ({', '.join(train.class_names)}) in {config.data.root}; "
          f"models: CLIP {config.models.clip!r}, quasi-superpixels {config.superpixels.source}")
    run_pipeline(config, run_dir)
    report = write_report(run_dir)
    m = _read_metrics(run_dir)
    if args.training_free:
        if m:
            trained = _read_metrics(out)
            if "seeds_fine" in trained:  # its report shows the training-free CAMs beside the trained ones
                beside = f"; the trained demo's fine seeds ({out}): {trained['seeds_fine']:.1f}"
                print(f"the trained demo's report, with the training-free CAMs beside its own: {write_report(out)}")
            else:
                beside = f"; run 'tag2mask demo --out {out}' for the trained seeds beside them"
            a = m["argmax_clip_es"]
            print(f"training-free seed mIoU on the synthetic ground truth: {TRAINING_FREE_SEEDS[m['seed_method']]} "
                  f"{m['seeds_clip_es']:.1f}, "
                  f"CLIP-ES argmax {a['miou']:.1f} (alpha {a['bg_power']:g} tuned on the ground truth), all "
                  f"background {m['all_background']:.1f}{beside}")
        print(f"training-free seeds: {run_dir / 'seeds_clip_es'}; report: {report} "
              f"({time.perf_counter() - t0:.0f} s in all)")
        return 0
    if m:
        argmax = max(m["argmax_cls"]["miou"], m["argmax_seg"]["miou"])
        print(f"seed mIoU on the synthetic ground truth: fine {m['seeds_fine']:.1f}, coarse {m['seeds_coarse']:.1f}, "
              f"best argmax {argmax:.1f} (bg exponent tuned on the ground truth), all background "
              f"{m['all_background']:.1f}: fine beats argmax by {m['seeds_fine'] - argmax:+.1f} and all background "
              f"by {m['seeds_fine'] - m['all_background']:+.1f} points")
    print(f"fine seeds: {out / 'seeds_fine'}; report: {report} ({time.perf_counter() - t0:.0f} s in all)")
    print(_stage_two_hint(out, "next, stage II (about a minute): tag2mask train-seg --run {run} --net deeplabv3plus"))
    return 0


def _read_metrics(run_dir: Path) -> dict:
    import json

    path = run_dir / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        handlers = {"config": _cmd_config, "info": _cmd_info, "demo": _cmd_demo, "superpixels": _cmd_superpixels,
                    "cams": _cmd_cams, "seeds": _cmd_seeds, "train": _cmd_train, "evaluate": _cmd_evaluate,
                    "run": _cmd_run, "segment": _cmd_segment, "report": _cmd_report, "train-seg": _cmd_train_seg,
                    "predict": _cmd_predict, "refine": _cmd_refine}
        handler = handlers[args.command]
        try:
            return handler(args)
        finally:
            _release_locks()
    except NotBuiltError as e:
        return _fail(f"tag2mask {args.command}: {e}", 2)
    except Tag2MaskError as e:
        return _fail(f"tag2mask {args.command}: error: {e}", 2)
    except KeyboardInterrupt:
        return _fail(f"tag2mask {args.command}: interrupted; finished work is kept, run the same command to resume",
                     130)
    except (OSError, MemoryError) as e:
        if getattr(args, "debug", False) or _debug_env():
            _cleanup_after_failure()
            raise
        return _fail(f"tag2mask {args.command}: error: {system_error_message(e)} (--debug shows the traceback)", 2)
    except BaseException as e:
        message = distributed_failure_message(e)
        if message is not None and not (getattr(args, "debug", False) or _debug_env()):
            return _fail(f"tag2mask {args.command}: error: {message}", 1)
        _cleanup_after_failure()
        raise


def _debug_env() -> bool:
    import os

    return os.environ.get("TAG2MASK_DEBUG", "") not in ("", "0")


def distributed_failure_message(e: BaseException) -> str | None:
    """One line naming this rank when ``e`` is a failed or timed-out collective under torchrun, else None."""
    dist_module = sys.modules.get("torch.distributed")
    if dist_module is None or not dist_module.is_available() or not dist_module.is_initialized():
        return None
    text = str(e)
    dist_error = getattr(dist_module, "DistError", ())
    if not (isinstance(e, dist_error) or (isinstance(e, RuntimeError) and any(
            k in text.lower() for k in ("timed out", "timeout", "connection closed", "connection reset")))):
        return None
    rank, world = dist_module.get_rank(), dist_module.get_world_size()
    first = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
    return (f"rank {rank} of {world}: a collective failed ({first}); another rank stopped (its own error is above) "
            "or hangs longer than runtime.process_group_timeout allows. Finished work is kept: fix that rank's "
            "problem and run the same command again")


def system_error_message(e: BaseException) -> str:
    """One line for an operating-system failure: what happened, to which path, and what to do."""
    import errno

    if isinstance(e, MemoryError):
        return ("out of memory: a very large image or batch? Lower the batch size, use a smaller image, or run on a "
                "machine with more memory")
    path = getattr(e, "filename", None)
    where = f" ({path})" if path else ""
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return (f"no space left on the device{where}: free some space, or point the run (--run-dir) or the cache "
                "(TAG2MASK_CACHE) at a disk with room; the same command then resumes")
    if code == errno.EROFS:
        return f"read-only file system{where}: choose a writable folder for the run (--run-dir) or TAG2MASK_CACHE"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}: make the folder writable for you, or choose another one"
    if code == errno.ENOENT:
        return f"no such file or folder{where}"
    return f"{type(e).__name__}: {e.strerror or e}{where}" if isinstance(e, OSError) else f"{type(e).__name__}: {e}"


def _release_locks() -> None:
    if "tag2mask.lock" in sys.modules:
        sys.modules["tag2mask.lock"].release_all()


def _cleanup_after_failure() -> None:
    """Close open progress bars (so what follows starts on its own line) and remove the run folders this command
    created before any stage began."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None:
        for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
            bar.close()
    if "tag2mask.stages.rundir" in sys.modules:
        sys.modules["tag2mask.stages.rundir"].discard_unstarted_runs()


def _fail(message: str, code: int) -> int:
    _cleanup_after_failure()
    sys.stderr.flush()
    print(message, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
