"""Natural-like synthetic photos and the copies a data set picks up: shifts, crops, colour, JPEG.

1/f noise has the power spectrum of natural images (structure at every scale), so unrelated
images are as unlike each other as unrelated photos, and a copy must be found by its structure.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance

MARGIN = 8  # photos are drawn larger than 32 px so that shifted copies have real new borders


def pink_noise_photos(n: int, seed: int, size: int = 32 + 2 * MARGIN) -> np.ndarray:
    """(n, size, size, 3) uint8 images with a 1/f amplitude spectrum and correlated colour."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size)
    phases = rng.uniform(0, 2 * np.pi, (n, 2, size, size))
    fields = np.real(np.fft.ifft2(amplitude * np.exp(1j * phases), axes=(2, 3)))
    fields /= fields.std(axis=(2, 3), keepdims=True)
    # Luminance field plus a weaker colour field, mixed into RGB with a random tint per image.
    tint = rng.uniform(-0.5, 0.5, (n, 1, 1, 3))
    rgb = fields[:, 0, :, :, None] + tint * fields[:, 1, :, :, None]
    rgb = 128 + 40 * rgb + rng.uniform(-30, 30, (n, 1, 1, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def view(photo: np.ndarray, dy: int = 0, dx: int = 0) -> np.ndarray:
    """The 32x32 window of a photo, shifted by (dy, dx) from its centre."""
    return photo[MARGIN + dy : MARGIN + dy + 32, MARGIN + dx : MARGIN + dx + 32].copy()


def cropped(photo: np.ndarray, crop: int, dy: int = 0, dx: int = 0) -> np.ndarray:
    """The centre window with `crop` px cut from its side, resized back to 32x32 (bicubic)."""
    top, left = MARGIN + crop // 2 + dy, MARGIN + crop // 2 + dx
    window = photo[top : top + 32 - crop, left : left + 32 - crop]
    return np.asarray(Image.fromarray(window).resize((32, 32), Image.BICUBIC))


def recoloured(
    image: np.ndarray, brightness: float, contrast: float, saturation: float
) -> np.ndarray:
    picture = Image.fromarray(image)
    picture = ImageEnhance.Brightness(picture).enhance(brightness)
    picture = ImageEnhance.Contrast(picture).enhance(contrast)
    return np.asarray(ImageEnhance.Color(picture).enhance(saturation))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


# The planted copies: each maps a photo to a 32x32 copy of its centre view.
COPIES = {
    "shift 1 px": lambda p: view(p, 1, 0),
    "shift 2 px": lambda p: view(p, -2, 1),
    "shift 3 px": lambda p: view(p, 2, -3),
    "crop 2 px": lambda p: cropped(p, 2),
    "crop 4 px": lambda p: cropped(p, 4),
    "crop 4 px off-centre": lambda p: cropped(p, 4, 2, -1),
    "brighter, lower contrast": lambda p: recoloured(view(p), 1.2, 0.8, 1.0),
    "darker, desaturated": lambda p: recoloured(view(p), 0.8, 1.2, 0.4),
    "JPEG quality 40": lambda p: jpeg(view(p), 40),
    "shift, colour and JPEG": lambda p: jpeg(recoloured(view(p, 1, -2), 1.1, 0.9, 1.3), 60),
}


def blurred(image: np.ndarray, radius: float) -> np.ndarray:
    from PIL import ImageFilter

    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def posterised(image: np.ndarray, levels: int) -> np.ndarray:
    """The image with only `levels` grey levels of luminance left (tint kept)."""
    grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    step = 256 / levels
    flat = (np.floor(grey / step) + 0.5) * step
    return np.clip(np.rint(np.repeat(flat[..., None], 3, axis=-1)), 0, 255).astype(np.uint8)


def flattened(image: np.ndarray, seed: int) -> np.ndarray:
    """The image's mean colour everywhere, with +-1 grey level of noise (a failed decode)."""
    noise = np.random.default_rng(seed).integers(-1, 2, image.shape[:2])[..., None]
    mean = image.reshape(-1, 3).mean(axis=0)
    return np.clip(np.rint(mean + noise), 0, 255).astype(np.uint8)


# The planted quality defects, by the issue data/quality.py must report for them.
DEFECTS = {
    "dark": lambda im, i: np.rint(im * 0.2).astype(np.uint8),
    "light": lambda im, i: np.rint(204 + im * 0.2).astype(np.uint8),
    "near_constant": lambda im, i: flattened(im, i),
    "low_information": lambda im, i: posterised(im, 4),
    "blurry": lambda im, i: blurred(im, 2.0),
}
