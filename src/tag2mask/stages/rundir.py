"""The run directory: resolved config, manifest, one folder per stage, resumable per-item work.

Layout::

    RUN/
      config.yaml        the resolved config (what ``tag2mask config show`` prints)
      manifest.json      per stage: config hash, inputs, counts, timings, versions, status
      <stage>/           one folder per stage (e.g. ``superpixels``, ``cams_cls``, ``seeds_fine``)
        stage.json       the stage's config hash; a mismatch means the folder holds another config's results

Every file is written atomically (temporary file + rename, :mod:`tag2mask.io`), so a run killed at any point
leaves only complete files. Per-image stages skip images whose output file already exists and was made from the
image's inputs as they are now (:mod:`tag2mask.stages.inputs`), which makes any stage resumable where it stopped
and makes results follow the data; a training stage is skipped when the manifest says it finished with the same
hash, which covers its settings and the data it read (:func:`tag2mask.stages.inputs.data_fingerprint`).
"""

from __future__ import annotations

import datetime as _dt
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from tag2mask.config import Config, config_from_dict
from tag2mask.errors import ConfigError, Tag2MaskError
from tag2mask.io import read_json, write_json, write_text
from tag2mask.lock import LOCK_NAME

_PACKAGES = ("tag2mask", "torch", "torchvision", "numpy", "open_clip_torch", "segment-anything", "pycocotools",
             "segmentation-models-pytorch", "transformers")


def versions() -> dict[str, str]:
    """Versions of Python and the packages that decide results (read from metadata; imports nothing)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class StageRecord:
    """What the manifest keeps about one stage."""

    config_hash: str
    status: str = "running"  # running | done
    inputs: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    started: str = ""
    finished: str = ""
    versions: dict[str, str] = field(default_factory=dict)


_CREATED: list[tuple[Path, bool]] = []
"""Run folders this process made a run of: (path, whether the folder itself existed before)."""


def _empty_stage_folders(path: Path, stages: dict[str, Any]) -> list[Path] | None:
    """The folders of the stages recorded in ``stages`` when none has finished and none holds anything but its
    ``stage.json`` (nothing was computed), else None."""
    folders = []
    for name, record in stages.items():
        if not isinstance(record, dict) or record.get("status") == "done":
            return None
        folder = path / name
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            return None
        if folder.is_dir():
            if any(p.name != "stage.json" for p in folder.rglob("*") if not p.is_dir()):
                return None
            folders.append(folder)
    return folders


def discard_unstarted_runs() -> list[Path]:
    """Undo the run folders this process created in which nothing was computed (a command that failed before or
    at the very start of its first stage leaves no half-made run behind); returns the folders removed. Folders
    that existed before keep everything but what was written here."""
    removed = []
    while _CREATED:
        path, existed = _CREATED.pop()
        try:
            manifest = read_json(path / RunDir.MANIFEST) if (path / RunDir.MANIFEST).is_file() else {}
        except (OSError, ValueError):
            continue
        stage_folders = _empty_stage_folders(path, manifest.get("stages") or {})
        if stage_folders is None:
            continue
        for folder in sorted(stage_folders, key=lambda p: len(p.parts), reverse=True):
            shutil.rmtree(folder, ignore_errors=True)
            if folder.parent != path and folder.parent.is_dir() and not any(folder.parent.iterdir()):
                folder.parent.rmdir()  # e.g. stage2/ once stage2/<net> is gone
        for name in (RunDir.CONFIG, RunDir.MANIFEST):
            (path / name).unlink(missing_ok=True)
        if not existed:
            (path / LOCK_NAME).unlink(missing_ok=True)
            try:
                path.rmdir()  # only when nothing else is inside
            except OSError:
                continue
        removed.append(path)
    return removed


class RunDir:
    """One pipeline run on disk. Create with :meth:`create` (new or resumed) or :meth:`open` (existing)."""

    CONFIG = "config.yaml"
    MANIFEST = "manifest.json"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- creation -------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, config: Config) -> RunDir:
        """Start a run in ``path``, or resume it if it already holds a run.

        Resuming with a different config is allowed: each stage compares its own config hash and redoes
        only what changed (see :meth:`begin_stage`). The new config replaces ``config.yaml``.
        """
        run = cls(path)
        if not (run.path / cls.CONFIG).is_file():  # a folder holding only our lock file counts as new
            existed = run.path.is_dir() and any(p.name != LOCK_NAME for p in run.path.iterdir())
            _CREATED.append((run.path, existed))
        run.path.mkdir(parents=True, exist_ok=True)
        write_text(run.path / cls.CONFIG, config.to_yaml())
        if not (run.path / cls.MANIFEST).exists():
            write_json(run.path / cls.MANIFEST, {"created": _now(), "stages": {}})
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """Open an existing run; a clear error if ``path`` is not one."""
        run = cls(path)
        if not (run.path / cls.CONFIG).is_file():
            raise Tag2MaskError(f"{run.path} is not a tag2mask run directory (no {cls.CONFIG}): make one with "
                                f"tag2mask run --preset PRESET --run-dir {run.path} (or tag2mask demo --out "
                                f"{run.path}), or give the folder of an existing run")
        return run

    # -- config and manifest --------------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        values = yaml.safe_load((self.path / self.CONFIG).read_text(encoding="utf-8")) or {}
        return config_from_dict(values)

    def manifest(self) -> dict[str, Any]:
        path = self.path / self.MANIFEST
        return read_json(path) if path.exists() else {"created": _now(), "stages": {}}

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.path / self.MANIFEST, manifest)

    def set_warnings(self, warnings: list[str]) -> None:
        """Record what the run should tell its reader (e.g. a CLIP that cannot know the classes); the report
        shows them at the top. Replaces the warnings of an earlier call."""
        manifest = self.manifest()
        if manifest.get("warnings", []) != warnings:
            manifest["warnings"] = warnings
            self._write_manifest(manifest)

    def set_data_check(self, split: str, skipped: list[tuple[str, str]]) -> None:
        """Record the data check of ``split``: the samples left out (``data.on_error=skip``) with their reasons."""
        manifest = self.manifest()
        entry = {"split": split, "skipped": [[i, why] for i, why in skipped]}
        if manifest.get("data_check") != entry:
            manifest["data_check"] = entry
            self._write_manifest(manifest)

    def stage_record(self, stage: str) -> StageRecord | None:
        rec = self.manifest()["stages"].get(stage)
        return StageRecord(**rec) if rec else None

    # -- stages ---------------------------------------------------------------------------------------------

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    def is_done(self, stage: str, config_hash: str) -> bool:
        """True when ``stage`` finished with exactly this config hash (then it can be skipped)."""
        rec = self.stage_record(stage)
        return rec is not None and rec.status == "done" and rec.config_hash == config_hash

    def begin_stage(self, stage: str, config_hash: str, inputs: dict[str, Any] | None = None) -> Path:
        """Prepare ``stage``'s folder for work under ``config_hash`` and return it.

        A folder left by the same config is kept (its finished items are reused: resume). A folder made
        under another config hash is cleared first, so stale results never mix with new ones.
        """
        out = self.stage_dir(stage)
        if out.is_symlink():
            raise Tag2MaskError(f"stage folder {out} is a symbolic link (to {out.resolve()}): tag2mask clears and "
                                "rewrites stage folders, which would reach through the link; replace it by a real "
                                "folder (or move the whole run with --run-dir)")
        marker = out / "stage.json"
        if marker.exists() and read_json(marker).get("config_hash") != config_hash:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            write_json(marker, {"stage": stage, "config_hash": config_hash})
        manifest = self.manifest()
        prev = manifest["stages"].get(stage)
        seconds = prev["seconds"] if prev and prev.get("config_hash") == config_hash else 0.0
        manifest["stages"][stage] = StageRecord(
            config_hash=config_hash, inputs=inputs or {}, seconds=seconds, started=_now(), versions=versions()
        ).__dict__
        self._write_manifest(manifest)
        return out

    def end_stage(self, stage: str, counts: dict[str, int], seconds: float) -> None:
        """Mark ``stage`` done, adding ``seconds`` to the time spent on it across resumes."""
        manifest = self.manifest()
        rec = manifest["stages"].get(stage)
        if rec is None:
            raise ConfigError(f"stage {stage!r} was never begun in {self.path}")
        rec.update(status="done", counts=counts, seconds=round(rec.get("seconds", 0.0) + seconds, 3), finished=_now())
        self._write_manifest(manifest)


def shard(items: Sequence[Any], rank: int = 0, world_size: int = 1) -> list[Any]:
    """The items one worker of ``world_size`` handles: every ``world_size``-th item starting at ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    return list(items[rank::world_size])


@dataclass
class ItemsResult:
    """What a per-image stage reports: its folder, how many images are done (all workers) out of how many, how
    many this call computed, and how long it took."""

    folder: Path
    done: int
    total: int
    computed: int
    seconds: float
    skipped: int = 0  # inputs skipped under data.on_error=skip

    @property
    def complete(self) -> bool:
        return self.done == self.total


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
