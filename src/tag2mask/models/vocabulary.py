"""What a CLIP can know: its vocabulary, and a warning when a run asks it for classes or images beyond it.

A CLIP checkpoint stored with a compact token embedding (only the rows of the words it was trained on, see
:func:`tag2mask.models.clip.compact_token_embedding`) has a *restricted vocabulary*: a word outside it embeds as
zeros, so prompts naming it carry no meaning. The packaged ``tiny-synthetic`` model is such a checkpoint, and it
has also only ever seen the synthetic shapes images. Its seeds on real photos or other class names are
meaningless; :func:`model_fit_warning` says so in one sentence that names the real weights to use.

The vocabulary is read from the safetensors header and the sparse rows alone (no model is built), so the check
is cheap enough for every run, ``segment`` call and report.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tag2mask.models.weights import packaged_weight, resolve_weight

REAL_CLIP = "models.clip=ViT-B/16 (OpenAI's ViT-B-16.pt; README, section Weights)"
"""The real weights a warning points at."""


def known_token_ids(path: str | os.PathLike[str]) -> frozenset[int] | None:
    """The token ids a CLIP file has embeddings for, or None when it has the full vocabulary (any file that is not a
    safetensors file with a compact token embedding)."""
    from tag2mask.models.clip import SPARSE_ROWS, is_safetensors

    if not is_safetensors(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            if SPARSE_ROWS not in f.keys():
                return None
            return frozenset(int(i) for i in f.get_tensor(SPARSE_ROWS).tolist())
    except Exception:  # an unreadable file is reported by the loader, not here
        return None


def unknown_names(names: Iterable[str], known: frozenset[int]) -> list[str]:
    """The names (in order, once each) with at least one token outside ``known``; empty names are never unknown."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    out: list[str] = []
    for name in names:
        if name and name not in out and any(t not in known for t in tokenizer.encode(name)):
            out.append(name)
    return out


def model_fit_warning(clip: str, names: Sequence[str], *, synthetic_images: bool | None) -> str | None:
    """One sentence when the CLIP ``clip`` (a name or path) cannot know ``names`` or the images, else None.

    ``names``: every class or background name CLIP will read. ``synthetic_images``: whether the images are the
    synthetic shapes (None: unknown, e.g. one image given to ``segment``); a packaged model made for those images
    warns on any other.
    """
    try:
        path = resolve_weight(clip, kind="clip")
    except Exception:  # a missing file is the loader's error to give
        return None
    known = known_token_ids(path)
    packaged = packaged_weight(str(clip), "clip") or packaged_weight(Path(path).name, "clip")
    unknown = unknown_names(names, known) if known is not None else []
    foreign_images = packaged is not None and synthetic_images is False
    if not unknown and not foreign_images:
        return None
    what = []
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        what.append(f"the class names {shown}")
    if foreign_images:
        what.append("images other than its synthetic shapes")
    label = f"{clip!r}" if packaged is None else f"{packaged.name!r} (made for the synthetic demo shapes only)"
    return (f"warning: the CLIP {label} cannot know {' or '.join(what)}, so these CAMs and seeds mean nothing; "
            f"use real weights: {REAL_CLIP}.")


def is_synthetic_root(dataset: str, root: str | os.PathLike[str]) -> bool:
    """Whether a dataset holds the synthetic shapes (the ``synthetic`` kind, or a folder written by
    :func:`tag2mask.data.make_synthetic_dataset`, which leaves ``synthetic.json`` in its root)."""
    return dataset == "synthetic" or (Path(root).expanduser() / "synthetic.json").is_file()
