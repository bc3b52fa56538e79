"""What each per-image output was made from: a stage folder's input ledger, so that results follow the data.

Every per-image stage (superpixels, cams, seeds, predict, refine) writes one output file per image. Beside them,
``inputs.jsonl`` keeps one line per finished image, ``{"id": ..., "input": ...}``: a digest of everything that
image's output was computed from (the image file's name, size and modification time, its tags, the CAM or
superpixel file it read, the prompt weights' content, ...; each stage says which). An image counts as done only when
its output exists *and* its last ledger line carries the digest of its inputs as they are now. Replace an image,
its mask or its tags in place and the next command recomputes that image; each downstream output records the
files it read, so the change follows the image through every later stage while the other images stay skipped.

Lines are appended with one ``write`` to a file opened with ``O_APPEND``, which keeps the lines of the workers of a
sharded stage whole. A torn last line (kill -9) is ignored: that image is computed again. A folder made before the
ledger existed (tag2mask 0.1) has outputs and no ledger: its outputs are adopted as made from the current inputs,
as tag2mask 0.1 took them, and recorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tag2mask.io import file_stamp, new_file_mode, stamp_digest

LEDGER = "inputs.jsonl"


class InputLedger:
    """The input ledger of the stage folder ``folder``; ``inputs_of(id)`` gives what that image's output is made
    from (any JSON-able value, e.g. file stamps; only its digest is stored)."""

    def __init__(self, folder: str | os.PathLike[str], inputs_of: Callable[[str], Any]) -> None:
        self.path = Path(folder) / LEDGER
        self._inputs_of = inputs_of
        self._digests: dict[str, str] = {}

    def digest(self, item: str) -> str:
        """The digest of ``item``'s inputs, taken once per ledger object (the one recorded when it is done)."""
        if item not in self._digests:
            self._digests[item] = stamp_digest(self._inputs_of(item))
        return self._digests[item]

    def recorded(self) -> dict[str, str]:
        """``id → digest`` from the last whole line of each id (unreadable lines are skipped)."""
        out: dict[str, str] = {}
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                item, digest = entry["id"], entry["input"]
            except (ValueError, TypeError, KeyError):
                continue
            if isinstance(item, str) and isinstance(digest, str):
                out[item] = digest
        return out

    def pending(self, ids: Iterable[str], output_for: Callable[[str], Path]) -> list[str]:
        """The ids whose output is missing or was made from other inputs than they are now, in order."""
        ids = list(ids)
        recorded = self.recorded()
        if not self.path.exists():  # a folder of tag2mask 0.1: adopt what it holds
            adopted = {item for item in ids if output_for(item).exists()}
            try:
                self.record_all(item for item in ids if item in adopted)
            except OSError:  # e.g. a read-only shared cache: adopted for this call all the same
                pass
            return [item for item in ids if item not in adopted]
        return [item for item in ids if not output_for(item).exists() or recorded.get(item) != self.digest(item)]

    def done(self, ids: Iterable[str], output_for: Callable[[str], Path]) -> int:
        """How many of ``ids`` are done (output present, made from the current inputs)."""
        ids = list(ids)
        return len(ids) - len(self.pending(ids, output_for))

    def record(self, item: str) -> None:
        """Note that ``item``'s output now exists, made from the inputs its digest was taken of."""
        self.record_all([item])

    def record_all(self, items: Iterable[str]) -> None:
        data = "".join(json.dumps({"id": item, "input": self.digest(item)}) + "\n" for item in items).encode()
        if not data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, new_file_mode())
        try:
            end = os.fstat(fd).st_size
            if end and os.pread(fd, 1, end - 1) != b"\n":  # after a torn line (kill -9): start a new one
                data = b"\n" + data
            while data:  # one write for one line; a long list of lines may take several
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)


def data_fingerprint(dataset: Any, files_of: Callable[[str], Iterable[Path]] | None = None) -> str:
    """A digest of everything a whole-split stage (prompt training, stage II) reads: every sample's image stamp and
    tags (:meth:`~tag2mask.data.base.SegDataset.sample_stamp`) and, with ``files_of``, the stamps of each sample's
    other files (e.g. its seed PNG). It changes when any image, tag or such file is replaced, added or removed."""
    stamps = []
    for item in dataset.ids:
        extra = [file_stamp(p) for p in files_of(item)] if files_of is not None else []
        stamps.append([item, dataset.sample_stamp(item), extra])
    return stamp_digest(stamps)


def with_data(config_hash: str, fingerprint: str) -> str:
    """A stage hash that covers the settings (``config_hash``) and the data (``fingerprint``): 12 hex digits."""
    return stamp_digest([config_hash, fingerprint])[:12]
