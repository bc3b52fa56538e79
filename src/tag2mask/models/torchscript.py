"""The tensors of a TorchScript archive (OpenAI's CLIP ``.pt`` files), read without running any TorchScript.

``torch.jit.load`` runs code from the file: a scripted module's ``__setstate__`` executes while loading, so a
crafted weight file could do anything before tag2mask had a chance to say it is wrong. This reader never calls
it. A TorchScript archive is a zip::

    <name>/data.pkl              the module tree, pickled: objects of ``__torch__.*`` classes, tensors
    <name>/data/<key>            the raw bytes of each tensor storage
    <name>/code/__torch__/...py  the classes' TorchScript source, with ``__parameters__`` / ``__buffers__`` lists
    <name>/constants.pkl ...     constants of the code (not read)

``data.pkl`` is read with a restricted unpickler that knows exactly four things: tensors rebuilt from their
storage records (``torch._utils._rebuild_tensor_v2`` and the ``torch.<Type>Storage`` markers), ``collections.
OrderedDict``, and ``__torch__.*`` objects, which become plain attribute holders whose state is only stored (the
same idea as ``torch.load(weights_only=True)``). Anything else is refused. The state dict is then what
``torch.jit.load(path).state_dict()`` gives: the parameters and buffers each class lists in its source (read as
text), walked through the module tree. A class whose source defines ``__setstate__`` is refused outright: such a
file is not a plain weight file.
"""

from __future__ import annotations

import pickle
import re
import sys
import zipfile
from typing import Any

import torch

from tag2mask.errors import Tag2MaskError

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_CLASS_LINE = re.compile(r"^class (\w+)\(")
_NAMES_LINE = re.compile(r"^\s+(__parameters__|__buffers__) = \[(.*)\]\s*$")
_SETSTATE_LINE = re.compile(r"^\s+def __setstate__\(")


class _ScriptObject:
    """A ``__torch__.*`` object of the archive: its pickled state is kept, nothing of its class is run."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    @property
    def attributes(self) -> dict[str, Any]:
        state = self.__dict__.get("_state")
        return state if isinstance(state, dict) else {}


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *_ignored: Any) -> torch.Tensor:
    """A tensor viewing ``storage`` (a flat tensor of the storage's dtype) as torch would rebuild it."""
    if not (isinstance(storage, torch.Tensor) and all(isinstance(v, int) for v in (offset, *size, *stride))):
        raise pickle.UnpicklingError("malformed tensor record")
    needed = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else offset
    if offset < 0 or any(s < 0 for s in stride) or needed > storage.numel():
        raise pickle.UnpicklingError("a tensor record reaches outside its storage")
    return torch.as_strided(storage, size, stride, offset).clone()


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.prefix = prefix
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module.startswith("__torch__.") or module == "__torch__":
            qualified = f"{module}.{name}"
            if qualified not in self.classes:  # one plain subclass per TorchScript class, for its name only
                self.classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
            return self.classes[qualified]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weight file")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise pickle.UnpicklingError(f"unexpected storage record {pid!r:.80}")
        dtype, key = pid[1].dtype, pid[2]
        try:
            raw = self.archive.read(f"{self.prefix}data/{key}")
        except KeyError:
            raise pickle.UnpicklingError(f"storage {key!r} is missing from the archive") from None
        item = torch.empty((), dtype=dtype).element_size()
        if len(raw) % item:
            raise pickle.UnpicklingError(f"storage {key!r} is not a whole number of {dtype} elements")
        return torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)


def _class_lists(archive: zipfile.ZipFile, prefix: str, qualified: str) -> tuple[list[str], list[str], bool]:
    """``(parameters, buffers, defines __setstate__)`` of a ``__torch__`` class, read from its source as text."""
    module, _, name = qualified.rpartition(".")
    try:
        source = archive.read(f"{prefix}code/{module.replace('.', '/')}.py").decode("utf-8")
    except KeyError:
        raise Tag2MaskError(f"the archive has no source for the class {qualified}") from None
    params: list[str] = []
    buffers: list[str] = []
    setstate = False
    inside = False
    for line in source.splitlines():
        m = _CLASS_LINE.match(line)
        if m:
            inside = m.group(1) == name
            continue
        if not inside:
            continue
        names = _NAMES_LINE.match(line)
        if names:
            listed = re.findall(r'"([^"]*)"', names.group(2))
            (params if names.group(1) == "__parameters__" else buffers).extend(listed)
        setstate |= bool(_SETSTATE_LINE.match(line))
    return params, buffers, setstate


def read_torchscript_state_dict(path: str) -> dict[str, torch.Tensor]:
    """What ``torch.jit.load(path).state_dict()`` would give, on CPU, without running the archive's code.

    Raises:
        Tag2MaskError: the archive holds code that runs at load time (a ``__setstate__``), pickled objects other
            than modules and tensors, or is malformed.
    """
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise Tag2MaskError("not a TorchScript archive (no <name>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in archive.namelist():
            order = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if order != sys.byteorder:
                raise Tag2MaskError(f"its tensors are stored {order}-endian, this machine is {sys.byteorder}-endian")
        unpickler = _Unpickler(archive.read(pickles[0]), archive, prefix)
        try:
            root = unpickler.load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise Tag2MaskError(f"its data.pkl is not a plain module of tensors ({e})") from None
        lists = {q: _class_lists(archive, prefix, q) for q in unpickler.classes}
    runs_code = sorted(q for q, (_, _, setstate) in lists.items() if setstate)
    if runs_code:
        raise Tag2MaskError(f"it holds code that would run while loading (a __setstate__ in {runs_code[0]}); "
                            "tag2mask never runs code from a weight file")
    if not isinstance(root, _ScriptObject):
        raise Tag2MaskError("its data.pkl does not hold a module")
    state: dict[str, torch.Tensor] = {}

    def walk(obj: _ScriptObject, prefix: str, depth: int) -> None:
        if depth > 64:
            raise Tag2MaskError("its module tree is nested too deeply")
        params, buffers, _ = lists[obj.qualified_name]
        attrs = obj.attributes
        for name in (*params, *buffers):
            value = attrs.get(name)
            if isinstance(value, torch.Tensor):
                state[prefix + name] = value
        for name, value in attrs.items():
            if isinstance(value, _ScriptObject):
                walk(value, f"{prefix}{name}.", depth + 1)

    walk(root, "", 0)
    return state
