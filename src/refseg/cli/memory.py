"""``refseg memory``: build a memory bank, describe it (``info``) and picture it (``show``)."""

from __future__ import annotations

from pathlib import Path

import click

from ..data.coco import load_coco
from ..errors import InvalidInputError
from ..files import check_not_input, check_writable, picture_format, save_image
from ..memory import MemoryBank, read_memory_metadata
from ..model_spec import ModelSpec
from .options import (
    CONTEXT_SETTINGS,
    COUNT,
    TILE,
    DefaultCommandGroup,
    echo,
    model_options,
    output_option,
    refseg_errors,
)


@click.group(cls=DefaultCommandGroup, context_settings=CONTEXT_SETTINGS, invoke_without_command=False)
def memory() -> None:
    """Build or inspect a memory bank (one .safetensors file).

    `refseg memory --refs ...` is short for `refseg memory build --refs ...`.

    \b
    Examples:
      refseg memory --refs refs.json --images train2017/ -o memory.safetensors
      refseg memory --folder my_refs/ -o memory.safetensors
      refseg memory info memory.safetensors
    """


@memory.command("build", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--refs",
    type=click.Path(dir_okay=False),
    help='References as a COCO json (e.g. from `refseg sample`); an annotation with "negative": true '
    "is a negative example.",
)
@click.option(
    "--images", type=click.Path(file_okay=False), help="Folder the --refs images' file_name are relative to."
)
@click.option(
    "--folder",
    type=click.Path(file_okay=False),
    help="A folder with one sub-folder per class holding image + mask pairs (x.jpg + x.mask.png or "
    "x_mask.png); CLASS/negatives/ holds pairs of what is not CLASS, _background/ pairs of no class.",
)
@output_option(
    "-o", "--output", required=True, example="memory.safetensors", help="The memory file to write."
)
@model_options(references=True)
def memory_build(
    refs: str | None, images: str | None, folder: str | None, output: str, models: ModelSpec
) -> None:
    """Encode references into a memory bank.

    With --refs, annotations with a segmentation give their mask; box-only annotations are
    turned into masks by SAM2 from their box. Each class keeps its COCO category id. With
    --folder, class names are the sub-folder names and category ids 1..K in name order; a mask
    is an image whose white (or 1) pixels mark the object.

    Negative examples ("not this class") are kept beside the positives: with --refs, the
    annotations with "negative": true (of their category; with "category_id": null, of no class);
    with --folder, the pairs in CLASS/negatives/ and, of no class, in _background/. Presets
    with negatives on (paper-neg, fast) use them when predicting; paper ignores them.

    \b
    Examples:
      refseg memory build --refs refs.json --images coco/train2017 -o memory.safetensors
      refseg memory build --folder my_refs/ --preset fast -o memory.safetensors
    """
    from ..references import add_coco_references, add_folder_references, folder_references

    if (refs is None) == (folder is None):
        raise InvalidInputError("Give either --refs REFS.json with --images DIR, or --folder DIR.")
    if refs is not None and images is None:
        raise InvalidInputError(
            "--refs needs --images DIR, the folder its images' file_name are relative to."
        )
    # The inputs are read and checked before the models are loaded: a bad one fails at once.
    check_not_input([output], [refs])
    coco = load_coco(refs, references=True) if refs is not None else None
    if folder is not None:
        folder_references(folder)
    segmenter = models.load_segmenter()

    def skipped(line: str) -> None:
        echo(f"  skipped {line}", err=True)

    if coco is not None:
        report = add_coco_references(segmenter, coco, images, on_skip=skipped)
    else:
        report = add_folder_references(segmenter, folder, on_skip=skipped)
    bank = segmenter.memory
    if not bank.class_names:
        raise InvalidInputError(
            f"No usable positive reference ({report.added} added, {len(report.skipped)} skipped; listed "
            "above): a memory needs at least one example of a class."
        )
    path = bank.save(output)
    echo(bank.describe())
    if report.skipped:
        echo(f"{len(report.skipped)} reference(s) skipped (listed above)", err=True)
    echo(f"{report.added} references of {len(bank.class_names)} classes -> {path}")


@memory.command("info", context_settings=CONTEXT_SETTINGS)
@click.argument("memory_file", type=click.Path(dir_okay=False))
def memory_info(memory_file: str) -> None:
    """Print what a memory file holds: classes, positive and negative references per class,
    background negatives, category ids, encoder, version, size.

    \b
    Example:
      refseg memory info memory.safetensors
    """
    bank = MemoryBank.load(memory_file)
    metadata = read_memory_metadata(memory_file)
    size = Path(memory_file).stat().st_size
    echo(f"file: {memory_file} ({_human_size(size)})")
    echo(
        f"format: {metadata.get('format')} v{metadata.get('format_version')}, "
        f"written by refseg {metadata.get('refseg_version', '?')}"
    )
    echo(bank.describe())


def _human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


@memory.command("show", context_settings=CONTEXT_SETTINGS)
@click.argument("memory_path", type=click.Path(dir_okay=False, path_type=Path))
@output_option(
    "-o",
    "--out",
    path_type=Path,
    example="memory.png",
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
@model_options(
    choices=("encoder", "sam2", "device"),
    help_texts={
        "encoder": "DINOv2 hub id or directory (default: the one the bank records).",
        "sam2": "SAM2 hub id or directory, only for references known by a box or points "
        "(default: the paper preset's).",
    },
)
@click.option("--classes", default=None, help="Only these classes, comma-separated (default: all).")
@click.option(
    "--max-per-class", type=COUNT, default=8, show_default=True, help="References shown per class, >= 1."
)
@click.option(
    "--tile-size", type=TILE, default=128, show_default=True, help="Side of each tile in pixels (16 to 1024)."
)
@refseg_errors
def show_memory_command(
    memory_path: Path,
    out: Path | None,
    images_dir: Path | None,
    coco_path: Path | None,
    models: ModelSpec,
    classes: str | None,
    max_per_class: int,
    tile_size: int,
) -> None:
    """Picture a memory file: per class, each reference's crop and a PCA view of its DINOv2 features.

    The first three principal components of all references' patch features are shown as RGB,
    so parts the encoder finds alike get alike colours; patches outside the mask are dimmed.
    Crops are cut with the context ratio the memory file records. Negative references are
    framed in red and labelled "not CLASS"; background ones share a last row, "(no class)".

    \b
    Example:
      refseg memory show memory.safetensors --images train2017/ --coco refs.json -o memory.png
    """
    import dataclasses

    from ..memory_pictures import lazy_prompt_to_mask, picture_memory

    target = out if out is not None else memory_path.with_suffix(".png")
    picture_format(target)
    check_writable(target, example="memory.png")
    check_not_input([target], [memory_path, coco_path])
    bank = MemoryBank.load(memory_path)
    if len(bank) == 0:
        raise InvalidInputError(f"{memory_path} holds no references: nothing to picture.")
    coco = (
        load_coco(coco_path, require=("images", "annotations"), references=True)
        if coco_path is not None
        else None
    )
    models = dataclasses.replace(models, encoder=models.encoder or bank.encoder.name)
    encoder = models.load_encoder(input_size=bank.encoder.input_size)
    picture = picture_memory(
        bank,
        encoder,
        images_dir=images_dir,
        coco=coco,
        prompt_to_mask=lazy_prompt_to_mask(models.load_proposer, encoder),
        classes=None if classes is None else [c.strip() for c in classes.split(",") if c.strip()],
        max_per_class=max_per_class,
        tile_size=tile_size,
        on_skip=lambda line: echo(f"skipped {line}", err=True),
    )
    save_image(picture.image, target)
    echo(f"{picture.pictured} reference(s) pictured ({len(picture.skipped)} skipped): {target}")
