"""The resume state of a training loop (prompt training and stage II): one file, replaced in one step.

``<folder>/resume.safetensors`` holds the tensors to restore (weights, optimiser state) and, in the safetensors
header's metadata, what they belong to: the iteration reached, the config (or recipe) hash, the gradient
scaler's state, and ``finished`` once the training is done. Tensors and metadata are written together to a
temporary file and renamed into place (:func:`tag2mask.io.atomic_write`), so a process killed at any moment
leaves either the old state or the new one, never weights of one iteration with the count of another.

:func:`iteration_indices` gives the global batch of iteration ``t`` from the seed alone, so a resumed training
takes exactly the batches it would have taken without the interruption (both loops use it).

A finished stage-II training may keep only the metadata (no tensors): its weights are then the final file's.
States written by tag2mask 0.1.0 (metadata in a separate ``resume.json``) are still read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tag2mask.errors import ConfigError, Tag2MaskError
from tag2mask.io import atomic_write, read_json

FILE = "resume.safetensors"
LEGACY_META = "resume.json"
_KEY = "tag2mask_resume"


def save_state(folder: Path, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``tensors`` (CPU, contiguous) and ``meta`` (JSON-able; must hold ``iteration``) as the resume state."""
    from safetensors.torch import save

    if "iteration" not in meta:
        raise ValueError("resume metadata needs the iteration")
    blob = save(tensors, metadata={_KEY: json.dumps(meta)})
    with atomic_write(Path(folder) / FILE, "wb") as f:
        f.write(blob)
    (Path(folder) / LEGACY_META).unlink(missing_ok=True)  # a 0.1.0 leftover would only confuse a reader


def _unreadable(path: Path, e: BaseException) -> Tag2MaskError:
    return Tag2MaskError(f"resume state {path} is unreadable ({type(e).__name__}): delete it to start this "
                         "training again from the beginning (or from its last checkpoint, by hand)")


def read_meta(folder: Path) -> dict[str, Any] | None:
    """The resume metadata in ``folder`` (None when there is no resume state); reads the header only."""
    path = Path(folder) / FILE
    legacy = Path(folder) / LEGACY_META
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_KEY)
        meta = json.loads(raw) if raw is not None else (read_json(legacy) if legacy.is_file() else None)
    except Exception as e:  # safetensors raises its own errors for truncated or foreign files
        raise _unreadable(path, e) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("iteration"), int):
        raise _unreadable(path, ValueError("no iteration in its metadata"))
    return meta


def load_tensors(folder: Path) -> dict[str, Any]:
    """The tensors of the resume state in ``folder`` (on CPU)."""
    from safetensors.torch import load_file

    path = Path(folder) / FILE
    try:
        return load_file(str(path))
    except Exception as e:
        raise _unreadable(path, e) from None


def check_matches(folder: Path, meta: dict[str, Any], key: str, expected: str) -> None:
    """Tag2MaskError (one line, how to recover) when the state was saved under another config hash."""
    found = meta.get(key)
    if found != expected:
        raise Tag2MaskError(
            f"resume state {Path(folder) / FILE} was saved under another {key.replace('_', ' ')} ({found} here, "
            f"{expected} now): delete {Path(folder)} to train afresh with the current settings, or restore the "
            "settings it was made with"
        )


def remove_orphans(folder: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that a killed process left in ``folder`` and its
    sub-folders; only the process owning the folder may call this. Returns what was removed."""
    removed = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and name.endswith(".tmp"):
                path = Path(root) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def truncate_metrics(path: Path, upto: int) -> None:
    """Keep the lines of a JSON-lines log (``metrics.jsonl``, ``val.jsonl``) of iterations before ``upto`` (the
    rest will be redone after a resume); a torn or unreadable line, as a kill mid-write leaves, is dropped."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            if int(record["iter"]) < upto:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    with atomic_write(path, "w") as f:
        f.write("".join(line + "\n" for line in keep))


def iteration_indices(t: int, n_images: int, batch_size: int, seed: int) -> np.ndarray:
    """The dataset indices of iteration ``t``'s global batch (per-epoch permutation, last partial batch dropped)."""
    per_epoch = n_images // batch_size
    if per_epoch == 0:
        raise ConfigError(f"batch size {batch_size} is larger than the training split ({n_images} images): lower "
                          "train.cls.batch_size / train.seg.batch_size")
    epoch, j = divmod(t, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_images)
    return perm[j * batch_size : (j + 1) * batch_size]
