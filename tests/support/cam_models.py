"""Hand-built models with known answers for the explanation tests."""

from __future__ import annotations

import keras
import numpy as np

# Four colours as +-1 vectors after scaling to [-1, 1]: the class is the colour of one region.
PALETTE = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]], dtype=np.float32)
COLOUR_CLASSES = ("red", "green", "blue", "yellow")
SIZE = 16
BORDER = 2  # "border": a 2 px frame, exactly what occlusion_geometry hides at 16 px
CENTRE = 4  # "centre": the central 8 x 8 (4 px margin), inside the 11 x 11 occluded centre
LOGIT_SCALE = 10.0
REGIONS = ("border", "centre")


def to_model_input(images_uint8: np.ndarray) -> np.ndarray:
    return np.asarray(images_uint8, dtype=np.float32) / 127.5 - 1.0


def region_mask(region: str, size: int = SIZE) -> np.ndarray:
    """(H, W) bool: where the class colour is, and the only pixels region_model reads."""
    if region == "border":
        inner = np.zeros((size, size), dtype=bool)
        inner[BORDER:-BORDER, BORDER:-BORDER] = True
        return ~inner
    mask = np.zeros((size, size), dtype=bool)
    mask[CENTRE:-CENTRE, CENTRE:-CENTRE] = True
    return mask


def region_images(per_class: int, region: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images: random noise, with the class colour painted on one region only."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(PALETTE)), per_class)
    images = rng.integers(0, 256, (len(labels), SIZE, SIZE, 3), dtype=np.uint8)
    colours = ((PALETTE + 1) * 127.5).round().astype(np.uint8)
    images[:, region_mask(region)] = colours[labels][:, None, :]
    return images, labels


def region_model(region: str) -> keras.Model:
    """A classifier that sees only one region: it zeroes the rest, then matches colours.

    Layers: the region's pixels (x - pad(crop(x)) for the border, pad(crop(x)) for the centre);
    a 1x1 ReLU conv that fires (1) only on an exact palette colour; 4x4 average cells
    ("colour_cells", the CAM layer, 4 x 4); global average pool; a softmax Dense with
    LOGIT_SCALE on the diagonal. Seeing nothing, all logits tie and argmax says class 0.
    """
    layers = keras.layers
    margin = BORDER if region == "border" else CENTRE
    images = keras.Input((SIZE, SIZE, 3), name="images")
    inner = layers.ZeroPadding2D(margin, name="inner_pad")(
        layers.Cropping2D(margin, name="inner_crop")(images)
    )
    seen = layers.Subtract(name="border_only")([images, inner]) if region == "border" else inner
    match = layers.Conv2D(len(PALETTE), 1, activation="relu", name="colour_match")(seen)
    cells = layers.AveragePooling2D(4, name="colour_cells")(match)
    pooled = layers.GlobalAveragePooling2D(name="head_pool")(cells)
    outputs = layers.Dense(len(PALETTE), activation="softmax", name="head_predictions")(pooled)
    model = keras.Model(images, outputs, name=f"{region}_model")
    # Exact palette colour: dot = 3, others <= 1, zeroed pixels 0; bias -2 keeps only matches.
    model.get_layer("colour_match").set_weights([PALETTE.T[None, None], np.full(4, -2.0)])
    model.get_layer("head_predictions").set_weights([LOGIT_SCALE * np.eye(4), np.zeros(4)])
    return model


BLOB_SIZE = 16
BLOB = 5  # side of the coloured square


def blob_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs with one red, green or blue 5 x 5 square on grey noise; class = colour.

    Returns (inputs in [-1, 1], labels, (n, H, W) bool masks of the square).
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.normal(0.0, 0.25, (n, BLOB_SIZE, BLOB_SIZE, 3)).astype(np.float32)
    masks = np.zeros((n, BLOB_SIZE, BLOB_SIZE), dtype=bool)
    corners = rng.integers(0, BLOB_SIZE - BLOB + 1, (n, 2))
    for i, ((top, left), label) in enumerate(zip(corners, labels, strict=True)):
        masks[i, top : top + BLOB, left : left + BLOB] = True
        colour = -np.ones(3, dtype=np.float32)
        colour[label] = 1.0
        images[i, masks[i]] = colour
    return images, labels, masks


def trained_blob_model(seed: int = 0) -> keras.Model:
    """A two-conv classifier of blob colour, trained to high accuracy in a few seconds."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    images = keras.Input((BLOB_SIZE, BLOB_SIZE, 3), name="images")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv")(images)
    x = layers.MaxPooling2D(2, name="block1_pool")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="block2_conv")(x)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = layers.Dense(3, activation="softmax", name="head_predictions")(x)
    model = keras.Model(images, outputs)
    x_train, y_train, _ = blob_images(384, seed=seed + 1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, batch_size=32, epochs=6, verbose=0)
    return model
