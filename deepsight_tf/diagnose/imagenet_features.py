"""ImageNet features of a stored data set, computed once and cached in the workspace.

EfficientNet-Lite's features were learned on ImageNet, without any label of this data set, so
what they say about a label is evidence from outside every model trained on it: the
independent witness that independent.py reads (K-fold probes, kNN agreement). The features of
an image are the globally averaged outputs of the backbone's last three stacks and of its head
(112 + 192 + 320 + 1280 values for Lite0), not the head's alone: on upsampled 32 px images the
middle stages carry what the ImageNet-specific head does not (a linear probe on the four gained
3 points of accuracy over the head's alone, bench/imagenet_feature_size.py). One forward pass
covers every training and test image; the cache (float16: features of a few units need no more
than three digits) is keyed by the data set, the backbone variant, the image size and the
images' SHA-256, and vouched for by a manifest like every artifact, so every later interpret of
a run on the same data set reads it back instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepsight_tf.core.errors import PrerequisiteError, StaleArtifactError
from deepsight_tf.core.manifest import DATA_INPUT, Manifest, now_iso
from deepsight_tf.core.progress import Progress
from deepsight_tf.core.storage import atomic_save_npz
from deepsight_tf.core.workspace import FEATURES_FILE, Workspace

# The backbone and input size of the features: 96 px, because 64 px ranked planted flips 4.5
# to 8 points worse and 128 px gained 1.6 to 3.5 for 1.8 times the seconds, past the 3 minutes
# a ranking may cost (bench/imagenet_feature_size.py; docs, Forensics).
FEATURE_VARIANT = "lite0"
FEATURE_SIZE = 96  # px
FEATURE_INTERPOLATION = "bicubic"  # as the recipe upsamples CIFAR-10 for training
FEATURE_BATCH = 128
FEATURE_STACKS = (5, 6, 7)  # 1-based, as efficientnet_lite.stage_of counts; then the head
WEIGHTS_INPUT = "imagenet weights"  # the manifest's label for the checkpoint
TASK = "ImageNet features"


@dataclass
class ImagenetFeatures:
    """Pooled features of every image, rows in the stored order (x_train's, x_test's)."""

    train: np.ndarray  # (len(x_train), sum(widths)) float32
    test: np.ndarray  # (len(x_test), sum(widths)) float32
    widths: tuple[int, ...]  # the columns of each stage's block, in order
    variant: str
    image_size: int
    folder: str
    sha256: str  # of features.npz, as its manifest records it
    pass_s: float | None  # seconds of the forward pass made now; None: read from the cache


def pooled_features(
    images: np.ndarray,
    variant: str = FEATURE_VARIANT,
    image_size: int = FEATURE_SIZE,
    batch_size: int = FEATURE_BATCH,
    progress: Progress | None = None,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """(N, sum(widths)) float32 and the widths: the ImageNet backbone's globally averaged
    outputs of FEATURE_STACKS' last blocks and of its head, side by side, for each uint8 NHWC
    image resized to image_size and normalised as the checkpoint was trained."""
    import tensorflow as tf

    from deepsight_tf.model.efficientnet_lite import NORMALIZATION
    from deepsight_tf.model.preprocessing import preprocess

    extractor = stage_extractor(variant)
    widths = tuple(int(output.shape[-1]) for output in extractor.outputs)
    spec = tf.TensorSpec((None, *images.shape[1:]), tf.as_dtype(images.dtype))

    @tf.function(input_signature=[spec])
    def forward(batch: tf.Tensor) -> tf.Tensor:
        x = preprocess(batch, image_size, NORMALIZATION, FEATURE_INTERPOLATION)
        maps = extractor(x, training=False)
        return tf.concat([tf.reduce_mean(m, axis=(1, 2)) for m in maps], axis=-1)

    out = np.empty((len(images), sum(widths)), np.float32)
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        out[start:stop] = forward(images[start:stop]).numpy()
        if progress is not None:
            progress(TASK, stop, len(images))
    return out, widths


def stage_extractor(variant: str = FEATURE_VARIANT) -> Any:
    """The ImageNet backbone with the feature maps of FEATURE_STACKS' last blocks and of the
    head (GRADCAM_LAYER) as its outputs."""
    import keras

    from deepsight_tf.model.efficientnet_lite import (
        GRADCAM_LAYER,
        block_layers,
        imagenet_backbone,
    )

    backbone = imagenet_backbone(variant)
    last = {stack + 1: layer for stack, _, layer in block_layers(backbone)}
    outputs = [last[stack].output for stack in FEATURE_STACKS]
    return keras.Model(backbone.input, [*outputs, backbone.get_layer(GRADCAM_LAYER).output])


def dataset_features(
    workspace: Workspace,
    data: Any,
    images_sha256: str,
    variant: str = FEATURE_VARIANT,
    image_size: int = FEATURE_SIZE,
    progress: Progress | None = None,
) -> ImagenetFeatures:
    """The features of `data` (a stored Dataset whose images.npz has `images_sha256`): read from
    the workspace's cache when it is whole and was made from these images and weights,
    otherwise computed and written there (features.npz, then its manifest)."""
    from deepsight_tf.model.efficientnet_lite import get_variant

    name = get_variant(variant).name
    key = f"{name}-{image_size}px-{images_sha256[:12]}"
    folder = workspace.features_dir(data.name, key)
    inputs = {
        DATA_INPUT: workspace.input_record(workspace.images_path(data.name), images_sha256),
        WEIGHTS_INPUT: _weights_record(name),
    }
    settings = {"variant": name, "image_size": image_size, "stacks": list(FEATURE_STACKS)}
    settings.update(interpolation=FEATURE_INTERPOLATION, pooling="global average")
    with workspace.lock(f"features-{data.name}-{key}"):
        manifest = _current_manifest(workspace, folder, inputs, settings)
        seconds = None
        if manifest is None:
            started, start = now_iso(), time.perf_counter()
            both, widths = pooled_features(
                np.concatenate([data.x_train, data.x_test]), name, image_size, progress=progress
            )
            seconds = time.perf_counter() - start
            both = both.astype(np.float16)
            atomic_save_npz(
                folder / FEATURES_FILE,
                train=both[: len(data.x_train)],
                test=both[len(data.x_train) :],
                widths=np.asarray(widths, np.int64),
            )
            manifest = Manifest(
                phase="imagenet-features",
                settings=settings,
                inputs=inputs,
                outputs={FEATURES_FILE: ""},
                started=started,
                finished=now_iso(),
                duration_s=round(seconds, 1),
            )
            workspace.write_manifest(folder, manifest)
        with np.load(folder / FEATURES_FILE, allow_pickle=False) as stored:
            train, test = stored["train"].astype(np.float32), stored["test"].astype(np.float32)
            widths = tuple(int(w) for w in stored["widths"])
    sha = manifest.outputs[FEATURES_FILE]
    return ImagenetFeatures(train, test, widths, name, image_size, str(folder), sha, seconds)


def _weights_record(variant: str) -> dict[str, Any]:
    from deepsight_tf.core.storage import sha256_file
    from deepsight_tf.model.efficientnet_lite import find_checkpoint

    checkpoint = find_checkpoint(variant)
    return {
        "path": str(checkpoint.path),
        "sha256": sha256_file(checkpoint.path),
        "package": checkpoint.package,
        "version": checkpoint.version,
    }


def _current_manifest(
    workspace: Workspace,
    folder: Path,
    inputs: dict[str, dict[str, Any]],
    settings: dict[str, Any],
) -> Manifest | None:
    """The cache's manifest when the cache is whole (every output matches its hash) and was
    made from `inputs` with `settings`; None when it must be made again."""
    try:
        manifest = workspace.verify(folder, "deepsight interpret")
    except (PrerequisiteError, StaleArtifactError):
        return None
    current = all(
        manifest.inputs.get(label, {}).get("sha256") == record["sha256"]
        for label, record in inputs.items()
    )
    current = current and manifest.settings == settings and FEATURES_FILE in manifest.outputs
    return manifest if current else None
