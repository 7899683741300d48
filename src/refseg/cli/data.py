"""Data verbs: ``refseg sample``, ``refseg voc2coco`` and ``refseg boxes-to-masks``."""

from __future__ import annotations

from collections.abc import Sequence

import click

from ..data.coco import load_coco, write_json
from ..files import check_not_input
from ..model_spec import ModelSpec
from .options import CONTEXT_SETTINGS, COUNT, echo, model_options, output_option


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("coco_json", type=click.Path(dir_okay=False))
@click.option(
    "--classes",
    required=True,
    help="A split name (coco-fsod-novel, coco-all, voc-split-1...) or comma-separated class names.",
)
@click.option("--shots", type=COUNT, required=True, help="References per class (K), >= 1.")
@click.option(
    "--seed", type=int, default=33, show_default=True, help="Sampling seed (the paper's main results: 33)."
)
@output_option(
    "-o", "--output", required=True, example="refs.json", help="The references COCO json to write."
)
def sample(coco_json: str, classes: str, shots: int, seed: int, output: str) -> None:
    """Draw K reference instances per class from a COCO data set.

    Crowd regions, boxes under 32 px a side and boxes within 10 px of the border are skipped;
    each class takes at most one instance per image. The output is a COCO json.

    \b
    Example:
      refseg sample annotations/instances_train2017.json --classes coco-fsod-novel \\
          --shots 30 --seed 33 -o refs.json
    """
    from ..data.sampling import sample_references

    check_not_input([output], [coco_json])
    refs = sample_references(load_coco(coco_json), classes, shots, seed)
    write_json(refs, output)
    counts: dict[str, int] = {c["name"]: 0 for c in refs["categories"]}
    names = {c["id"]: c["name"] for c in refs["categories"]}
    for annotation in refs["annotations"]:
        counts[names[annotation["category_id"]]] += 1
    for name, count in counts.items():
        note = "" if count == shots else f"  (only {count} of {shots} available)"
        echo(f"  {name:<24} {count:>4}{note}")
    echo(f"{len(refs['annotations'])} references of {len(counts)} classes (seed {seed}) -> {output}")


# ----------------------------------------------------------------------------- memory


@click.command("boxes-to-masks", context_settings=CONTEXT_SETTINGS)
@click.argument("coco_json", type=click.Path(dir_okay=False))
@click.option(
    "--images", type=click.Path(file_okay=False), required=True, help="Folder of the json's images."
)
@output_option("-o", "--output", required=True, example="masks.json", help="The COCO json to write.")
@click.option("--overwrite", is_flag=True, help="Also replace existing segmentations.")
@model_options(choices=("preset", "sam2", "device", "dtype"), help_texts={"preset": "Gives the SAM2 model."})
def boxes_to_masks_command(
    coco_json: str, images: str, output: str, overwrite: bool, models: ModelSpec
) -> None:
    """Give box-only annotations masks made by SAM2 from their boxes (PASCAL VOC, CD-FSOD).

    \b
    Example:
      refseg boxes-to-masks voc_test.json --images VOCdevkit/ -o voc_test_masks.json
    """
    from ..data.boxes import boxes_to_masks

    check_not_input([output], [coco_json])
    converted = boxes_to_masks(
        load_coco(coco_json),
        images,
        models.load_proposer(),
        overwrite=overwrite,
        on_skip=lambda line: echo(f"  skipped {line}", err=True),
    )
    write_json(converted, output)
    counts = converted["info"]["boxes_to_masks"]["masks"]
    skipped = converted["info"]["boxes_to_masks"]["skipped_images"]
    echo(f"{counts['sam2']} masks from SAM2, {counts['box']} box fallbacks, {len(skipped)} images skipped")
    echo(output)


@click.command("voc2coco", context_settings=CONTEXT_SETTINGS)
@click.argument("voc_roots", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--set", "image_set", default="trainval", show_default=True, help="ImageSets/Main/<set>.txt to convert."
)
@click.option(
    "--classes",
    help="A VOC split name (voc-split-1...) or comma-separated VOC class names (default: all 20).",
)
@click.option(
    "--difficult",
    type=click.Choice(["keep", "ignore", "drop"]),
    default="keep",
    show_default=True,
    help="Objects marked difficult: ordinary annotations, crowd (ignored by COCO eval), or left out.",
)
@output_option("-o", "--output", required=True, example="voc.json", help="The COCO json to write.")
def voc2coco(
    voc_roots: Sequence[str], image_set: str, classes: str | None, difficult: str, output: str
) -> None:
    """Convert PASCAL VOC annotations (VOCdevkit/VOC2007 ...) to a box-only COCO json.

    file_name entries are relative to the folder holding the roots (VOCdevkit): pass it as
    --images to the other verbs.

    \b
    Example:
      refseg voc2coco VOCdevkit/VOC2007 VOCdevkit/VOC2012 --set trainval -o voc_trainval.json
    """
    from ..data.splits import COCO_TO_VOC, SPLITS, VOC_CLASSES
    from ..data.voc import voc_image_dir, voc_to_coco

    if classes is None:
        class_list: Sequence[str] = VOC_CLASSES
    elif classes.strip() in SPLITS:
        class_list = SPLITS[classes.strip()]
    else:  # VOC names; the six COCO spellings (airplane, tv...) are read as their VOC names
        class_list = [
            COCO_TO_VOC.get(name.strip(), name.strip()) for name in classes.split(",") if name.strip()
        ]
    converted = voc_to_coco(list(voc_roots), image_set, classes=class_list, difficult=difficult)  # type: ignore[arg-type]
    write_json(converted, output)
    echo(
        f"{len(converted['images'])} images, {len(converted['annotations'])} boxes of "
        f"{len(converted['categories'])} classes; images folder: {voc_image_dir(list(voc_roots))}"
    )
    echo(output)
