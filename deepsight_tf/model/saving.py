"""Reading and writing a classifier's .keras file: safely, atomically, with fast gradients."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras

from deepsight_tf.model import layers  # noqa: F401  (registers the layers a saved model names)
from deepsight_tf.model.fastconv import accelerate_convolutions


def load_classifier(path: Path) -> keras.Model:
    """A saved classifier, without its optimizer, ready for inference and for gradients.

    safe_mode refuses Lambda layers and other code in the file; compile=False needs no custom
    optimizer or metric classes. The convolutions get fastconv's gradients (Grad-CAM needs
    them), as a freshly built classifier has. ValueError names the file when it cannot load.
    """
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except (ValueError, OSError, TypeError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: cannot be loaded ({first})") from exc
    accelerate_convolutions(model)
    return model


def save_classifier(model: keras.Model, path: Path) -> None:
    """The network alone (no optimizer state: a compiled model is saved through an uncompiled
    functional view of the same layers; a ResNet-18's SGD momenta doubled the file to 90 MB).
    model.save needs a .keras name, so write `.<name>.<pid>.tmp.keras` then rename it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    if getattr(model, "compiled", False):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
