"""Reading and writing a classifier's .keras file: safely, atomically, with fast gradients.

A run's model.keras is the network behind its own preprocessing, built from Keras's layers
(Resizing, a ReLU capped at 255 for the clip, Normalization), as a KerasHub classifier
carries its ImageConverter: `keras.saving.load_model(path)` takes 0..255 RGB images of any
size, uint8 or float, and predicts what `deepsight predict` does. Inside deepsight every
consumer works on the network alone (inputs already preprocessed by the pipeline), so
`load_classifier` returns it; files saved before the preprocessing moved in are the network.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from deepsight_tf.model import layers  # also registers the layers a saved model names
from deepsight_tf.model.fastconv import accelerate_convolutions
from deepsight_tf.model.preprocessing import Normalization, Preprocessing

# The preprocessing layers' names in a saved model, in the order they run.
RESIZE_LAYER, CLIP_LAYER, NORMALIZE_LAYER = "resize", "clip", "normalize"
IMAGES_INPUT = "images"
# The methods Keras's Resizing layer takes (tf.image.resize's others: deepsight's ImageResize).
KERAS_RESIZE_METHODS = ("bilinear", "nearest", "lanczos3", "lanczos5", "bicubic", "area")


def with_preprocessing(network: keras.Model, preprocessing: Preprocessing) -> keras.Model:
    """`network` fed through `preprocessing` as Keras layers, in float32 under any policy.

    The same arithmetic as model.preprocessing.preprocess: tf.image.resize with the run's
    interpolation (an image already at the size passes unchanged), clipped to 0..255 (bicubic
    overshoots), then (x - mean) / std per channel. Only a Normalization serialises.
    """
    normalization = preprocessing.normalization
    if not isinstance(normalization, Normalization):
        raise TypeError(f"only a Normalization serialises. Received: {normalization!r}")
    size, method = preprocessing.image_size, preprocessing.interpolation
    images = keras.Input((None, None, 3), dtype="float32", name=IMAGES_INPUT)
    if method in KERAS_RESIZE_METHODS:
        resize = keras.layers.Resizing(
            size, size, interpolation=method, dtype="float32", name=RESIZE_LAYER
        )
    else:  # the same tf.image.resize, in deepsight's layer
        resize = layers.ImageResize(size, method, dtype="float32", name=RESIZE_LAYER)
    x = resize(images)
    x = keras.layers.ReLU(max_value=255.0, dtype="float32", name=CLIP_LAYER)(x)
    x = keras.layers.Normalization(
        mean=list(normalization.mean),
        variance=list(np.square(normalization.std)),
        dtype="float32",
        name=NORMALIZE_LAYER,
    )(x)
    # Keras's image preprocessing layers default to training=True and a call passes that on to
    # every later layer: the network would update its BatchNorm statistics on each model(x).
    # It is called in inference mode, always: the file is for predicting (deepsight trains the
    # network alone).
    return keras.Model(images, network(x, training=False), name=f"{network.name}_on_images")


def network_of(model: keras.Model) -> keras.Model:
    """The network inside a model saved with its preprocessing; any other model itself."""
    names = {layer.name for layer in model.layers}
    if not {RESIZE_LAYER, CLIP_LAYER, NORMALIZE_LAYER} <= names:
        return model
    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return inner[0] if len(inner) == 1 else model


def has_preprocessing(model: keras.Model) -> bool:
    return network_of(model) is not model


def load_classifier(path: Path, *, preprocessing: bool = False) -> keras.Model:
    """A saved classifier, without its optimizer, ready for inference and for gradients.

    The network alone (preprocessed inputs), or with `preprocessing` the whole file as saved
    (raw images, for files that carry their preprocessing). safe_mode refuses Lambda layers
    and other code in the file; compile=False needs no custom optimizer or metric classes.
    The convolutions get fastconv's gradients (Grad-CAM needs them), as a freshly built
    classifier has. ValueError names the file when it cannot load.
    """
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except (ValueError, OSError, TypeError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: cannot be loaded ({first})") from exc
    network = network_of(model)
    accelerate_convolutions(network)
    return model if preprocessing else network


def save_classifier(
    model: keras.Model, path: Path, preprocessing: Preprocessing | None = None
) -> None:
    """The network alone (no optimizer state: a compiled model is saved through an uncompiled
    functional view of the same layers; a ResNet-18's SGD momenta doubled the file to 90 MB),
    behind `preprocessing` when given. model.save needs a .keras name, so write
    `.<name>.<pid>.tmp.keras` then rename it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    model = network_of(model)
    if getattr(model, "compiled", False):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    saved: Any = model if preprocessing is None else with_preprocessing(model, preprocessing)
    try:
        saved.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
