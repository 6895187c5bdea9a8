"""Reading PyTorch state dicts (.pth, legacy and zip formats) into numpy arrays, without PyTorch.

A .pth is a pickle, and unpickling runs whatever functions the file names. The unpickler here
resolves a handful of names to stand-ins of its own (a tensor is rebuilt from its storage's
bytes by numpy; nothing from torch is imported or called) and refuses every other global, so a
crafted checkpoint cannot call os.system or eval. The result must be a flat mapping of names
to tensors, as `model.state_dict()` saves it.

The legacy format (torch.save before 1.6, or `_use_new_zipfile_serialization=False`) is five
pickles in a row: a magic number, the protocol version, system info, the state dict (whose
persistent ids name storages), the list of storage keys; then each storage in that order as an
int64 element count and its raw bytes. The zip format holds `<name>/data.pkl` and each
storage as `<name>/data/<key>`.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from deepsight_tf.core.errors import DataError
from deepsight_tf.data.raw import first_line

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION

# torch's storage classes and the element type each holds (little-endian unless the file says
# otherwise). bfloat16 comes from ml_dtypes, which TensorFlow itself depends on.
STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _Refused(pickle.UnpicklingError):
    """The pickle names something other than a tensor: refused, not merely unreadable."""


@dataclass(frozen=True)
class _StorageType:
    name: str  # "FloatStorage", ...


@dataclass(frozen=True)
class _StorageRef:
    """A storage the pickle refers to; its bytes come later (legacy) or from a zip member."""

    key: str
    kind: _StorageType
    numel: int
    view: tuple[str, int, int] | None = None  # legacy view of a root storage: (key, offset, size)


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def __setstate__(self, state: object) -> None:
        raise _Refused("a tensor with extra pickled state is not accepted")


def _index(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise pickle.UnpicklingError(f"{what} must be a non-negative int, got {value!r}")
    return value


def _indices(value: object, what: str) -> tuple[int, ...]:
    if type(value) is not tuple:
        raise pickle.UnpicklingError(f"{what} must be a tuple, got {type(value).__name__}")
    return tuple(_index(v, what) for v in value)


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    """Stands in for torch._utils._rebuild_tensor_v2: records where the tensor's data lies."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("a tensor must be built on a storage")
    shape, strides = _indices(size, "tensor size"), _indices(stride, "tensor stride")
    if len(shape) != len(strides):
        raise pickle.UnpicklingError(f"tensor size {shape} and stride {strides} differ in rank")
    return _TensorRef(storage, _index(storage_offset, "storage offset"), shape, strides)


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object) -> _TensorRef:
    """Stands in for torch._utils._rebuild_parameter: a Parameter is its tensor."""
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("a parameter must wrap a tensor")
    return data


class TensorUnpickler(pickle.Unpickler):
    """Unpickles a state dict: OrderedDict, tensors and storages; any other global is refused.

    With `tensors=False` every global and persistent id is refused: plain values only.
    """

    ALLOWED: ClassVar[Mapping[tuple[str, str], Any]] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
    }

    def __init__(self, stream: io.BytesIO, tensors: bool = True) -> None:
        super().__init__(stream)
        self.stream = stream
        self.tensors = tensors
        self.storages: dict[str, _StorageRef] = {}

    def load(self) -> Any:
        """Check the opcodes first (running none of them), then unpickle."""
        start = self.stream.tell()
        _check_opcodes(self.stream)
        self.stream.seek(start)
        return super().load()

    def find_class(self, module: str, name: str) -> Any:
        if self.tensors and (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise _Refused(f"global '{module}.{name}' is not allowed")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # Legacy: ('storage', type, key, location, numel, view_metadata); zip: the first five.
        if not self.tensors:
            raise _Refused("a persistent id where only plain values belong")
        if type(pid) is not tuple or len(pid) not in (5, 6) or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(kind, _StorageType) or type(key) is not str:
            raise pickle.UnpicklingError(f"unexpected storage record {str(pid)[:80]}")
        view = pid[5] if len(pid) == 6 else None
        if view is not None:
            if type(view) is not tuple or len(view) != 3 or type(view[0]) is not str:
                raise pickle.UnpicklingError(f"unexpected storage view {str(view)[:80]}")
            view = (view[0], _index(view[1], "view offset"), _index(view[2], "view size"))
        ref = _StorageRef(key, kind, _index(numel, "storage size"), view)
        known = self.storages.setdefault(key, ref)
        if (known.kind, known.numel) != (ref.kind, ref.numel):
            raise pickle.UnpicklingError(f"storage {key} is declared twice, differently")
        return ref


def _check_opcodes(stream: io.BytesIO) -> None:
    """Walk one pickle's opcodes with pickletools, which decodes but runs nothing.

    A truncated or garbled pickle fails here, cleanly. A memo index beyond the opcodes read so
    far is refused: a valid pickle numbers its memo from 0, and CPython's unpickler grows its
    memo table to the index it is given, so one flipped byte could ask for gigabytes.
    """
    for count, (opcode, arg, _) in enumerate(pickletools.genops(stream)):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and arg > count:
            raise pickle.UnpicklingError(f"memo index {arg} after only {count} opcodes")


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch state-dict checkpoint, by name, as numpy arrays.

    Raises DataError (one line naming the file) when the file is refused (it pickles anything
    but tensors), truncated, garbled or not a state dict.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from exc
    return parse_state_dict(raw, str(path))


def parse_state_dict(raw: bytes, source: str) -> dict[str, np.ndarray]:
    """read_state_dict for a checkpoint's bytes already in memory; `source` names it in errors."""
    try:
        if raw[:4] == b"PK\x03\x04":
            return _read_zip(raw)
        return _read_legacy(raw)
    except _Refused as exc:
        raise DataError(
            f"{source}: refused to unpickle ({exc}); only tensors in an OrderedDict are loaded, "
            "so this is not a plain PyTorch state dict"
        ) from exc
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from exc
    # A garbled pickle can fail in any of these; each means the same thing to the caller.
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,
        RecursionError,
        NotImplementedError,  # zipfile: an unknown zip version or compression
        struct.error,
        zipfile.BadZipFile,
        zlib.error,
    ) as exc:
        raise DataError(
            f"{source}: truncated or not a PyTorch checkpoint ({first_line(exc)}); reinstall "
            "the package that ships it or download it again"
        ) from exc


def _read_legacy(raw: bytes) -> dict[str, np.ndarray]:
    stream = io.BytesIO(raw)
    # Magic number, protocol version, system info: plain values, every global refused.
    magic, protocol, sys_info = (TensorUnpickler(stream, tensors=False).load() for _ in range(3))
    if magic != LEGACY_MAGIC:
        raise DataError("not a PyTorch checkpoint (wrong magic number)")
    if protocol != LEGACY_PROTOCOL:
        raise DataError(f"unsupported PyTorch protocol version {protocol!r}")
    if not isinstance(sys_info, dict):
        raise DataError("not a PyTorch checkpoint (no system info)")
    byteorder = "<" if sys_info.get("little_endian", True) else ">"
    unpickler = TensorUnpickler(stream)
    result = unpickler.load()
    keys = TensorUnpickler(stream, tensors=False).load()
    if type(keys) is not list or any(type(k) is not str for k in keys):
        raise DataError("the storage key list is not a list of strings")
    roots = {ref.view[0] if ref.view else key for key, ref in unpickler.storages.items()}
    if roots - set(keys):
        raise DataError(f"storages {sorted(roots - set(keys))[:3]} are referenced, not stored")
    buffers: dict[str, np.ndarray] = {}
    for key in keys:
        ref = unpickler.storages.get(key)
        if ref is None or key in buffers:
            raise DataError(f"storage {key} is stored twice or never referenced")
        (numel,) = struct.unpack("<q", _take(stream, 8))
        if numel != ref.numel:
            raise DataError(f"storage {key} holds {numel} elements, the pickle says {ref.numel}")
        dtype = _dtype(ref.kind, byteorder)
        buffers[key] = np.frombuffer(_take(stream, numel * dtype.itemsize), dtype=dtype)
    return _state_dict(result, buffers)


def _read_zip(raw: bytes) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        names = archive.namelist()
        # torch.save stores members plainly; a compressed one could be a zip bomb.
        if any(
            i.compress_type != zipfile.ZIP_STORED or i.flag_bits & 1 for i in archive.infolist()
        ):
            raise DataError("compressed or encrypted zip members; torch.save writes neither")
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise DataError("zip holds no single <name>/data.pkl; not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "<"
        if f"{prefix}byteorder" in names:
            order = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise DataError(f"unknown byte order {order!r}")
            byteorder = "<" if order == "little" else ">"
        unpickler = TensorUnpickler(io.BytesIO(archive.read(pickles[0])))
        result = unpickler.load()
        buffers = {}
        for key, ref in unpickler.storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise DataError(f"storage {key} is referenced but {member} is missing")
            dtype = _dtype(ref.kind, byteorder)
            data = archive.read(member)
            if len(data) != ref.numel * dtype.itemsize:
                raise DataError(f"{member} holds {len(data)} bytes, expected {ref.numel} elements")
            buffers[key] = np.frombuffer(data, dtype=dtype)
    return _state_dict(result, buffers)


def _take(stream: io.BytesIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise DataError(f"truncated: {size} bytes expected, {len(data)} left")
    return data


def _dtype(kind: _StorageType, byteorder: str) -> np.dtype:
    code = STORAGE_DTYPES[kind.name]
    if code == "bfloat16":
        import ml_dtypes  # deferred: only bfloat16 checkpoints need it

        return np.dtype(ml_dtypes.bfloat16).newbyteorder(byteorder)
    return np.dtype(byteorder + code)


def _state_dict(result: object, buffers: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(result, dict):
        raise DataError(f"holds a {type(result).__name__}, not a state dict")
    arrays = {}
    for name, value in result.items():
        if type(name) is not str or not isinstance(value, _TensorRef):
            raise DataError(f"entry {str(name)[:60]!r} is not a named tensor; not a state dict")
        arrays[name] = _materialise(value, buffers)
    return arrays


def _materialise(tensor: _TensorRef, buffers: Mapping[str, np.ndarray]) -> np.ndarray:
    """The tensor's elements copied out of its storage, after checking they lie inside it."""
    ref = tensor.storage
    root = buffers[ref.view[0] if ref.view else ref.key]
    storage = root[ref.view[1] : ref.view[1] + ref.view[2]] if ref.view else root
    if ref.view and len(storage) != ref.view[2]:
        raise DataError(f"storage view {ref.key} reaches past its root storage")
    if 0 in tensor.shape:
        return np.zeros(tensor.shape, dtype=storage.dtype)
    if math.prod(tensor.shape) > len(storage):
        # Only stride-0 (expanded) tensors do this, rare in checkpoints and a memory bomb in
        # a crafted one: (2**16, 2**16) over one element would be 16 GiB once copied.
        raise DataError(f"a tensor of shape {tensor.shape} is larger than its storage {ref.key}")
    last = tensor.offset + sum(
        (n - 1) * s for n, s in zip(tensor.shape, tensor.stride, strict=True)
    )
    if last >= len(storage):
        raise DataError(f"a tensor of shape {tensor.shape} reaches past its storage {ref.key}")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[tensor.offset :],
        shape=tensor.shape,
        strides=tuple(s * item for s in tensor.stride),
        writeable=False,
    )
    # A contiguous copy in native byte order that owns its memory.
    return np.array(view, dtype=view.dtype.newbyteorder("="), order="C")
