"""Stable short hashes of settings: what caches and stage folders are keyed by (never a folder name made of
hyper-parameters). No torch, no config import: any layer may use it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """A deterministic JSON text of a config (sub-)tree: sorted keys, floats in repr form."""
    return json.dumps(plain(obj), sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def plain(obj: Any) -> Any:
    """``obj`` with dataclasses turned into dicts (recursively through dicts), ready for JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def config_hash(obj: Any, *parents: str) -> str:
    """A stable 12-hex-digit hash of a config sub-tree and, optionally, the hashes of the stage's inputs."""
    h = hashlib.sha256(canonical_json(obj).encode())
    for p in parents:
        h.update(b"|" + p.encode())
    return h.hexdigest()[:12]
