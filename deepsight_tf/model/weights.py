"""Where pretrained weights come from (ImageNet presets, preset folders, .weights.h5 files, earlier
runs) and how they are copied into a classifier, layer by layer by name."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import keras
from keras_hub.src.utils.preset_utils import CONFIG_FILE as PRESET_CONFIG_FILE

from deepsight_tf.core.errors import ConfigError
from deepsight_tf.core.workspace import MODEL_FILE
from deepsight_tf.model.backbones import Backbone, is_head_layer, resnet
from deepsight_tf.model.saving import load_classifier

WEIGHTS_HELP = (
    "imagenet, none, a KerasHub preset folder, a .weights.h5 file or a deepsight run folder"
)


def weights_kind(weights: str) -> str:
    """What `--weights` names: "none", "imagenet", "preset", "weights_h5" or "run"."""
    if weights in ("none", "imagenet"):
        return weights
    path = Path(weights)
    if path.is_dir() and (path / MODEL_FILE).is_file():
        return "run"
    if path.is_dir() and (path / PRESET_CONFIG_FILE).is_file():
        return "preset"
    if path.is_file() and path.name.endswith(".weights.h5"):
        return "weights_h5"
    if not path.exists():
        raise ConfigError(f"--weights {weights}: no such file or folder; use {WEIGHTS_HELP}")
    raise ConfigError(f"--weights {weights}: not {WEIGHTS_HELP}")


def load_source_weights(
    spec: Backbone, weights: str, stem: str, width_multiplier: float
) -> keras.Model | None:
    """The model that holds the weights `--weights` names, or None for "none"."""
    kind = weights_kind(weights)
    if kind == "none":
        return None
    if kind == "imagenet":
        if stem != "imagenet" or width_multiplier != 1.0:
            raise ConfigError(
                "ImageNet weights fit the imagenet stem at width 1.0; use --stem imagenet "
                "or --weights none"
            )
        return spec.imagenet_weights()
    if kind == "preset":
        return resnet.load_preset_backbone(weights)
    if kind == "run":
        path = Path(weights) / MODEL_FILE
        try:
            return load_classifier(path)
        except ValueError as exc:
            raise ConfigError(f"--weights {weights}: {exc}") from exc
    return _load_backbone_weights_file(spec, Path(weights), stem, width_multiplier)


def _load_backbone_weights_file(
    spec: Backbone, path: Path, stem: str, width_multiplier: float
) -> keras.Model:
    """A backbone of this architecture holding the weights of a bare .weights.h5 file.

    Such a file keys variables by layer position, not name, and Keras loads a file of a deeper
    network into a shallower one without complaint; so the file's variables must first match,
    path for path and shape for shape, those this backbone itself would write.
    """
    images = keras.Input(shape=(None, None, 3))
    source = keras.Model(images, spec.build_features(images, stem, width_multiplier))
    with tempfile.TemporaryDirectory() as folder:
        reference = Path(folder) / "reference.weights.h5"
        source.save_weights(reference)
        expected = _h5_variable_shapes(reference)
    try:
        found = _h5_variable_shapes(path)
    except OSError as exc:
        raise ConfigError(f"--weights {path}: not a readable weights file ({exc})") from exc
    if found != expected:
        reshaped = sum(1 for key in expected.keys() & found.keys() if expected[key] != found[key])
        raise ConfigError(
            f"--weights {path}: does not hold {spec.name} backbone weights for stem {stem} at "
            f"width {width_multiplier} ({reshaped} variables of another shape, "
            f"{len(expected.keys() - found.keys())} missing, {len(found.keys() - expected.keys())} "
            "extra)"
        )
    source.load_weights(path)
    return source


def _h5_variable_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def visit(name: str, item: object) -> None:
        if isinstance(item, h5py.Dataset):
            shapes[name] = tuple(item.shape)

    with h5py.File(path, "r") as file:
        file.visititems(visit)
    return shapes


def copy_backbone_weights(source: keras.Model, target: keras.Model, label: str) -> int:
    """Copy every backbone layer's weights from `source` into `target` by layer name.

    A layer's weights include those of the layers inside it (a KerasHub EfficientNet block's
    convolutions and BatchNorm statistics), in the same order for the same class, so a
    block is compared and copied whole. Head layers are skipped on both sides. Any layer
    missing on either side, or any weight of another shape, means the architectures differ:
    ConfigError, nothing half-copied is kept because all checks run before the first
    assignment. Returns the number of layers copied.
    """
    source_layers = {
        layer.name: layer for layer in source.layers if layer.weights and not is_head_layer(layer)
    }
    target_layers = [layer for layer in target.layers if layer.weights and not is_head_layer(layer)]
    missing = [layer.name for layer in target_layers if layer.name not in source_layers]
    extra = sorted(set(source_layers) - {layer.name for layer in target_layers})
    mismatched = []
    for layer in target_layers:
        if layer.name in source_layers:
            want = [tuple(w.shape) for w in layer.weights]
            have = [tuple(w.shape) for w in source_layers[layer.name].weights]
            if want != have:
                mismatched.append(f"{layer.name} {have} vs {want}")
    problems = [
        _first_of(what, items)
        for what, items in (
            ("shapes differ at", mismatched),
            ("source lacks", missing),
            ("source has extra", extra),
        )
        if items
    ]
    if problems:
        raise ConfigError(
            f"--weights {label}: architecture differs: {'; '.join(problems)}; "
            "use the backbone, stem and width the weights were trained with"
        )
    for layer in target_layers:
        layer.set_weights(source_layers[layer.name].get_weights())
    return len(target_layers)


def _first_of(what: str, items: list[str]) -> str:
    more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
    return f"{what} {items[0]}{more}"
