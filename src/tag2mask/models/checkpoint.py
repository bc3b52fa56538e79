"""Read a weight file into a plain state dict, without running pickled code or TorchScript.

Four layouts are read: a TorchScript archive (OpenAI's official CLIP ``.pt`` files), whose tensors are rebuilt
from the archive by :mod:`tag2mask.models.torchscript` (TorchScript's own loader is never called: it would run
the file's code); a ``.safetensors`` file; and a ``torch.save`` file of a state dict (optionally wrapped as
``{"state_dict": ...}`` or ``{"model": ...}``), read with ``torch.load(..., weights_only=True)``; and a Hugging
Face sharded checkpoint, given by its index (``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``),
whose shards beside it are read as above and joined (:func:`read_sharded_state_dict`).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch

from tag2mask.errors import Tag2MaskError


def is_torchscript(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a TorchScript archive (a zip holding ``constants.pkl``), not a ``torch.save`` file."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_state_dict(path: str | os.PathLike[str], what: str = "model") -> dict[str, torch.Tensor]:
    """The tensors of the weight file ``path``, on CPU, keyed by parameter name.

    ``what`` names the model in error messages (e.g. ``"CLIP"``).

    Raises:
        Tag2MaskError: the file cannot be read, or does not hold a mapping of names to tensors.
    """
    path = Path(path)
    if path.name.endswith(".index.json"):
        return read_sharded_state_dict(path, what)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        elif is_torchscript(path):
            from tag2mask.models.torchscript import read_torchscript_state_dict

            try:
                obj = read_torchscript_state_dict(str(path))
            except Tag2MaskError as e:
                raise Tag2MaskError(f"refused {what} weight file {path}: {e}. Use the official file, or save the "
                                    "model's plain state dict (torch.save(model.state_dict(), ...)).") from None
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Tag2MaskError:
        raise
    except Exception as e:  # torch raises many types (RuntimeError, UnpicklingError, EOFError, ...)
        # torch's own text is chained, not quoted: for weights_only refusals it advises weights_only=False.
        raise Tag2MaskError(
            f"cannot read {what} weight file {path} ({type(e).__name__}): it is corrupt or truncated (download it "
            f"again), not a PyTorch checkpoint, or a checkpoint holding Python objects besides tensors, which "
            f"tag2mask does not unpickle (save its plain state dict instead)."
        ) from e
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise Tag2MaskError(
            f"{what} weight file {path} does not hold a state dict (a mapping of parameter names to tensors)."
        )
    return obj


def read_json_file(path: Path, max_bytes: int, what: str) -> object:
    """The JSON value in ``path``, refused unread when larger than ``max_bytes``; a Tag2MaskError naming ``what``
    (e.g. ``"the CLIP config"``) and the file when it is too large, unreadable, not JSON or nested too deep."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise Tag2MaskError(f"{what} {path} is {size} bytes: too large (at most {max_bytes})")
        return json.loads(path.read_bytes())
    except Tag2MaskError:
        raise
    except (OSError, ValueError, RecursionError) as e:  # ValueError covers JSON and Unicode decoding errors
        raise Tag2MaskError(f"cannot read {what} {path}: not a JSON file ({type(e).__name__})") from e


MAX_INDEX_BYTES = 16 * 2**20
"""The largest shard index read (the largest published indexes, of models with tens of thousands of tensors, are
a few MB)."""


def read_sharded_state_dict(index: str | os.PathLike[str], what: str = "model") -> dict[str, torch.Tensor]:
    """The tensors of a sharded Hugging Face checkpoint, joined: ``index`` is its ``*.index.json``, whose
    ``weight_map`` names the shard file (in the same folder) of every tensor.

    Each shard is read with :func:`read_state_dict` (safetensors, or ``.bin`` with ``weights_only``), and must hold
    exactly the tensors the index gives it.

    Raises:
        Tag2MaskError: the index is not a JSON object with a ``weight_map`` of tensor names to plain file names, a
            shard is missing or unreadable, or a shard's tensors differ from the index's.
    """
    index = Path(index)
    obj = read_json_file(index, MAX_INDEX_BYTES, f"the {what} shard index")
    weight_map = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise Tag2MaskError(f"{what} shard index {index} has no weight_map of tensor names to shard file names")
    shards: dict[str, set[str]] = {}
    for key, name in weight_map.items():
        shards.setdefault(name, set()).add(key)
    for name in shards:  # every name checked before any file is read
        if name != Path(name).name or name in ("", ".", "..") or not name.endswith((".safetensors", ".bin")):
            raise Tag2MaskError(f"{what} shard index {index} names {name!r}: a shard must be a .safetensors or "
                                ".bin file beside the index")
        if not (index.parent / name).is_file():
            raise Tag2MaskError(f"{what} shard {index.parent / name} (named by {index.name}) is missing: fetch "
                                "every file the index names, or the whole repository")
    state: dict[str, torch.Tensor] = {}
    for name, keys in shards.items():
        shard = index.parent / name
        tensors = read_state_dict(shard, what)
        if set(tensors) != keys:
            extra, missing = sorted(set(tensors) - keys), sorted(keys - set(tensors))
            raise Tag2MaskError(f"{what} shard {shard} does not hold what {index.name} says: "
                                f"missing {missing[:5]}, not in the index {extra[:5]}")
        state.update(tensors)
    return state


def short_reason(e: BaseException) -> str:
    """One line saying why loading failed: the first informative line of ``e``, at most 300 characters.

    ``load_state_dict`` errors open with a bare "Error(s) in loading state_dict for X:" header and can list
    hundreds of keys; the line after the header is the useful one.
    """
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading"):
        return lines[1][:300]
    return lines[0][:300] if lines else type(e).__name__
