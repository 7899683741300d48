"""Command-line verbs for pictures and the web app: ``refseg app`` and ``refseg memory show``.

The main ``refseg`` group (:mod:`refseg.cli`) registers :data:`app_command` and
:data:`show_memory_command`; both turn a :class:`~refseg.errors.RefsegError` into a one-line
message and a non-zero exit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from .errors import InvalidInputError, RefsegError
from .masks import decode_mask
from .memory import MemoryBank, ReferenceRecord
from .presets import PRESETS

logger = logging.getLogger(__name__)

BoxToMask = Callable[[np.ndarray, Sequence[float]], np.ndarray]


# --------------------------------------------------------------------------- refseg app


@click.command("app")
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="fast",
    show_default=True,
    help="Model settings; 'fast' (SAM2.1 tiny, DINOv2-S, 16x16 points) keeps the page responsive on a CPU.",
)
@click.option("--sam2", default=None, help="SAM2 hub id or local directory (overrides the preset's).")
@click.option("--encoder", default=None, help="DINOv2 hub id or local directory (overrides the preset's).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default=None, help="Compute dtype.")
@click.option(
    "--memory",
    "memory_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A memory file every new browser session starts from.",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: the network)."
)
@click.option("--port", default=7860, show_default=True, type=int, help="TCP port.")
def app_command(
    preset: str,
    sam2: str | None,
    encoder: str | None,
    device: str | None,
    dtype: str | None,
    memory_path: Path | None,
    host: str,
    port: int,
) -> None:
    """Start the web app: add references in the browser, segment targets, download results."""
    try:
        from .app import launch
        from .segmenter import Segmenter

        memory = MemoryBank.load(memory_path) if memory_path is not None else None
        click.echo(f"Loading the {preset} models...", err=True)
        segmenter = Segmenter.from_pretrained(preset, sam2=sam2, encoder=encoder, device=device, dtype=dtype)
        if memory is not None:
            memory.check_encoder(segmenter.encoder.identity)
        click.echo(f"refseg app on http://{host}:{port} (Ctrl+C to stop)", err=True)
        launch(segmenter, host=host, port=port, memory=memory, block=True, quiet=True)
    except RefsegError as error:
        raise click.ClickException(str(error)) from error


# --------------------------------------------------------------------------- refseg memory show


def _find_file(name: str | None, images_dir: Path | None) -> Path | None:
    """An existing file: ``name`` as given, else under ``images_dir``."""
    if not name:
        return None
    path = Path(name)
    if path.is_file():
        return path
    if images_dir is not None:
        for candidate in (images_dir / path, images_dir / path.name):
            if candidate.is_file():
                return candidate
    return None


def _reference_mask(
    record: ReferenceRecord,
    image: np.ndarray,
    annotation: Mapping[str, Any] | None,
    box_to_mask: BoxToMask | None,
) -> np.ndarray:
    """The mask of a reference from what its source recorded (mask, mask file, annotation or box)."""
    from .data.coco import has_segmentation
    from .masks import segmentation_to_mask
    from .references import read_mask

    source = record.source
    height, width = image.shape[:2]
    if source.get("mask") is not None:
        return decode_mask(source["mask"], (height, width))
    if source.get("mask_file"):
        return decode_mask(read_mask(source["mask_file"]), (height, width))
    box = source.get("box")
    if annotation is not None:
        if has_segmentation(annotation):
            return segmentation_to_mask(annotation["segmentation"], height, width)
        if "bbox" in annotation:
            x, y, w, h = (float(v) for v in annotation["bbox"])
            box = [x, y, x + w, y + h]
    if box is not None:
        if box_to_mask is None:
            raise InvalidInputError("only its box is known and SAM2 is not available to make the mask")
        return box_to_mask(image, box)
    raise InvalidInputError("its source records no mask, mask file, COCO annotation or box")


def picture_references(
    bank: MemoryBank,
    *,
    images_dir: str | os.PathLike | None = None,
    coco: Mapping[str, Any] | None = None,
    box_to_mask: BoxToMask | None = None,
    max_per_class: int | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray, str]], list[str]]:
    """Find each reference's image and mask again from the provenance the bank stored.

    The bank keeps features, not pictures; its reference sources say where they came from:
    ``file`` / ``file_name`` (image path, relative ones looked up under ``images_dir``), and
    ``mask`` (RLE or polygons, written by the web app), ``mask_file`` (folder references),
    ``annotation_id`` (found in ``coco``) or ``box`` (made into a mask by ``box_to_mask``).

    Args:
        max_per_class: at most this many references of each class (the first found).
        classes: only references of these classes (default: all).

    Returns:
        (image (H, W, 3) uint8, mask (H, W) bool, class name) per reference found, and one
        "why" line per reference skipped.
    """
    from .data.images import load_image

    folder = Path(images_dir) if images_dir is not None else None
    annotations = {a.get("id"): a for a in (coco or {}).get("annotations", [])}
    coco_images = {i.get("id"): i for i in (coco or {}).get("images", [])}
    found: list[tuple[np.ndarray, np.ndarray, str]] = []
    skipped: list[str] = []
    per_class: dict[str, int] = {}
    for record in bank.references:
        if classes is not None and record.class_name not in classes:
            continue
        if max_per_class is not None and per_class.get(record.class_name, 0) >= max_per_class:
            continue
        source = record.source
        name = source.get("file") or source.get("file_name")
        if not name and source.get("image_id") in coco_images:
            name = coco_images[source["image_id"]].get("file_name")
        path = _find_file(name, folder)
        label = f"reference {record.ref_id} ({record.class_name})"
        if path is None:
            where = f"{name!r} not found" if name else "no image file recorded"
            skipped.append(f"{label}: {where}; pass --images DIR")
            continue
        try:
            image = load_image(path)
            mask = _reference_mask(record, image, annotations.get(source.get("annotation_id")), box_to_mask)
        except RefsegError as error:
            skipped.append(f"{label}: {error}")
            continue
        found.append((image, mask, record.class_name))
        per_class[record.class_name] = per_class.get(record.class_name, 0) + 1
    return found, skipped


@click.command("show")
@click.argument("memory_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Picture to write (default: the memory file's name with .png).",
)
@click.option(
    "--images",
    "images_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder the references' recorded file names are relative to.",
)
@click.option(
    "--coco",
    "coco_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The COCO json the memory was built from (for references recorded by annotation id).",
)
@click.option(
    "--encoder", default=None, help="DINOv2 hub id or directory (default: the one the bank records)."
)
@click.option(
    "--sam2",
    default=None,
    help="SAM2 hub id or directory, only for references known by a box (default: the paper preset's).",
)
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available).")
@click.option("--classes", default=None, help="Only these classes, comma-separated (default: all).")
@click.option("--max-per-class", type=int, default=8, show_default=True, help="References shown per class.")
@click.option("--tile-size", type=int, default=128, show_default=True, help="Side of each tile in pixels.")
def show_memory_command(
    memory_path: Path,
    out: Path | None,
    images_dir: Path | None,
    coco_path: Path | None,
    encoder: str | None,
    sam2: str | None,
    device: str | None,
    classes: str | None,
    max_per_class: int,
    tile_size: int,
) -> None:
    """Picture a memory file: per class, each reference's crop and a PCA view of its DINOv2 features.

    The first three principal components of all references' patch features are shown as RGB,
    so parts the encoder finds alike get alike colours; patches outside the mask are dimmed.
    """
    try:
        from .data.coco import load_coco
        from .models.loading import load_encoder
        from .viz import memory_picture

        bank = MemoryBank.load(memory_path)
        if len(bank) == 0:
            raise InvalidInputError(f"{memory_path} holds no references: nothing to picture.")
        coco = load_coco(coco_path, require=("images", "annotations")) if coco_path is not None else None
        dino = load_encoder(encoder or bank.encoder.name, input_size=bank.encoder.input_size, device=device)
        bank.check_encoder(dino.identity)
        box_to_mask = _lazy_box_to_mask(sam2 or PRESETS["paper"].sam2_id, dino, device)
        wanted = None if classes is None else [c.strip() for c in classes.split(",") if c.strip()]
        unknown = sorted(set(wanted or []) - set(bank.class_names))
        if unknown:
            raise InvalidInputError(f"Unknown class(es) {unknown}; the memory holds: {bank.class_names}.")
        references, skipped = picture_references(
            bank,
            images_dir=images_dir,
            coco=coco,
            box_to_mask=box_to_mask,
            max_per_class=max_per_class,
            classes=wanted,
        )
        for line in skipped:
            click.echo(f"skipped {line}", err=True)
        if not references:
            raise InvalidInputError(
                "None of the references' images and masks could be found (see above): pass --images "
                "(and --coco for a memory built from a COCO json)."
            )
        picture = memory_picture(dino, references, context_ratio=bank.context_ratio, tile_size=tile_size)
        target = out if out is not None else memory_path.with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.save(target)
        click.echo(f"{len(references)} reference(s) pictured ({len(skipped)} skipped): {target}")
    except RefsegError as error:
        raise click.ClickException(str(error)) from error


def _lazy_box_to_mask(sam2_id: str, encoder: Any, device: str | None) -> BoxToMask:
    """A box -> mask function that loads SAM2 on its first call only."""
    segmenter: list[Any] = []

    def box_to_mask(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
        if not segmenter:
            from .models.loading import load_proposer
            from .segmenter import Segmenter

            segmenter.append(Segmenter(load_proposer(sam2_id, device=device), encoder))
        return segmenter[0].reference_mask(image, box=box)

    return box_to_mask
