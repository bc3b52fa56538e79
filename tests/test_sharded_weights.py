"""Sharded Hugging Face checkpoints (``model.safetensors.index.json`` / ``pytorch_model.bin.index.json`` with the
shards beside them), as large repositories publish them: read by their index, joined, and checked against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tag2mask.errors import Tag2MaskError
from tag2mask.models.checkpoint import read_sharded_state_dict, read_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"block.{k}.weight": torch.randn(3, 4, generator=g) for k in range(5)} | {"head.bias": torch.zeros(2)}


def write_shards(folder: Path, state: dict[str, torch.Tensor], n: int = 3, fmt: str = "safetensors") -> Path:
    """``state`` split into ``n`` shards as transformers names them, and their index; returns the index."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    ext = "safetensors" if fmt == "safetensors" else "bin"
    prefix = "model" if fmt == "safetensors" else "pytorch_model"
    weight_map = {}
    for k in range(n):
        name = f"{prefix}-{k + 1:05d}-of-{n:05d}.{ext}"
        part = {key: state[key].contiguous() for key in keys[k::n]}
        if fmt == "safetensors":
            save_file(part, str(folder / name))
        else:
            torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = folder / f"{prefix}.{ext}.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_shards_are_joined_by_their_index(tmp_path: Path, fmt: str) -> None:
    state = _state()
    index = write_shards(tmp_path / "m", state, fmt=fmt)
    for read in (read_sharded_state_dict(index), read_state_dict(index)):
        assert set(read) == set(state) and all(torch.equal(read[k], state[k]) for k in state)


def _index(tmp_path: Path, weight_map: object) -> Path:
    index = write_shards(tmp_path / "m", _state())
    index.write_text(json.dumps({"weight_map": weight_map}))
    return index


def test_a_broken_index_or_shard_is_one_clear_error(tmp_path: Path) -> None:
    index = write_shards(tmp_path / "m", _state())
    good = json.loads(index.read_text())["weight_map"]
    shard = tmp_path / "m" / good["head.bias"]
    cases: list[tuple[object, str]] = [
        ([1, 2], "no weight_map"),
        ({}, "no weight_map"),
        ({"a": 3}, "no weight_map"),
        ({**good, "head.bias": "../outside.safetensors"}, "must be a .safetensors or .bin file beside the index"),
        ({**good, "head.bias": "/etc/passwd"}, "must be a .safetensors or .bin file beside the index"),
        ({**good, "head.bias": "model-00009-of-00009.safetensors"}, "is missing: fetch every file"),
        ({**good, "extra.weight": good["head.bias"]}, r"does not hold what .* says: missing \['extra.weight'\]"),
        ({k: v for k, v in good.items() if k != "head.bias"}, r"not in the index \['head.bias'\]"),
    ]
    for weight_map, message in cases:
        index.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(Tag2MaskError, match=message):
            read_state_dict(index, "CLIP")
    index.write_text("{" * 200_000)
    with pytest.raises(Tag2MaskError, match="not a JSON file"):
        read_state_dict(index)
    with open(index, "wb") as f:
        f.truncate(17 * 2**20)
    with pytest.raises(Tag2MaskError, match=r"index.json is 17825792 bytes: too large \(at most 16777216\)"):
        read_state_dict(index)
    index.write_text(json.dumps({"weight_map": good}))
    shard.write_bytes(shard.read_bytes()[:40])
    with pytest.raises(Tag2MaskError, match=f"cannot read CLIP weight file {shard}"):
        read_state_dict(index, "CLIP")


def test_a_sharded_transformers_sam_loads_like_one_file(tmp_path: Path) -> None:
    """A random tiny SAM 2.1 saved in shards by transformers (.safetensors), and in .bin shards (read weights-only,
    never unpickled as code): the same weights as the model itself."""
    from tag2mask.models.sam_hf import load_hf_sam
    from tag2mask.models.sam_hf_build import random_hf_sam
    from tag2mask.models.weights import is_hf_reference

    model = random_hf_sam("sam2", tiny=True)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    bins = tmp_path / "bins"
    model.config.save_pretrained(bins)
    write_shards(bins, {k: v for k, v in model.state_dict().items()}, n=4, fmt="bin")
    reference = model.state_dict()
    for source in (tmp_path / "sharded", tmp_path / "sharded" / "model.safetensors.index.json", bins,
                   bins / "pytorch_model.bin.index.json"):
        assert is_hf_reference(source), source  # models.sam=<index file> selects transformers, not segment_anything
        loaded = load_hf_sam("sam2", source).state_dict()
        assert set(loaded) == set(reference), source
        assert all(torch.equal(loaded[k], reference[k]) for k in reference), source
    # a .bin shard whose tensor has another shape than the config gives: one error, not torch's RuntimeError
    index = json.loads((bins / "pytorch_model.bin.index.json").read_text())["weight_map"]
    key = next(k for k in index if k.endswith("weight") and reference[k].ndim == 2)
    shard = bins / index[key]
    part = torch.load(shard, weights_only=True)
    part[key] = torch.zeros(reference[key].shape[0] + 1, reference[key].shape[1])
    torch.save(part, shard)
    with pytest.raises(Tag2MaskError, match=rf"do not fit {bins / 'config.json'}: .*size mismatch"):
        load_hf_sam("sam2", bins)
