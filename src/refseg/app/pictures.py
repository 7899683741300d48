"""Pictures a user uploads to the page: read once on the server, sent to the browser small.

The browser never decodes an original: an upload is read here (any format Pillow reads, EXIF
rotation applied, as :func:`refseg.data.images.load_image` reads every picture), and what
travels back is a JPEG preview at most :data:`PREVIEW_SIDE` pixels on its longer side. Clicks
come back as fractions of the shown picture and are mapped to the original's pixels, so the
preview's size never limits where a prompt lands (see :mod:`refseg.app.draft`).

Messages name a file by its base name only: an upload lives in a server folder the user
never chose, and its path is nobody's business.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.images import load_image
from ..errors import InvalidInputError
from ..preprocess import proposer_input
from ..references import read_mask

PREVIEW_SIDE = 1024  # longer side of the picture the browser gets
READABLE = "JPEG, PNG, WebP, BMP, TIFF or GIF"


@dataclass(eq=False)
class Picture:
    """An uploaded picture: the original (kept on the server) and its preview (sent once).

    Attributes:
        name: the file's base name (never a server path).
        pixels: (H, W, 3) uint8 original.
        preview: (h, w, 3) uint8, the original scaled to at most PREVIEW_SIDE on its longer
            side (the original itself when it is small enough).
    """

    name: str
    pixels: np.ndarray
    preview: np.ndarray
    _url: str | None = field(default=None, repr=False)
    _key: str | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def url(self) -> str:
        """The preview as a JPEG data URL (made once)."""
        if self._url is None:
            self._url = jpeg_data_url(self.preview)
        return self._url

    @property
    def key(self) -> str:
        """A fingerprint of the original's pixels (shape and a hash of every byte)."""
        if self._key is None:
            digest = hashlib.blake2b(np.ascontiguousarray(self.pixels), digest_size=16).hexdigest()
            self._key = f"{self.pixels.shape}:{digest}"
        return self._key

    def to_preview(self, mask: np.ndarray) -> np.ndarray:
        """An (H, W) mask of the original brought to the preview's (h, w) (nearest pixel)."""
        return resize_mask(mask, self.preview.shape[:2])


def picture_from_pixels(pixels: np.ndarray, name: str, max_side: int = PREVIEW_SIDE) -> Picture:
    """A :class:`Picture` of (H, W, 3) uint8 pixels already in memory (a target, say)."""
    height, width = pixels.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        preview = np.asarray(
            Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        )
    else:
        preview = pixels
    return Picture(name=name, pixels=pixels, preview=preview)


def display_name(path: str | os.PathLike) -> str:
    """What a message calls an uploaded file: its base name."""
    return Path(path).name


@contextlib.contextmanager
def _reading(name: str) -> Iterator[None]:
    """Turn Pillow's failures to read a file into one message that names it by ``name``."""
    try:
        yield
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) // 1_000_000
        raise InvalidInputError(f"Could not read {name}: it has more than {limit} million pixels.") from None
    except UnidentifiedImageError:
        raise InvalidInputError(f"Could not read {name}: it is not a {READABLE} picture.") from None
    except (OSError, ValueError, SyntaxError, InvalidInputError):
        raise InvalidInputError(f"Could not read {name}: the file is damaged or cut short.") from None


def read_picture(path: str | os.PathLike, name: str | None = None) -> Picture:
    """Read an uploaded picture and make its preview.

    Args:
        path: the uploaded file.
        name: what messages call it (default: the file's base name).

    Raises:
        InvalidInputError: not a picture this page reads, damaged, or too large; the message
            names the file by ``name`` only.
    """
    name = name or display_name(path)
    with _reading(name), Image.open(path) as opened:
        opened.load()
        pixels = load_image(opened)
    return picture_from_pixels(pixels, name)


def read_mask_file(path: str | os.PathLike, picture: Picture, name: str | None = None) -> np.ndarray:
    """Read a mask file for ``picture``: nonzero (or, 0/255, above 127) pixels are the object.

    Returns:
        (H, W) bool, the picture's size.

    Raises:
        InvalidInputError: unreadable, another size than the picture, or empty.
    """
    name = name or display_name(path)
    try:
        raw = read_mask(path)
    except InvalidInputError:
        raise InvalidInputError(f"Could not read the mask {name}: it is not a {READABLE} picture.") from None
    if raw.shape != (picture.height, picture.width):
        raise InvalidInputError(
            f"The mask {name} is {raw.shape[1]}x{raw.shape[0]} but the picture {picture.name} is "
            f"{picture.width}x{picture.height}: upload the mask made for this picture."
        )
    mask = raw if raw.dtype == bool else (raw > (0 if raw.max(initial=0) <= 1 else 127))
    if not mask.any():
        raise InvalidInputError(f"The mask {name} is empty: the object's pixels must be non-zero.")
    return mask


def sam2_input(pixels: np.ndarray, size: int) -> torch.Tensor:
    """SAM2's (1, 3, S, S) input of a picture, cheap for huge pictures.

    A picture whose shorter side is at least twice S is first box-reduced by a whole factor
    that keeps both sides >= S (an exact average of pixel blocks), then squashed to S x S by
    :func:`refseg.preprocess.proposer_input` as every picture is. Smaller pictures go to
    ``proposer_input`` as they are, so their SAM2 input is exactly the one the segmenter
    prompts references on (SAM2's predictor input in every preset).
    """
    factor = min(pixels.shape[:2]) // size
    if factor >= 2:
        pixels = np.asarray(Image.fromarray(pixels).reduce(factor))
    return proposer_input(pixels, size)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask to (h, w) by nearest pixel (pixel centres)."""
    height, width = mask.shape
    h, w = shape
    if (height, width) == (h, w):
        return mask
    rows = ((np.arange(h) + 0.5) * height / h).astype(np.int64).clip(0, height - 1)
    cols = ((np.arange(w) + 0.5) * width / w).astype(np.int64).clip(0, width - 1)
    return mask[rows][:, cols]


def jpeg_data_url(pixels: np.ndarray, quality: int = 88) -> str:
    """(h, w, 3) uint8 as a JPEG data URL."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def png_data_url(image: Image.Image) -> str:
    """A PIL image as a PNG data URL (fast compression: these are small and short-lived)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def check_picture(path: str | os.PathLike, name: str | None = None) -> None:
    """Check that an upload is a picture this page reads, from its header (cheap).

    Raises:
        InvalidInputError: as :func:`read_picture` says it.
    """
    with _reading(name or display_name(path)), Image.open(path) as opened:
        opened.verify()
