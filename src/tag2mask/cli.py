"""The ``tag2mask`` command: its parser (one small function per command) and the dispatch to
:mod:`tag2mask.commands`, which does each command's work through the stages.

Heavy libraries (torch, open_clip, segment_anything) are imported inside the commands that need them, so
``tag2mask --help`` answers at once. Errors meant for the user (:class:`tag2mask.errors.Tag2MaskError`) print
one line and exit with code 2 (1 for a failed collective under torchrun); an interruption exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from tag2mask import __version__
from tag2mask.errors import NotBuiltError, Tag2MaskError, distributed_failure_message, system_error_message


def _add_config_args(p: argparse.ArgumentParser, run_required: bool = False) -> None:
    p.add_argument("--preset", default="voc", help="voc, coco, demo (training-free: voc-clip-es, coco-clip-es, "
                   "demo-clip-es), or a YAML file (default: %(default)s)")
    p.add_argument("--run", "--run-dir", dest="run", metavar="RUN_DIR", required=run_required,
                   help="use (and record into) this run folder's config.yaml; created with --preset if new (under torchrun write --run-dir)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.root=/data/VOC2012")


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("cls", "seg"), required=True, help="classification (coarse) or segmentation (fine)")
    p.add_argument("--split", help="dataset split (default: data.train_split)")
    p.add_argument("--shard", metavar="i/n", help="process every n-th image starting at i (default: torchrun rank)")
    p.add_argument("--limit", type=int, help="only the first N images of the split")


def _superpixels_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return sp


def _cams_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return cams


def _train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return train


def _seeds_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    seeds = sub.add_parser(
        "seeds",
        help="SAMS seeds from CAMs and quasi-superpixels (also argmax and dense-CRF seeds)",
        description="Seeds from a run's CAMs (task cls → coarse seeds, seg → fine seeds) by the method of "
        "seeds.coarse / seeds.fine (sams, argmax or crf), as palette PNGs in RUN/seeds_<coarse|fine>/.",
    )
    _add_config_args(seeds, run_required=True)
    _add_task_args(seeds)
    seeds.add_argument("--cams", metavar="DIR", help="CAM folder (default: RUN/cams_<task>)")
    return seeds


def _evaluate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return ev


def _train_seg_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return ts


def _predict_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return pr


def _refine_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return rf


def _run_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return run


def _segment_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return seg


def _report_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    rep = sub.add_parser("report", help="write a run's self-contained HTML report (seed quality, efficiency, figures)")
    rep.add_argument("run", metavar="RUN_DIR")
    rep.add_argument("--out", help="HTML file (default: RUN/report.html)")
    rep.add_argument("--images", type=int, default=4, help="images with figures (default: %(default)s)")
    return rep


def _demo_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return demo


def _info_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    info = sub.add_parser("info", help="versions, device, and which weight files were found where")
    return info


def _config_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    return cfg


_COMMANDS: tuple[tuple[str, Callable[[argparse._SubParsersAction], argparse.ArgumentParser], str], ...] = (
    ("superpixels", _superpixels_parser, "method:superpixels_command"),
    ("train", _train_parser, "method:train_command"),
    ("cams", _cams_parser, "method:cams_command"),
    ("seeds", _seeds_parser, "method:seeds_command"),
    ("evaluate", _evaluate_parser, "method:evaluate_command"),
    ("run", _run_parser, "method:run_command"),
    ("train-seg", _train_seg_parser, "stage_two:train_seg_command"),
    ("predict", _predict_parser, "stage_two:predict_command"),
    ("refine", _refine_parser, "stage_two:refine_command"),
    ("segment", _segment_parser, "tools:segment_command"),
    ("report", _report_parser, "tools:report_command"),
    ("demo", _demo_parser, "tools:demo_command"),
    ("info", _info_parser, "tools:info_command"),
    ("config", _config_parser, "tools:config_command"),
)
"""Every command: its name, the function that adds its parser, and its handler (``module:function`` in
:mod:`tag2mask.commands`, imported only when the command runs)."""


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
    for _name, add, handler in _COMMANDS:
        add(sub).set_defaults(handler=handler)
    return p


def _handler(spec: str) -> Callable[[argparse.Namespace], int]:
    module, function = spec.split(":")
    return getattr(importlib.import_module(f"tag2mask.commands.{module}"), function)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        handler = _handler(args.handler)
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
