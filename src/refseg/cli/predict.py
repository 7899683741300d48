"""``refseg predict`` (segment images with a memory bank) and ``refseg eval`` (COCO evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

import click

from ..data.coco import load_coco, write_json
from ..errors import InvalidInputError
from ..files import check_not_input
from ..memory import MemoryBank
from ..model_spec import ModelSpec
from .options import CONTEXT_SETTINGS, COUNT, SCORE, PrintReporter, echo, model_options, output_option


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("targets", nargs=-1)
@click.option("--memory", "memory_file", type=click.Path(dir_okay=False), help="The memory bank file.")
@click.option(
    "--references",
    "references_dir",
    type=click.Path(file_okay=False),
    help="Instead of --memory: a folder with one sub-folder per class of image + mask pairs "
    "(x.png + x.mask.png); the memory is built first and saved as OUTPUT.memory.safetensors.",
)
@click.option(
    "--coco", "coco_json", type=click.Path(dir_okay=False), help="Segment the images of this COCO json."
)
@click.option("--images", type=click.Path(file_okay=False), help="With --coco: the folder of its images.")
@output_option("-o", "--output", required=True, help="The COCO results json to write.")
@click.option(
    "--score-thr",
    type=SCORE,
    default=0.0,
    show_default=True,
    help="Drop instances scoring below this (in [0, 1]).",
)
@click.option("--limit", type=COUNT, help="Only the first N target images (N >= 1).")
@output_option("--vis", "vis_dir", folder=True, help="Also write overlay PNGs into this folder.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run with the same settings and output.")
@model_options(predict=True)
def predict(
    targets: Sequence[str],
    memory_file: str | None,
    references_dir: str | None,
    coco_json: str | None,
    images: str | None,
    output: str,
    score_thr: float,
    limit: int | None,
    vis_dir: str | None,
    resume: bool,
    models: ModelSpec,
) -> None:
    """Segment images with a memory bank; write COCO results (RLE masks).

    TARGETS are image files, folders or quoted glob patterns ('photos/**/*.jpg'); or use
    --coco val.json --images DIR for the images of a COCO json (with their ids; results carry
    the json's category id of each class, matched by name). Results are
    written as they come to OUTPUT.partial.jsonl, so an interrupted run continues with
    --resume. Beside OUTPUT: OUTPUT.images.json (file name -> image id) and, if some images
    could not be read, OUTPUT.errors.json. Multi-GPU: torchrun --nproc-per-node N -m refseg predict ...

    \b
    Examples:
      refseg predict --memory memory.safetensors photos/ -o results.json --vis overlays/
      refseg predict --references examples/coins/references examples/coins/targets -o runs/coins/results.json
      refseg predict --memory memory.safetensors --coco val.json --images val2017/ -o results.json
    """
    from ..pipelines.predict import predict_images
    from ..targets import coco_targets_and_categories, collect_targets

    categories = None
    if coco_json is not None:
        if images is None:
            raise InvalidInputError("--coco needs --images DIR, the folder of its images.")
        if targets:
            raise InvalidInputError("Give either target images or --coco JSON --images DIR, not both.")
        target_list, categories = coco_targets_and_categories(coco_json, images)
    elif targets:
        target_list = collect_targets(targets)
    else:
        raise InvalidInputError("Give target images (files, folders or globs) or --coco JSON --images DIR.")
    if limit is not None:
        target_list = target_list[: max(0, limit)]
    if (memory_file is None) == (references_dir is None):
        raise InvalidInputError("Give either --memory FILE or --references DIR (one sub-folder per class).")
    predict_images(
        models,
        target_list,
        output,
        memory=None if memory_file is None else MemoryBank.load(memory_file),
        references_dir=references_dir,
        score_threshold=score_thr,
        vis_dir=vis_dir,
        resume=resume,
        reporter=PrintReporter(),
        categories=categories,
        inputs=[path for path in (memory_file, coco_json) if path is not None],
    )


@click.command("eval", context_settings=CONTEXT_SETTINGS)
@click.option("--gt", type=click.Path(dir_okay=False), required=True, help="Ground-truth COCO json.")
@click.option("--results", type=click.Path(dir_okay=False), required=True, help="COCO results json.")
@click.option("--classes", help="Evaluate these classes only: a split name (coco-fsod-novel) or names.")
@click.option(
    "--iou-type",
    "iou_types",
    type=click.Choice(["bbox", "segm"]),
    multiple=True,
    help="bbox and/or segm (default: both, or bbox alone when the ground truth has no masks).",
)
@click.option(
    "--images-json",
    type=click.Path(dir_okay=False),
    help="Evaluate on these images only: a COCO-style images list, e.g. RESULTS.images.json from predict.",
)
@click.option(
    "--segm-areas",
    type=click.Choice(["mask", "box"]),
    default="mask",
    show_default=True,
    help="segm only: a result's area (its small/medium/large range) from its mask (result boxes "
    "dropped, as detectron2) or from its box (plain pycocotools, which keeps result boxes).",
)
@output_option("-o", "--output", example="summary.json", help="Also write the summary as json.")
def eval_command(
    gt: str,
    results: str,
    classes: str | None,
    iou_types: tuple[str, ...],
    images_json: str | None,
    segm_areas: str,
    output: str | None,
) -> None:
    """COCO evaluation (pycocotools, maxDets 100): the 12-number tables for bbox and segm.

    Convention for segm: result boxes are dropped before pycocotools loads the results, so each
    result's area (which decides APs, APm and APl) is its mask's area, as in detectron2's COCO
    evaluator. Plain pycocotools keeps a result's box and uses the box's area instead: pass
    --segm-areas box for its numbers. AP, AP50, AP75 and AR over all areas do not change.

    \b
    Example:
      refseg eval --gt instances_val2017.json --results results.json --classes coco-fsod-novel
    """
    from ..data.coco import has_segmentation
    from ..evaluate import evaluate, format_table
    from ..targets import read_image_ids

    if output:
        check_not_input([output], [gt, results, images_json])
    gt_data = load_coco(gt)
    if not iou_types:
        iou_types = ("bbox", "segm")
        if not all(has_segmentation(a) for a in gt_data["annotations"]):
            iou_types = ("bbox",)
            echo("The ground truth has box-only annotations: evaluating bbox only.", err=True)
    image_ids = read_image_ids(images_json) if images_json else None
    summary = evaluate(
        gt_data, results, classes=classes, iou_types=iou_types, image_ids=image_ids, segm_areas=segm_areas
    )
    echo(format_table(summary))
    if output:
        write_json(summary, output, indent=2)
        echo(f"summary -> {output}")
