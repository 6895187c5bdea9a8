"""Which reader a source needs, and the readers of CIFAR-10's own formats and of .npz files."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.errors import DataError, OfflineError
from deepsight_tf.core.progress import Progress
from deepsight_tf.data.image_folder import read_image_folder
from deepsight_tf.data.raw import RawDataset, first_line, resize_all

# Keras's own CIFAR-10 download: same file name, origin and hash as keras.datasets.cifar10,
# so the archive is shared with Keras's cache (~/.keras/datasets).
CIFAR10_ORIGIN = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_KERAS_FNAME = "cifar-10-batches-py-target"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
# Without class_names, an .npz's classes are its labels 0..K-1; beyond this K it is a mistake.
MAX_INFERRED_CLASSES = 10_000


# Source detection ---------------------------------------------------------------------------
def source_kind(path: Path) -> str:
    """Which reader a `--source` path needs; a DataError says what was expected otherwise."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; check the --source path")
    if path.is_file():
        name = path.name.lower()
        if name.endswith(".npz"):
            return "npz"
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            return "archive"
        raise DataError(
            f"{path}: not a source deepsight reads; give a .tar.gz archive, a .npz, "
            "a cifar-10-batches-py folder or an image folder with train/ and test/"
        )
    if _find_batches_dir(path) is not None:
        return "batches"
    if (path / "train").is_dir():
        return "image-folder"
    raise DataError(
        f"{path}: folder has neither CIFAR batches (batches.meta) nor train/<class>/ "
        "subfolders; point --source at one of those"
    )


def fingerprint(path: Path) -> str:
    """A cheap identity of a source: content hash for a file, listing (size, mtime) for a folder."""
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        return "sha256:" + digest.hexdigest()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(path).as_posix()
            try:
                stat = full.stat()
            except OSError:  # a dangling or looping link: the reader lists it as skipped
                stat = full.lstat()
            digest.update(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return "listing:" + digest.hexdigest()


def read_source(
    path: Path, resize: int | None = None, progress: Progress | None = None
) -> RawDataset:
    kind = source_kind(path)
    if kind == "npz":
        data = read_npz(path)
    elif kind == "archive":
        data = read_archive(path)
    elif kind == "batches":
        data = read_batches(_find_batches_dir(path) or path)
    else:
        return read_image_folder(path, resize=resize, progress=progress)
    if resize is not None:
        resize_all(data, resize)
    return data


class _AfterFirstWrite(io.TextIOBase):
    """A stream that keeps its first write back and passes it on only once a second comes."""

    def __init__(self, target: Any) -> None:
        self.target, self.held = target, ""
        self.passing = False

    def write(self, text: str) -> int:
        if self.passing:
            return self.target.write(text)
        if not self.held:
            self.held = text
            return len(text)
        self.passing = True
        self.target.write(self.held)
        return self.target.write(text)

    def flush(self) -> None:
        if self.passing:
            self.target.flush()


def download_cifar10() -> RawDataset:
    """CIFAR-10 through Keras's own download and cache, then read with the restricted reader."""
    from keras.utils import get_file  # deferred: importing Keras takes seconds

    try:
        # Keras reports download progress on stdout; keep stdout for results (--json), and
        # hold its "Downloading data from" line back until bytes arrive: offline, the error
        # alone is the message.
        with contextlib.redirect_stdout(_AfterFirstWrite(sys.stderr)):
            folder = get_file(
                fname=CIFAR10_KERAS_FNAME,
                origin=CIFAR10_ORIGIN,
                extract=True,
                file_hash=CIFAR10_SHA256,
            )
    except Exception as exc:  # Keras wraps URLError/HTTPError in a plain Exception
        raise OfflineError(
            f"could not download CIFAR-10 from {CIFAR10_ORIGIN} ({first_line(exc)}); "
            "offline, pass --source PATH to a local copy (archive, batches folder, "
            "image folder or .npz)"
        ) from exc
    batches = _find_batches_dir(Path(folder))
    if batches is None:
        raise DataError(f"{folder}: Keras cache holds no cifar-10-batches-py; delete it and rerun")
    data = read_batches(batches)
    data.kind = "keras-download"
    return data


# Official python batches ---------------------------------------------------------------------
class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR batch format uses: built-in containers and numpy arrays."""

    ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return super().find_class(module, name)


def load_pickle(path: Path) -> dict[str, object]:
    """Load one CIFAR pickle safely; keys come back as str whether pickled as bytes or str."""
    try:
        with open(path, "rb") as handle:
            obj = RestrictedUnpickler(io.BufferedReader(handle), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "truncated" in str(exc):
            raise DataError(f"{path}: truncated ({exc}); re-download or re-extract it") from exc
        raise DataError(
            f"{path}: refused to unpickle ({exc}); only numpy arrays and built-in containers "
            "are loaded, so this is not an official CIFAR batch"
        ) from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(f"{path}: truncated or not a CIFAR batch ({exc}); re-download it") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict in a CIFAR batch, got {type(obj).__name__}")
    return {k.decode("utf-8") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _find_batches_dir(path: Path) -> Path | None:
    if (path / "batches.meta").is_file() or (
        (path / "meta").is_file() and (path / "train").is_file()
    ):
        return path
    for child in sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []:
        if (child / "batches.meta").is_file() or (
            (child / "meta").is_file() and (child / "train").is_file()
        ):
            return child
    return None


def _decode_names(names: object, path: Path) -> list[str]:
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: no label names in the meta file")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _batch_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path}: batch lacks 'data' or '{label_key}'; not a CIFAR batch")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] % 3 != 0:
        raise DataError(f"{path}: 'data' is {data.dtype}{data.shape}, expected uint8 (N, 3*H*W)")
    side = round((data.shape[1] // 3) ** 0.5)
    if 3 * side * side != data.shape[1] or len(labels) != len(data):
        raise DataError(f"{path}: 'data' rows are not square RGB images matching the labels")
    return data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1), labels


def read_batches(folder: Path) -> RawDataset:
    """The extracted `cifar-10-batches-py/` folder (CIFAR-100's `train`/`test`/`meta` too)."""
    if (folder / "batches.meta").is_file():
        names = _decode_names(load_pickle(folder / "batches.meta").get("label_names"), folder)
        train_files = sorted(folder.glob("data_batch_*"), key=lambda p: p.name)
        test_files = [folder / "test_batch"]
        label_key = "labels"
    else:
        names = _decode_names(load_pickle(folder / "meta").get("fine_label_names"), folder)
        train_files, test_files, label_key = [folder / "train"], [folder / "test"], "fine_labels"
    missing = [p.name for p in [*train_files, *test_files] if not p.is_file()]
    if not train_files or missing:
        raise DataError(f"{folder}: missing batch files {missing or ['data_batch_*']}; re-extract")
    splits = {}
    for split, files in (("train", train_files), ("test", test_files)):
        xs, ys, paths = [], [], []
        for path in files:
            x, y = _batch_arrays(path, label_key)
            xs.append(x)
            ys.append(y)
            paths.extend(f"{path.name}:{row}" for row in range(len(y)))
        splits[split] = (np.concatenate(xs), np.concatenate(ys), paths)
    return RawDataset(
        x_train=splits["train"][0],
        y_train=splits["train"][1],
        x_test=splits["test"][0],
        y_test=splits["test"][1],
        class_names=names,
        train_paths=splits["train"][2],
        test_paths=splits["test"][2],
        kind="batches",
    )


def read_archive(path: Path) -> RawDataset:
    """The official `cifar-10-python.tar.gz`, extracted with tarfile's `data` filter."""
    with tempfile.TemporaryDirectory(prefix="deepsight-extract-") as tmp:
        try:
            with tarfile.open(path) as archive:
                archive.extractall(tmp, filter="data")
        except tarfile.FilterError as exc:
            raise DataError(
                f"{path}: refused to extract ({exc}); the archive tries to write outside its "
                "folder or holds special files, so it is not the official one"
            ) from exc
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(
                f"{path}: corrupt or truncated archive ({exc}); download it again"
            ) from exc
        batches = _find_batches_dir(Path(tmp))
        if batches is None:
            raise DataError(f"{path}: archive holds no CIFAR batches (batches.meta not found)")
        try:
            data = read_batches(batches)
        except DataError as exc:
            # Name the archive and its member, not the temporary folder that is gone by now.
            raise DataError(str(exc).replace(f"{tmp}/", f"{path}, member ")) from exc
    data.kind = "archive"
    return data


# npz ----------------------------------------------------------------------------------------
def read_npz(path: Path) -> RawDataset:
    """An .npz with x_train, y_train, x_test, y_test (and optionally class_names); no pickles."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(
                f"{path}: a single .npy array, not an .npz archive; save the four arrays with "
                "numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
            )
        with loaded as npz:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing arrays {missing}; expected x_train/y_train/x_test/y_test"
                )
            arrays = {k: npz[k] for k in npz.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"{path}: unreadable .npz ({first_line(exc)}); rewrite it with numpy.savez"
        ) from exc
    conversions: Counter[str] = Counter()
    x_train = _to_uint8_rgb(arrays["x_train"], path, "x_train", conversions)
    x_test = _to_uint8_rgb(arrays["x_test"], path, "x_test", conversions)
    y_train = _labels(arrays["y_train"], len(x_train), path, "y_train")
    y_test = _labels(arrays["y_test"], len(x_test), path, "y_test")
    names = _class_names(arrays, y_train, y_test, path)
    return RawDataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=names,
        train_paths=[f"x_train[{i}]" for i in range(len(x_train))],
        test_paths=[f"x_test[{i}]" for i in range(len(x_test))],
        kind="npz",
        conversions=dict(conversions),
    )


def _to_uint8_rgb(x: np.ndarray, path: Path, key: str, conversions: Counter[str]) -> np.ndarray:
    if x.ndim == 3:
        conversions["grayscale to RGB"] += len(x)
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 4:
        raise DataError(f"{path}: {key} has shape {x.shape}; expected (N, H, W, 3)")
    if x.shape[-1] not in (1, 3, 4) and x.shape[1] in (1, 3):
        conversions["channels-first to channels-last"] += len(x)
        x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] == 1:
        conversions["grayscale to RGB"] += len(x)
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 4:
        conversions["RGBA to RGB (alpha dropped)"] += len(x)
        x = x[..., :3]
    elif x.shape[-1] != 3:
        raise DataError(f"{path}: {key} has {x.shape[-1]} channels; expected 3 (RGB)")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise DataError(f"{path}: {key} holds NaN or infinite values; clean them first")
        hi = float(x.max(initial=0.0))
        if x.min(initial=0.0) < 0 or hi > 255:
            raise DataError(f"{path}: {key} values span outside [0, 255]; store uint8 pixels")
        conversions[f"{key} float to uint8"] += len(x)
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.clip(np.rint(x * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer) and x.min(initial=0) >= 0 and x.max(initial=0) <= 255:
        return x.astype(np.uint8)
    raise DataError(f"{path}: {key} has dtype {x.dtype} outside 0..255; store uint8 pixels")


def _class_names(
    arrays: dict[str, np.ndarray], y_train: np.ndarray, y_test: np.ndarray, path: Path
) -> list[str]:
    """class_names as stored, else "0".."K-1" for labels below MAX_INFERRED_CLASSES."""
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(
                f"{path}: class_names must be a 1-D array of strings, got "
                f"{names.dtype}{names.shape}"
            )
        return [str(n) for n in names.tolist()]
    top = int(max(y_train.max(initial=0), y_test.max(initial=0)))
    if top >= MAX_INFERRED_CLASSES:
        # Sized from the labels, a label of 2**40 would ask for terabytes of names and counts.
        raise DataError(
            f"{path}: labels reach {top} and there is no class_names array; store class_names "
            f"(one per class) or use labels 0..K-1 with K <= {MAX_INFERRED_CLASSES}"
        )
    return [str(i) for i in range(top + 1)]


def _labels(y: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {key} must be {n} integer labels, got {y.dtype}{y.shape}")
    if n and y.min() < 0:
        raise DataError(f"{path}: {key} has negative labels")
    return y.astype(np.int64)


# Image folder -------------------------------------------------------------------------------
