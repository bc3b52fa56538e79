"""Reading a run folder for the report: its config, manifest and metrics, evaluation reports, CAM and seed files,
quasi-superpixel arrays, prompt weights (their header only) and training logs. Every reader returns None (or an
empty value) for a missing or unreadable piece: a report never fails on one."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tag2mask.io import read_json
from tag2mask.viz import figures as fig


TASKS = ("cls", "seg")


SEEDS_OF_TASK = {"cls": "seeds_coarse", "seg": "seeds_fine"}


TRAINING_FREE_DIR = "training-free"
"""Where ``tag2mask demo --training-free`` puts its run inside the trained demo's folder."""


@dataclass
class RunView:
    """What the report reads from a run folder; every field may be missing (``None`` / empty)."""

    path: Path
    config: Any = None  # tag2mask.config.Config
    config_error: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None

    @property
    def stages(self) -> dict[str, Any]:
        return self.manifest.get("stages", {}) or {}

    def stage(self, name: str) -> dict[str, Any] | None:
        rec = self.stages.get(name)
        return rec if isinstance(rec, dict) else None

    def superpixels_folder(self) -> Path | None:
        """The cache folder of the split's quasi-superpixels: the manifest's, else the config's default."""
        rec = self.stage("superpixels")
        folder = (rec or {}).get("inputs", {}).get("folder")
        if folder:
            return Path(folder)
        if self.config is not None:
            try:
                from tag2mask.stages.superpixels import superpixels_dir

                default = superpixels_dir(self.config, self.config.data.train_split)
                return default if default.is_dir() else None
            except Exception:  # noqa: BLE001 - a report never fails on a missing piece
                return None
        return None


def read_run(path: Path) -> RunView:
    from tag2mask.config import load_config

    run = RunView(path)
    config_path = path / "config.yaml"
    if config_path.is_file():
        try:
            run.config = load_config(config_path)
            root = Path(run.config.data.root).expanduser()
            if not root.is_absolute() and not root.exists() and (path / root).exists():
                run.config.data.root = str(path / root)  # demo runs keep their dataset inside the run folder
        except Exception as e:  # noqa: BLE001
            run.config_error = f"config.yaml could not be read ({e.__class__.__name__}: {e})"
    else:
        run.config_error = "config.yaml not found"
    if (path / "manifest.json").is_file():
        try:
            run.manifest = read_json(path / "manifest.json")
        except (OSError, ValueError) as e:
            run.manifest = {"error": str(e)}
    if (path / "metrics.json").is_file():
        try:
            run.metrics = read_json(path / "metrics.json")
        except (OSError, ValueError):
            run.metrics = None
    return run


def read_json_safe(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(content, "")``; ``(None, "")`` when the file is absent; ``(None, one-line note)`` when it is unreadable."""
    if not path.is_file():
        return None, ""
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        return None, f"{path.name} unreadable ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if not isinstance(data, dict):
        return None, f"{path.name} unreadable (not a JSON object)"
    return data, ""


def eval_report(run: RunView, name: str) -> dict[str, Any] | None:
    """``RUN/evaluate/<name>_<split>.json`` (any split when the metrics do not name one)."""
    folder = run.path / "evaluate"
    split = (run.metrics or {}).get("split")
    candidates = [folder / f"{name}_{split}.json"] if split else []
    candidates += sorted(folder.glob(f"{name}_*.json")) if folder.is_dir() else []
    for path in candidates:
        if path.is_file():
            try:
                return read_json(path)
            except (OSError, ValueError):
                continue
    return None


def learnable_parameters(path: str | Path) -> tuple[int, list[tuple[str, list[int], str]]]:
    """The element count of a safetensors file and its tensors (name, shape, dtype such as ``"F32"``), read from its
    header only (safetensors' ``safe_open``: no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = []
        for name in f.keys():
            piece = f.get_slice(name)
            tensors.append((name, [int(d) for d in piece.get_shape()], str(piece.get_dtype())))
    return sum(math.prod(shape) for _, shape, _ in tensors), tensors


def context_file(run: RunView, task: str) -> Path:
    from tag2mask.stages.common import context_path

    checkpoint: Any = "final"
    if run.config is not None:
        checkpoint = getattr(run.config.train, task).checkpoint
    chosen = context_path(run.path, task, checkpoint)
    return chosen if chosen.is_file() else run.path / f"train_{task}" / "ctx_final.safetensors"


def read_cam(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    from tag2mask.stages.cams import load_cam_file

    return load_cam_file(path)


def cam_sources(run: RunView) -> list[tuple[str, str, Path]]:
    """The CAM folders a run's figures show, as (key, caption, folder): the trained tasks' for a trained run, the
    training-free CAMs of a training-free run, and those of a training-free run beside a trained one (the demo's
    ``training-free/``), so that the two can be compared image by image."""
    training_free = run.config is not None and getattr(run.config, "pipeline", "fma") == "clip_es"
    sources = [] if training_free else [(task, f"{task} CAM", run.path / f"cams_{task}") for task in TASKS]
    for folder in (run.path / "cams_clip_es", run.path / TRAINING_FREE_DIR / "cams_clip_es"):
        if folder.is_dir():
            sources.append(("clip_es", "training-free CAM (CLIP-ES)", folder))
            break
    return sources


def load_seed(run: RunView, name: str, image_id: str) -> np.ndarray | None:
    path = run.path / name / f"{image_id}.png"
    if not path.is_file():
        return None
    from tag2mask.io import read_label_png

    return read_label_png(path)


@dataclass
class SuperpixelArrays:
    """One image's quasi-superpixels as the report needs them: levels and the exact atom decomposition
    (``masks[k] == membership[atoms, k]``), as :meth:`tag2mask.superpixels.Superpixels.save` stores them."""

    levels: np.ndarray  # S int64
    atoms: np.ndarray  # H×W int32
    membership: np.ndarray  # A×S bool
    atom_area: np.ndarray  # A int64

    def __len__(self) -> int:
        return int(self.levels.shape[0])

    def masks_at(self, size: tuple[int, int]) -> np.ndarray:
        """The ``S×h×w`` bool masks at ``size`` (nearest-neighbour sampling of the atom map)."""
        small = fig.resize_nearest(self.atoms, size)
        return np.ascontiguousarray(np.moveaxis(self.membership[small], -1, 0))


def load_superpixel_arrays(stem: str | Path) -> SuperpixelArrays:
    """Read ``<stem>.npz`` written by :meth:`Superpixels.save` without decoding its RLEs (and without importing
    :mod:`tag2mask.superpixels`, which pulls in segment_anything); falls back to :meth:`Superpixels.load` when the
    file lacks the atom arrays."""
    from tag2mask.io import load_npz

    try:
        a = load_npz(f"{stem}.npz")
        out = SuperpixelArrays(np.asarray(a["levels"], np.int64).reshape(-1), np.asarray(a["atoms"], np.int32),
                                np.asarray(a["atom_membership"], bool), np.asarray(a["atom_area"], np.int64))
        if out.membership.shape != (out.atom_area.shape[0], len(out)) or out.atoms.ndim != 2:
            raise ValueError("atom arrays do not fit")
        return out
    except (KeyError, ValueError, OSError):
        from tag2mask.superpixels import Superpixels

        sp = Superpixels.load(stem)
        return SuperpixelArrays(np.asarray(sp.levels, np.int64), np.asarray(sp.atoms, np.int32),
                                 np.asarray(sp.atom_membership, bool), np.asarray(sp.atom_area, np.int64))


def per_image_miou(run: RunView, name: str) -> dict[str, float | None]:
    """``{image id: mIoU (0..1)}`` of a seed folder, as its evaluation report recorded it (empty when absent)."""
    report = eval_report(run, name) or {}
    values = report.get("per_image_miou")
    return values if isinstance(values, dict) else {}


def read_losses(path: Path, key: str = "loss") -> list[tuple[float, float]]:
    """The finite ``(iter, <key>)`` points of a JSON-lines log; unreadable lines are skipped."""
    points = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            x, y = float(rec["iter"]), float(rec[key])
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            points.append((x, y))
    return points
