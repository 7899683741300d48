"""Robust image loading: paths, PIL images and arrays to HxWx3 uint8 RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InvalidInputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})

ImageLike = str | os.PathLike | Image.Image | np.ndarray


def load_image(image: ImageLike) -> np.ndarray:
    """Any supported image as an (H, W, 3) uint8 RGB array.

    Handles EXIF orientation, grayscale, palette, RGBA/LA (alpha dropped, composited on
    black as the model would see it), 16-bit and float images (rescaled to 8 bits).

    Raises:
        InvalidInputError: the path does not exist, the file is not a readable image, or the
            array has an unsupported shape.
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.is_file():
            raise InvalidInputError(f"Image not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                return _pil_to_rgb(opened)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
            raise InvalidInputError(f"Cannot read image {path}: {error}") from error
    raise InvalidInputError(
        f"Unsupported image type {type(image).__name__}: pass a path, a PIL image or an HxWx3 uint8 array."
    )


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _array_to_rgb(np.asarray(image))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        rgba = np.asarray(image).astype(np.float32)
        alpha = rgba[..., 3:4] / 255.0
        return np.round(rgba[..., :3] * alpha).astype(np.uint8)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f"Expected an HxW, HxWx3 or HxWx4 image array, got shape {array.shape}.")
    if array.shape[2] == 4:
        array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == bool:
        return np.ascontiguousarray(array.astype(np.uint8) * 255)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype == np.uint16:
            maximum = 65535
        else:  # other integer types: 8-bit range unless values say otherwise
            maximum = 65535 if array.max(initial=0) > 255 else 255
        scaled = array.astype(np.float64) * (255.0 / maximum)
        return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InvalidInputError("The image array holds NaN or infinite values.")
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.round(array * scale), 0, 255).astype(np.uint8)
    raise InvalidInputError(f"Unsupported image array dtype {array.dtype}.")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"Not a folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
