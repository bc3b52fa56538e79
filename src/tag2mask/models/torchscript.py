"""The tensors of a TorchScript archive (OpenAI's CLIP ``.pt`` files), read without running any TorchScript.

TorchScript's own loader runs code from the file: a scripted module's ``__setstate__`` executes while loading, so
a crafted weight file could do anything before tag2mask had a chance to say it is wrong. tag2mask never calls that
loader. A TorchScript archive is a zip::

    <name>/data.pkl              the module tree, pickled: objects of ``__torch__.*`` classes, tensors
    <name>/data/<key>            the raw bytes of each tensor storage
    <name>/code/__torch__/...py  the classes' TorchScript source, with ``__parameters__`` / ``__buffers__`` lists
    <name>/constants.pkl ...     constants of the code (not read)

``data.pkl`` is not unpickled: :class:`_OpcodeReader` walks its opcodes itself (no ``pickle`` module) and knows
only what a module tree of tensors needs: numbers, strings, tuples, lists, dicts, the memo, storage records,
tensors rebuilt from them (``torch._utils._rebuild_tensor_v2`` and the ``torch.<Type>Storage`` markers), TorchScript's
list/type-tag helpers, ``collections.OrderedDict``, and ``__torch__.*`` objects, which become plain attribute
holders whose state is only stored. Any other opcode or global is refused; nothing named in the file is ever
imported or called. The state dict is then what TorchScript's ``state_dict()`` gives: the parameters and buffers
each class lists in its source (read as text), walked through the module tree. A class whose source defines
``__setstate__`` is refused outright: such a file is not a plain weight file.
"""

from __future__ import annotations

import re
import struct
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


class _Refused(Exception):
    """data.pkl holds something a plain module of tensors does not."""


class _ScriptObject:
    """A ``__torch__.*`` object of the archive: its pickled state is kept, nothing of its class is run."""

    qualified_name = ""

    def __init__(self) -> None:
        self.state: Any = None

    @property
    def attributes(self) -> dict[str, Any]:
        return self.state if isinstance(self.state, dict) else {}


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    """A tensor viewing ``storage`` (a flat tensor of the storage's dtype) as torch would rebuild it."""
    if not (isinstance(storage, torch.Tensor) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(type(v) is int for v in (offset, *size, *stride))):
        raise _Refused("malformed tensor record")
    if offset < 0 or any(v < 0 for v in (*size, *stride)):
        raise _Refused("a tensor record with a negative size, stride or offset")
    needed = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else offset
    if needed > storage.numel():
        raise _Refused("a tensor record reaches outside its storage")
    return torch.as_strided(storage, size, stride, offset).clone()


def _ordered_dict(*args: Any) -> dict:
    if args:
        raise _Refused("OrderedDict with arguments")
    return {}


def _same(value: Any, *_type: Any) -> Any:  # torch.jit._pickle's build_*list / restore_type_tag: the value itself
    return value


class _OpcodeReader:
    """Reads one pickle stream of protocol ≤ 4 by its opcodes, building only allowed values (see the module doc)."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        self.data, self.pos = data, 0
        self.archive, self.prefix = archive, prefix
        self.classes: dict[str, type] = {}

    # -- reading bytes -------------------------------------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Refused("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def _line(self) -> str:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise _Refused("truncated")
        text = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return text

    def _uint(self, n: int) -> int:
        return int.from_bytes(self._take(n), "little")

    # -- what names may stand for --------------------------------------------------------------------------------
    def _global(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return _ordered_dict
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_tensorlist", "build_doublelist",
                                                      "build_boollist", "restore_type_tag"):
            return _same
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.classes:  # one plain subclass per TorchScript class, for its name only
                self.classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
            return self.classes[qualified]
        raise _Refused(f"{module}.{name} is not allowed in a weight file")

    def _storage(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise _Refused(f"unexpected storage record {pid!r:.80}")
        dtype, key = pid[1].dtype, pid[2]
        try:
            raw = self.archive.read(f"{self.prefix}data/{key}")
        except KeyError:
            raise _Refused(f"storage {key!r} is missing from the archive") from None
        if len(raw) % torch.empty((), dtype=dtype).element_size():
            raise _Refused(f"storage {key!r} is not a whole number of {dtype} elements")
        return torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)

    # -- the stack machine ---------------------------------------------------------------------------------------
    def load(self) -> Any:
        """The object the stream builds; _Refused at the first opcode or value outside what is allowed."""
        stack: list[Any] = []
        memo: dict[int, Any] = {}
        marks: list[int] = []

        def pop() -> Any:
            if not stack or (marks and len(stack) == marks[-1]):
                raise _Refused("stack underflow")
            return stack.pop()

        def pop_mark() -> list[Any]:
            if not marks:
                raise _Refused("no mark")
            at = marks.pop()
            items = stack[at:]
            del stack[at:]
            return items

        def top(kind: type | tuple[type, ...], what: str) -> Any:
            if not stack or not isinstance(stack[-1], kind):
                raise _Refused(f"{what} on something else")
            return stack[-1]

        while True:
            code = self._take(1)
            if code == b".":  # STOP
                return pop()
            if code == b"\x80":  # PROTO
                self._take(1)
            elif code == b"\x95":  # FRAME
                self._take(8)
            elif code == b"(":  # MARK
                marks.append(len(stack))
            elif code == b")":  # EMPTY_TUPLE
                stack.append(())
            elif code == b"t":  # TUPLE
                stack.append(tuple(pop_mark()))
            elif code in (b"\x85", b"\x86", b"\x87"):  # TUPLE1, TUPLE2, TUPLE3
                items = [pop() for _ in range(code[0] - 0x84)]
                stack.append(tuple(reversed(items)))
            elif code == b"}":  # EMPTY_DICT
                stack.append({})
            elif code == b"]":  # EMPTY_LIST
                stack.append([])
            elif code == b"l":  # LIST
                stack.append(pop_mark())
            elif code == b"d":  # DICT
                items = pop_mark()
                stack.append(dict(zip(items[::2], items[1::2])))
            elif code == b"s":  # SETITEM
                value, key = pop(), pop()
                top(dict, "SETITEM")[key] = value
            elif code == b"u":  # SETITEMS
                items = pop_mark()
                top(dict, "SETITEMS").update(zip(items[::2], items[1::2]))
            elif code == b"a":  # APPEND
                value = pop()
                top(list, "APPEND").append(value)
            elif code == b"e":  # APPENDS
                items = pop_mark()
                top(list, "APPENDS").extend(items)
            elif code == b"N":
                stack.append(None)
            elif code in (b"\x88", b"\x89"):  # NEWTRUE, NEWFALSE
                stack.append(code == b"\x88")
            elif code == b"J":  # BININT
                stack.append(int.from_bytes(self._take(4), "little", signed=True))
            elif code == b"K":  # BININT1
                stack.append(self._uint(1))
            elif code == b"M":  # BININT2
                stack.append(self._uint(2))
            elif code == b"\x8a":  # LONG1
                stack.append(int.from_bytes(self._take(self._uint(1)), "little", signed=True))
            elif code == b"G":  # BINFLOAT
                stack.append(struct.unpack(">d", self._take(8))[0])
            elif code == b"X":  # BINUNICODE
                stack.append(self._take(self._uint(4)).decode("utf-8"))
            elif code == b"\x8c":  # SHORT_BINUNICODE
                stack.append(self._take(self._uint(1)).decode("utf-8"))
            elif code == b"c":  # GLOBAL
                module = self._line()
                stack.append(self._global(module, self._line()))
            elif code == b"\x93":  # STACK_GLOBAL
                name, module = pop(), pop()
                if not (isinstance(module, str) and isinstance(name, str)):
                    raise _Refused("STACK_GLOBAL of non-strings")
                stack.append(self._global(module, name))
            elif code in (b"q", b"r", b"\x94"):  # BINPUT, LONG_BINPUT, MEMOIZE
                key = self._uint(1) if code == b"q" else self._uint(4) if code == b"r" else len(memo)
                if not stack:
                    raise _Refused("stack underflow")
                memo[key] = stack[-1]
            elif code in (b"h", b"j"):  # BINGET, LONG_BINGET
                key = self._uint(1 if code == b"h" else 4)
                if key not in memo:
                    raise _Refused("unknown memo entry")
                stack.append(memo[key])
            elif code == b"Q":  # BINPERSID
                stack.append(self._storage(pop()))
            elif code == b"R":  # REDUCE: only the pure helpers named in _global
                args, fn = pop(), pop()
                if not isinstance(args, tuple) or fn not in (_rebuild_tensor, _ordered_dict, _same):
                    raise _Refused(f"a call of {type(fn).__name__} is not allowed in a weight file")
                stack.append(fn(*args))
            elif code == b"\x81":  # NEWOBJ: only TorchScript module objects, without arguments
                args, cls = pop(), pop()
                if not (isinstance(cls, type) and issubclass(cls, _ScriptObject)) or args != ():
                    raise _Refused("only TorchScript module objects may be created")
                stack.append(cls())
            elif code == b"b":  # BUILD: the state is stored, never applied by code
                state = pop()
                top(_ScriptObject, "BUILD").state = state
            else:
                raise _Refused(f"pickle opcode {code!r} is not allowed in a weight file")


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
    """What TorchScript's ``state_dict()`` of the archive would be, on CPU, without running the archive's code.

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
        reader = _OpcodeReader(archive.read(pickles[0]), archive, prefix)
        try:
            root = reader.load()
        except (_Refused, UnicodeDecodeError, RecursionError, RuntimeError, TypeError, ValueError) as e:
            raise Tag2MaskError(f"its data.pkl is not a plain module of tensors ({e})") from None
        lists = {q: _class_lists(archive, prefix, q) for q in reader.classes}
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
