"""Weight files never run code: a TorchScript archive is read without TorchScript's loader.

A scripted module's ``__setstate__`` runs inside TorchScript's loader (``torch.jit.load``); the one below creates
a file there. Given to tag2mask as CLIP weights, SAM weights or a stage-II backbone file it is refused with one
line and the file is never created. The genuine OpenAI layout still loads to exactly the tensors ``torch.jit.load`` would give.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Tuple  # noqa: UP035 - TorchScript reads these annotations

import pytest
import torch

from tag2mask.errors import Tag2MaskError
from tag2mask.models.checkpoint import read_state_dict
from tag2mask.models.tiny import tiny_clip
from tag2mask.testing import save_openai_torchscript
from tag2mask.models.torchscript import read_torchscript_state_dict


class _FileWriter(torch.nn.Module):
    """Creates the file named by ``target`` whenever torch.jit.load rebuilds it (torch.from_file, shared)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:  # noqa: UP006
        return (self.weight, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:  # noqa: UP006
        mapped = torch.from_file(state[1], shared=True, size=2, dtype=torch.float32)
        self.weight = state[0] + mapped * 0.0
        self.target = state[1]
        self.training = state[2]


@pytest.fixture()
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """(the hostile archive, the file its code would create)."""
    target = tmp_path / "written-by-the-weight-file"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_FileWriter(str(target))), str(tmp_path / "hostile.pt"))
    assert not target.exists()
    return tmp_path / "hostile.pt", target


def test_the_attack_is_real(hostile: tuple[Path, Path]) -> None:
    path, target = hostile
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path))  # what tag2mask used to call
    assert target.exists()


def _refused_in_one_line(error: pytest.ExceptionInfo[Tag2MaskError], path: Path) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "holds code that would run while loading (a __setstate__ in __torch__" in message


def test_refused_as_clip_weights(hostile: tuple[Path, Path]) -> None:
    from tag2mask.models.clip import load_clip

    path, target = hostile
    with pytest.raises(Tag2MaskError) as e:
        load_clip(path)
    _refused_in_one_line(e, path)
    assert not target.exists()


def test_refused_as_sam_weights(hostile: tuple[Path, Path]) -> None:
    from tag2mask.models.sam import load_sam

    path, target = hostile
    with pytest.raises(Tag2MaskError) as e:
        load_sam("vit_b", path)
    _refused_in_one_line(e, path)
    assert not target.exists()


def test_refused_as_backbone_weights(hostile: tuple[Path, Path]) -> None:
    pytest.importorskip("segmentation_models_pytorch")
    from tag2mask.segmenters.deeplab import build_deeplabv3plus

    path, target = hostile
    with pytest.raises(Tag2MaskError) as e:
        build_deeplabv3plus(3, "resnet18", str(path), 16)
    _refused_in_one_line(e, path)
    assert not target.exists()


def test_the_openai_layout_reads_exactly_what_jit_load_gives(tmp_path: Path) -> None:
    path = tmp_path / "ViT-B-16.pt"
    save_openai_torchscript(tiny_clip(seed=3), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    got = read_torchscript_state_dict(str(path))
    assert list(got) == list(expected)  # same keys, same order
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape and torch.equal(got[key], value), key
    assert {"input_resolution", "context_length", "vocab_size"} <= set(got)  # OpenAI's metadata buffers
    assert read_state_dict(path, "CLIP").keys() == expected.keys()


def _with_data_pkl(source: Path, out: Path, data: bytes) -> Path:
    """A copy of the archive ``source`` whose data.pkl is replaced by ``data``."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, data if item.filename.endswith("/data.pkl") else zin.read(item.filename))
    return out


def _calls(function: tuple[str, str], argument: str) -> bytes:
    """A protocol-2 pickle stream, written out by hand, that calls ``module.name(argument)`` when unpickled."""
    text = argument.encode()
    return (b"\x80\x02c" + f"{function[0]}\n{function[1]}\n".encode() + b"X" + len(text).to_bytes(4, "little")
            + text + b"\x85R.")


def test_any_other_pickled_object_is_refused(tmp_path: Path) -> None:
    genuine = tmp_path / "genuine.pt"
    save_openai_torchscript(tiny_clip(seed=0), genuine)
    marker = tmp_path / "ran"
    bad = _with_data_pkl(genuine, tmp_path / "bad.pt", _calls(("os", "makedirs"), str(marker)))
    with pytest.raises(Tag2MaskError, match=r"os.makedirs is not allowed in a weight file") as e:
        read_state_dict(bad, "CLIP")
    assert "\n" not in str(e.value) and not marker.exists()


@pytest.mark.parametrize("tail", [b"", b"\x80\x02", b"\x80\x02(t.", b"\x80\x02)R.", b"\x80\x02K\x01b.",
                                  b"\x80\x02\x8e\x00\x00\x00\x00\x00\x00\x00\x00."])
def test_malformed_or_foreign_streams_are_refused(tmp_path: Path, tail: bytes) -> None:
    """Truncated streams, calls of non-callables, BUILD on a number, an opcode outside the set: one error."""
    genuine = tmp_path / "genuine.pt"
    save_openai_torchscript(tiny_clip(seed=0), genuine)
    bad = _with_data_pkl(genuine, tmp_path / "bad.pt", tail)
    with pytest.raises(Tag2MaskError, match="data.pkl is not a plain module of tensors|does not hold a module") as e:
        read_state_dict(bad, "CLIP")
    assert "\n" not in str(e.value)


def test_a_tensor_record_outside_its_storage_is_refused(tmp_path: Path) -> None:
    genuine = tmp_path / "genuine.pt"
    save_openai_torchscript(tiny_clip(seed=0), genuine)
    with zipfile.ZipFile(genuine) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    # the first tensor is the positional embedding, 77×width: MARK, BININT1 77 starts its size tuple; claim a
    # far larger first dimension over the same storage (BININT2 60000)
    at = data.index(b"(K" + bytes([77])) + 1
    corrupt = data[:at] + b"M" + (60000).to_bytes(2, "little") + data[at + 2:]
    bad = _with_data_pkl(genuine, tmp_path / "bad.pt", corrupt)
    with pytest.raises(Tag2MaskError, match="outside its storage"):
        read_state_dict(bad, "CLIP")
