"""What several commands share: the config and run folder of a command, its lock, its ranks, evaluation of a
folder of label PNGs, and the hint printed after the seeds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tag2mask.errors import Tag2MaskError

if TYPE_CHECKING:  # annotations only: the commands import the heavy modules when they run
    from tag2mask.config import Config
    from tag2mask.stages.rundir import RunDir


def load_config_and_run(args: argparse.Namespace, writes: bool = True) -> tuple[Config, RunDir | None]:
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
    lock_run(RunDir(args.run), args)
    return config, RunDir.create(args.run, config)


def lock_run(run: RunDir, args: argparse.Namespace) -> None:
    """Own ``run`` for a command that writes into it (shared between ``--shard`` workers; torchrun: the lead)."""
    from tag2mask.lock import lock_folder

    shard = bool(getattr(args, "shard", None))
    if shard or lead_process():
        lock_folder(run.path, "run directory", shared=shard)


def lead_process() -> bool:
    """Not a torchrun rank other than 0 (those leave the folder's lock to their lead)."""
    import os

    return int(os.environ.get("RANK", "0") or 0) == 0


def ranks(args: argparse.Namespace, config: Config) -> tuple[int, int]:
    """``--shard i/n`` (independent processes), else torchrun's ranks (joining its process group), else (0, 1)."""
    from tag2mask.stages.common import join_process_group, worker_shard

    return worker_shard(args.shard) if args.shard else join_process_group(config)


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """``key=value`` items → (config overrides: dotted keys of a config section, recipe overrides: the rest)."""
    from tag2mask.config import Config

    sections = set(Config.__dataclass_fields__)
    config_items = [o for o in items if "." in o.split("=", 1)[0] and o.split(".", 1)[0] in sections]
    return config_items, [o for o in items if o not in config_items]


def run_of(path: Path, explicit: str | None, overrides: list[str]) -> tuple[Config, RunDir]:
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


def evaluate_into(config: Config, folder: Path, split: str, limit: int | None, tuned: list[str]) -> float | None:
    """Evaluate ``folder``'s PNGs on ``split`` when it has ground truth; writes folder/evaluation.{json,md}."""
    from tag2mask.stages.common import open_split
    from tag2mask.stages.evaluate import gt_tuned_choices, miou_percent, run_evaluate, write_report

    if not open_split(config, split).has_masks:
        return None
    report = run_evaluate(config, folder, split, tuned_on_gt=[*gt_tuned_choices(config), *tuned], limit=limit,
                          show_progress=False)
    write_report(report, folder / "evaluation")
    return miou_percent(report)


def count_files(folder: Path, config: Config, split: str, limit: int | None, suffix: str) -> int:
    """How many images of ``split`` (its first ``limit``) have ``folder/<id><suffix>``."""
    from tag2mask.stages.common import open_split

    ids = open_split(config, split).ids
    return sum((folder / f"{i}{suffix}").is_file() for i in (ids[:limit] if limit else ids))


def stage_two_hint(run_dir: Path, untrained: str) -> str:
    """What to do after the seeds: train stage II, or, when a network is already trained, use it."""
    root = run_dir / "stage2"
    trained = sorted(d.name for d in root.iterdir() if (d / "model.safetensors").is_file()) if root.is_dir() else []
    if not trained:
        return untrained.format(run=run_dir)
    return (f"stage II already trained: {', '.join(trained)} in {root}; "
            f"next: tag2mask predict --checkpoint {root / trained[0]}")


def read_metrics(run_dir: Path) -> dict:
    import json

    path = run_dir / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
