"""Pictures: instance overlays, ground truth beside prediction, and the memory bank's PCA view.

Only Pillow and numpy draw here. Every class gets a colour from a fixed palette indexed by a
stable hash of its *name* (not its label index), so a class keeps its colour across runs,
images and memory files.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .data.images import ImageLike, load_image
from .errors import InvalidInputError
from .instances import Instances
from .masks import MaskLike, decode_mask
from .models.base import Encoder
from .reference_features import reference_crop_box, reference_inputs

logger = logging.getLogger(__name__)

# 20 colours that stay apart from each other and readable on photos (RGB).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (255, 99, 71),
)


QUANTILE_SAMPLE = 1_000_000  # patches used to set the PCA colour range


def class_color(class_name: str) -> tuple[int, int, int]:
    """The colour of a class: ``PALETTE[crc32(utf-8 name) % len(PALETTE)]``.

    Stable across processes and Python versions (unlike ``hash``, which is salted per run).
    Two classes may share a colour; their labels still tell them apart.
    """
    return PALETTE[zlib.crc32(class_name.encode("utf-8")) % len(PALETTE)]


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    red, green, blue = background
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels (no system font needed)."""
    return ImageFont.load_default(size=max(8, int(size)))


def _auto_sizes(height: int, width: int) -> tuple[int, int]:
    """(line width, font size) that read well at this image size."""
    short = min(height, width)
    return max(1, round(short / 300)), max(10, round(short / 40))


def boundary(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels of ``mask`` within ``thickness`` 4-neighbour steps of its outside.

    Args:
        mask: (H, W) bool.

    Returns:
        (H, W) bool boundary band (pixels outside the image count as outside the mask).
    """
    eroded = mask.copy()
    for _ in range(max(1, thickness)):
        shrunk = eroded.copy()
        shrunk[1:, :] &= eroded[:-1, :]
        shrunk[:-1, :] &= eroded[1:, :]
        shrunk[:, 1:] &= eroded[:, :-1]
        shrunk[:, :-1] &= eroded[:, 1:]
        shrunk[0, :] = False
        shrunk[-1, :] = False
        shrunk[:, 0] = False
        shrunk[:, -1] = False
        eroded = shrunk
    return mask & ~eroded


def _paint_mask(
    canvas: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], alpha: float, thickness: int
) -> None:
    """Alpha-fill ``mask`` and draw its contour opaque, in place, working on its box only.

    Args:
        canvas: (H, W, 3) float32 image being drawn.
        mask: (H, W) bool.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return
    pad = thickness + 1
    y0, y1 = max(0, rows[0] - pad), min(mask.shape[0], rows[-1] + 1 + pad)
    x0, x1 = max(0, cols[0] - pad), min(mask.shape[1], cols[-1] + 1 + pad)
    local = mask[y0:y1, x0:x1]
    region = canvas[y0:y1, x0:x1]
    rgb = np.asarray(color, dtype=np.float32)
    if alpha > 0:
        region[local] = region[local] * (1.0 - alpha) + rgb * alpha
    if thickness > 0:
        region[boundary(local, thickness)] = rgb


def _draw_label(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    color: tuple[int, int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    image_size: tuple[int, int],
) -> None:
    """A filled tag with ``text`` whose bottom-left sits at ``xy`` (moved inside the image)."""
    width, height = image_size
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_w, text_h = right - left, bottom - top
    pad = max(1, text_h // 5)
    tag_w, tag_h = text_w + 2 * pad, text_h + 2 * pad
    x = min(max(0.0, xy[0]), max(0.0, width - tag_w))
    y = xy[1] - tag_h
    if y < 0:  # no room above the box: put the tag just inside it
        y = min(max(0.0, xy[1]), max(0.0, height - tag_h))
    draw.rectangle((x, y, x + tag_w - 1, y + tag_h - 1), fill=color)
    draw.text((x + pad - left, y + pad - top), text, fill=_text_color(color), font=font)


def draw_instances(
    image: ImageLike,
    instances: Instances,
    *,
    score_threshold: float = 0.0,
    alpha: float = 0.45,
    show_masks: bool = True,
    show_boxes: bool = True,
    show_labels: bool = True,
    show_scores: bool = True,
    line_width: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """The image with its instances drawn over it.

    Each instance: its mask filled at ``alpha`` with an opaque contour, its box, and a
    "class score" tag, in its class colour (:func:`class_color`). Lower scores are drawn
    first, so the best instances lie on top.

    Args:
        image: path, PIL image or (H, W, 3) uint8 array; must be the image the instances
            were found on.
        instances: masks (N, H, W) bool at the image size, boxes (N, 4) xyxy, scores (N,).
        score_threshold: instances scoring below this are not drawn.
        alpha: opacity of the mask fill (0 = contour only).
        show_scores: write "class 0.87" (True) or only "class" (False, e.g. ground truth).
        line_width, font_size: default to sizes that scale with the image.

    Returns:
        An RGB PIL image of the same size as ``image``.

    Raises:
        InvalidInputError: the image is unreadable or its size differs from the instances'.
    """
    pixels = load_image(image)
    height, width = pixels.shape[:2]
    if len(instances) and instances.image_size != (height, width):
        raise InvalidInputError(
            f"The instances were found on a {instances.image_size[1]}x{instances.image_size[0]} image, "
            f"but the image to draw on is {width}x{height}: pass the image that was segmented."
        )
    auto_line, auto_font = _auto_sizes(height, width)
    line_width = auto_line if line_width is None else int(line_width)
    font = _font(auto_font if font_size is None else font_size)

    shown = instances.filter(score_threshold) if len(instances) else instances
    order = np.argsort(shown.scores, kind="stable")  # ascending: best drawn last, on top
    colors = [class_color(name) for name in shown.names]

    canvas = pixels.astype(np.float32)
    if show_masks:
        for i in order:
            _paint_mask(canvas, shown.masks[i], colors[i], alpha, line_width)
    result = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(result)
    for i in order:
        x1, y1, x2, y2 = (float(v) for v in shown.boxes[i])
        if show_boxes and x2 > x1 and y2 > y1:
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colors[i], width=line_width)
        if show_labels:
            text = shown.names[i] + (f" {float(shown.scores[i]):.2f}" if show_scores else "")
            _draw_label(draw, (x1, y1), text, colors[i], font, (width, height))
    return result


def draw_side_by_side(
    image: ImageLike,
    predicted: Instances,
    ground_truth: Instances,
    *,
    score_threshold: float = 0.0,
    titles: tuple[str, str] = ("ground truth", "prediction"),
    gap: int = 8,
) -> Image.Image:
    """Ground truth (left) and prediction (right) on the same image, each under a title.

    Args:
        image: the image both sets of instances belong to, (H, W).
        predicted: the model's instances (drawn with scores, filtered by ``score_threshold``).
        ground_truth: the annotated instances (drawn without scores).
        gap: white pixels between the two panels.

    Returns:
        RGB image of width 2 * W + gap and height H + title strip height.
    """
    pixels = load_image(image)
    height, width = pixels.shape[:2]
    left = draw_instances(pixels, ground_truth, show_scores=False)
    right = draw_instances(pixels, predicted, score_threshold=score_threshold)
    font = _font(max(12, min(32, round(width / 30))))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = max(probe.textbbox((0, 0), title, font=font)[3] for title in titles)
    strip = text_h + 2 * max(4, text_h // 3)
    sheet = Image.new("RGB", (2 * width + gap, height + strip), (255, 255, 255))
    sheet.paste(left, (0, strip))
    sheet.paste(right, (width + gap, strip))
    draw = ImageDraw.Draw(sheet)
    for title, x0 in zip(titles, (0, width + gap), strict=True):
        text_w = draw.textlength(title, font=font)
        draw.text((x0 + (width - text_w) / 2, (strip - text_h) / 2), title, fill=(0, 0, 0), font=font)
    return sheet


# --------------------------------------------------------------------------- references


#: The colour that marks a negative reference ("not <class>") in the memory picture.
NEGATIVE_COLOR = (220, 20, 20)


class PictureReference(NamedTuple):
    """One reference to picture: its image, its instance mask, its class (None: a background
    negative), whether it is a negative example ("not <class>") and its annotated box
    (x1, y1, x2, y2; the crop's centre under the ``"research"`` crop convention), if any."""

    image: ImageLike
    mask: MaskLike
    class_name: str | None
    negative: bool = False
    box: Sequence[float] | None = None


def _as_reference(reference: Any) -> tuple[np.ndarray, np.ndarray, str | None, bool, list[float] | None]:
    """(image (H, W, 3) uint8, mask (H, W) bool, class name, negative, annotated box or None)
    from a tuple or an object."""
    box = None
    if isinstance(reference, PictureReference):
        image, mask, class_name, negative, box = reference
    elif isinstance(reference, tuple | list) and len(reference) in (3, 4, 5):
        image, mask, class_name, *rest = reference
        negative = bool(rest[0]) if rest else False
        box = rest[1] if len(rest) > 1 else None
    else:
        try:
            image, mask, class_name = reference.image, reference.mask, reference.class_name
        except AttributeError as error:
            raise InvalidInputError(
                "A reference to picture must be (image, mask, class_name[, negative[, box]]) or have those "
                "attributes."
            ) from error
        negative = bool(getattr(reference, "negative", False))
        box = getattr(reference, "box", None)
    if class_name is None and not negative:
        raise InvalidInputError("A positive reference to picture needs a class name.")
    pixels = load_image(image)
    return (
        pixels,
        decode_mask(mask, pixels.shape[:2]),
        None if class_name is None else str(class_name),
        bool(negative),
        None if box is None else [float(v) for v in box],
    )


def draw_reference(
    image: ImageLike,
    mask: MaskLike,
    *,
    class_name: str | None = None,
    size: int = 192,
    context_ratio: float = 0.2,
    box: Sequence[float] | None = None,
    reference_crop: str = "refseg",
) -> Image.Image:
    """The context crop the memory bank encodes, resized to ``size`` x ``size``, mask outlined.

    Uses :func:`refseg.reference_features.reference_crop_box` (the bank's own crop), so what
    is shown is what the encoder saw, apart from the resize.

    Args:
        image: the reference image (H, W).
        mask: (H, W) bool array, COCO polygon list or RLE dict.
        class_name: colours the outline (white if None).
        box: the reference's annotated box (x1, y1, x2, y2), if any.
        reference_crop: the bank's crop convention (:attr:`refseg.presets.Preset.reference_crop`).

    Returns:
        RGB image ``size`` x ``size``.
    """
    pixels = load_image(image)
    mask = decode_mask(mask, pixels.shape[:2])
    x0, y0, x1, y1 = reference_crop_box(mask, context_ratio, box, reference_crop)
    color = class_color(class_name) if class_name is not None else (255, 255, 255)
    crop = Image.fromarray(pixels[y0:y1, x0:x1]).resize((size, size), Image.Resampling.BICUBIC)
    crop_mask = Image.fromarray(mask[y0:y1, x0:x1].astype(np.uint8) * 255).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    canvas = np.asarray(crop, dtype=np.float32).copy()
    _paint_mask(canvas, np.asarray(crop_mask) > 127, color, 0.0, max(1, size // 96))
    return Image.fromarray(canvas.astype(np.uint8))


def pca_rgb(features: torch.Tensor, fit_weights: torch.Tensor | None = None) -> torch.Tensor:
    """First three principal components of patch features, as colours in [0, 255].

    Args:
        features: (N, C) patch features, all references together.
        fit_weights: (N,) optional weights; the PCA (mean, axes and colour range) is fitted
            on the patches whose weight is > 0.5 (e.g. foreground), if there are at least 3.

    Returns:
        (N, 3) float32 in [0, 255]. Each component is scaled so its 1st..99th percentile over
        the fitted patches spans 0..255; axis signs are fixed (largest loading positive), so
        the same features always give the same colours.
    """
    features = features.float()
    fit = features
    if fit_weights is not None:
        selected = features[fit_weights > 0.5]
        if selected.shape[0] >= 3:
            fit = selected
    mean = fit.mean(dim=0, keepdim=True)
    centred = fit - mean
    covariance = centred.T @ centred / max(1, fit.shape[0] - 1)
    _, vectors = torch.linalg.eigh(covariance.double())  # ascending eigenvalues
    axes = vectors[:, -3:].flip(1).float()  # (C, <=3), largest variance first
    signs = torch.sign(axes.gather(0, axes.abs().argmax(dim=0, keepdim=True)))
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
    if axes.shape[1] < 3:  # fewer than 3 feature channels
        axes = torch.cat([axes, torch.zeros(axes.shape[0], 3 - axes.shape[1])], dim=1)
    projected = (features - mean) @ axes
    fitted = (fit - mean) @ axes
    if fitted.shape[0] > QUANTILE_SAMPLE:  # torch.quantile refuses very large inputs
        fitted = fitted[torch.linspace(0, fitted.shape[0] - 1, QUANTILE_SAMPLE).long()]
    low = torch.quantile(fitted, 0.01, dim=0)
    high = torch.quantile(fitted, 0.99, dim=0)
    scale = torch.where(high > low, high - low, torch.ones_like(high))
    return ((projected - low) / scale).clamp(0.0, 1.0) * 255.0


def memory_picture(
    encoder: Encoder,
    references: Sequence[PictureReference | tuple],
    *,
    context_ratio: float = 0.2,
    tile_size: int = 128,
    label_width: int = 140,
    gap: int = 6,
    background_brightness: float = 0.3,
    fit_on_foreground: bool = False,
    reference_crop: str = "refseg",
) -> Image.Image:
    """What the memory bank sees: per reference, its context crop and a PCA view of its features.

    For every reference (image, mask, class name): the crop and soft mask are made exactly as
    the memory bank makes them (:func:`refseg.reference_features.reference_inputs`) and encoded; the patch
    features of ALL references are projected together on their first three principal
    components (:func:`pca_rgb`), so similar parts get similar colours across references and
    classes. Patches are dimmed where the soft mask (sampled to the patch grid by nearest
    neighbour, as the bank pools) is 0, down to ``background_brightness``.

    Layout: one row per class (classes in order of first appearance); each row has the class
    name, then one (crop with outlined mask, PCA view) pair of tiles per reference, positives
    first. A negative reference ("not <class>") is framed in red and labelled so; background
    negatives (class None) share a last row, "(no class)". All patch features are held at once:
    meant for tens to a few hundred references, not a whole LVIS bank.

    Args:
        encoder: the memory bank's encoder.
        references: (image, mask, class name[, negative]) tuples or :class:`PictureReference`;
            mask as for :func:`refseg.masks.decode_mask`.
        tile_size: side of each tile in pixels.
        fit_on_foreground: fit the PCA on foreground patches only (default: all patches).
        reference_crop: the bank's crop convention (:attr:`refseg.presets.Preset.reference_crop`;
            ``MemoryBank.reference_crop``), with each reference's annotated box under ``"research"``.

    Returns:
        RGB image of width ``label_width + gap + max_refs * (2 * tile_size + gap)`` and height
        ``gap + classes * (tile_size + gap)``, where ``max_refs`` is the largest number of
        references of one class.

    Raises:
        InvalidInputError: no references, an unreadable image or an empty mask.
    """
    if len(references) == 0:
        raise InvalidInputError("No references to picture: the memory picture needs at least one.")
    input_size = encoder.identity.input_size
    crops, weights, tiles, names, negatives = [], [], [], [], []
    for reference in references:
        pixels, mask, class_name, negative, box = _as_reference(reference)
        crop, soft_mask = reference_inputs(
            pixels, mask, input_size, context_ratio, box=box, convention=reference_crop
        )
        crops.append(crop)
        weights.append(soft_mask)
        tiles.append(
            draw_reference(
                pixels,
                mask,
                class_name=class_name,
                size=tile_size,
                context_ratio=context_ratio,
                box=box,
                reference_crop=reference_crop,
            )
        )
        names.append(class_name)
        negatives.append(negative)

    feature_maps = []
    with torch.inference_mode():
        for start in range(0, len(crops), 8):
            feature_maps.append(encoder.encode(torch.stack(crops[start : start + 8])).float().cpu())
    features = torch.cat(feature_maps)  # (R, C, h, w)
    count, channels, grid_h, grid_w = features.shape
    patch_weights = F.interpolate(torch.stack(weights)[:, None], size=(grid_h, grid_w), mode="nearest")[:, 0]
    flat = features.permute(0, 2, 3, 1).reshape(-1, channels)
    colors = pca_rgb(flat, patch_weights.reshape(-1) if fit_on_foreground else None)
    colors = colors.reshape(count, grid_h, grid_w, 3)
    brightness = background_brightness + (1.0 - background_brightness) * patch_weights.clamp(0.0, 1.0)
    colors = (colors * brightness[..., None]).round().to(torch.uint8).numpy()
    logger.debug(
        "memory picture: %d references, %d-d features on a %dx%d grid", count, channels, grid_h, grid_w
    )

    classes = list(dict.fromkeys(n for n in names if n is not None))
    if None in names:
        classes.append(None)  # background negatives: a last row
    per_class = {
        name: sorted((i for i, n in enumerate(names) if n == name), key=lambda i: negatives[i])
        for name in classes
    }
    max_refs = max(len(indices) for indices in per_class.values())
    width = label_width + gap + max_refs * (2 * tile_size + gap)
    height = gap + len(classes) * (tile_size + gap)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(max(10, tile_size // 9))
    for row, name in enumerate(classes):
        top = gap + row * (tile_size + gap)
        row_name = "(no class)" if name is None else name
        label = row_name if draw.textlength(row_name, font=font) <= label_width - gap else row_name[:14] + "…"
        draw.rectangle(
            (gap, top, gap + 5, top + tile_size - 1),
            fill=NEGATIVE_COLOR if name is None else class_color(name),
        )
        draw.text((gap + 12, top + tile_size / 2), label, fill=(0, 0, 0), font=font, anchor="lm")
        for column, index in enumerate(per_class[name]):
            left = label_width + gap + column * (2 * tile_size + gap)
            sheet.paste(tiles[index], (left, top))
            pca_tile = Image.fromarray(colors[index]).resize((tile_size, tile_size), Image.Resampling.NEAREST)
            sheet.paste(pca_tile, (left + tile_size, top))
            if negatives[index]:
                _mark_negative(draw, (left, top, left + 2 * tile_size - 1, top + tile_size - 1), name, font)
    return sheet


def _mark_negative(
    draw: ImageDraw.ImageDraw,
    frame: tuple[int, int, int, int],
    class_name: str | None,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    """A red frame around a negative reference's tiles and "not <class>" (or "not any class")."""
    left, top, right, bottom = frame
    width = max(2, (bottom - top) // 40)
    draw.rectangle(frame, outline=NEGATIVE_COLOR, width=width)
    text = "not any class" if class_name is None else f"not {class_name}"
    box = draw.textbbox((left + width + 2, top + width + 2), text, font=font)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=NEGATIVE_COLOR)
    draw.text((left + width + 2, top + width + 2), text, fill=(255, 255, 255), font=font)
