"""``segment`` (any image, with a run or training-free), ``report``, ``config``, ``info`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tag2mask.commands.common import read_metrics, stage_two_hint
from tag2mask.errors import NotBuiltError, Tag2MaskError


def segment_command(args: argparse.Namespace) -> int:
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


def report_command(args: argparse.Namespace) -> int:
    from tag2mask.viz.report import write_report

    path = write_report(Path(args.run), Path(args.out) if args.out else None, n_images=args.images)
    print(f"report: {path}")
    return 0


def config_command(args: argparse.Namespace) -> int:
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
        from tag2mask.stages.graph import stage_hashes

        for stage, h in stage_hashes(config).items():
            print(f"{stage:14s} {h}")
    return 0


def info_command(args: argparse.Namespace) -> int:
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
    from tag2mask.models.weights import PACKAGED_WEIGHTS, find_hub_models

    hub = find_hub_models()
    print(f"{'hub models':18s} (folder <org>/<name> in the weights folder, or the Hugging Face cache)")
    what_width, repo_width = (max(len(row[i]) for row in hub) for i in (0, 1))
    for what, repo, found in hub:
        print(f"  {what:{what_width}s} {repo:{repo_width}s} {found if found else 'not found'}")

    print(f"{'packaged models':18s} (ship with tag2mask)")
    for w in PACKAGED_WEIGHTS:
        print(f"  {w.name:16s} {w.filename:{width}s} {w.path if w.path.is_file() else 'missing: reinstall tag2mask'}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
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
    m = read_metrics(run_dir)
    if args.training_free:
        if m:
            trained = read_metrics(out)
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
    print(stage_two_hint(out, "next, stage II (about a minute): tag2mask train-seg --run {run} --net deeplabv3plus"))
    return 0
