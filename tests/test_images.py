"""Robust image loading."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from refseg import InvalidInputError
from refseg.data.images import list_images, load_image


def test_rgb_gray_rgba_palette(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    assert np.array_equal(load_image(rgb), rgb)
    assert np.array_equal(load_image(Image.fromarray(rgb)), rgb)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png"), rgb)
    assert np.array_equal(load_image(str(tmp_path / "a.png")), rgb)

    gray = rgb[..., 0]
    out = load_image(Image.fromarray(gray))
    assert out.shape == (10, 12, 3) and np.array_equal(out[..., 2], gray)

    rgba = np.dstack([rgb, np.full((10, 12), 255, np.uint8)])
    assert np.array_equal(load_image(Image.fromarray(rgba, "RGBA")), rgb)
    transparent = rgba.copy()
    transparent[..., 3] = 0
    assert load_image(Image.fromarray(transparent, "RGBA")).max() == 0

    palette = Image.fromarray(rgb).convert("P")
    assert load_image(palette).shape == (10, 12, 3)


def test_sixteen_bit_is_rescaled(tmp_path):
    array = np.full((4, 5), 65535, dtype=np.uint16)
    array[0, 0] = 0
    image = Image.fromarray(array)
    image.save(tmp_path / "16.png")
    out = load_image(tmp_path / "16.png")
    assert out.dtype == np.uint8 and out[1, 1, 0] == 255 and out[0, 0, 0] == 0
    assert load_image(np.full((3, 3), 32768, np.uint16))[0, 0, 0] == 128
    assert load_image(np.ones((3, 3, 3), np.float32))[0, 0, 0] == 255


def test_exif_rotation_is_applied(tmp_path):
    array = np.zeros((10, 20, 3), dtype=np.uint8)
    array[:, :5] = 255  # white stripe on the left
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (20, 10, 3)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # the stripe is now on top


def test_bad_inputs(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(InvalidInputError, match="Cannot read"):
        load_image(tmp_path / "broken.jpg")
    with pytest.raises(InvalidInputError):
        load_image(np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(InvalidInputError):
        load_image(12)


def test_list_images(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]
    with pytest.raises(InvalidInputError):
        list_images(tmp_path / "nope")
