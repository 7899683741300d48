"""The ``refseg`` command line: one verb per step (sample, memory, predict, eval, reproduce...).

The verbs are thin: they parse options, load models with :meth:`Segmenter.from_pretrained`
and call library functions (:mod:`refseg.runner`, :mod:`refseg.data`, :mod:`refseg.evaluate`).
Any :class:`~refseg.errors.RefsegError` is printed as ``Error: <message>`` on stderr with exit
code 1, never as a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from . import __version__
from .cli_viz import app_command, show_memory_command
from .data.coco import write_json
from .distributed import DistributedContext, distributed_context
from .errors import InvalidInputError, RefsegError
from .presets import PRESETS, Preset, get_preset

logger = logging.getLogger(__name__)

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# METHOD.md section 6: COCO-FSOD novel classes, AP bbox / segm in percent.
# shots -> ((seed 33 bbox, segm), (10-seed mean bbox, std, mean segm, std))
PAPER_COCO_FSOD: dict[int, tuple[tuple[float, float], tuple[float, float, float, float]]] = {
    1: ((25.6, 24.1), (24.5, 1.5, 22.9, 1.6)),
    2: ((30.7, 28.5), (29.5, 2.0, 27.5, 1.9)),
    3: ((32.4, 29.7), (32.3, 1.3, 30.1, 1.3)),
    5: ((35.1, 32.4), (34.4, 0.8, 32.1, 0.7)),
    10: ((36.6, 33.8), (35.9, 0.5, 33.4, 0.5)),
    30: ((37.3, 34.7), (37.0, 0.2, 34.4, 0.2)),
}


# ----------------------------------------------------------------------------- plumbing


class RefsegGroup(click.Group):
    """A click group that turns :class:`RefsegError` into a clean ``Error: ...`` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RefsegError as error:
            raise click.ClickException(str(error)) from None


class DefaultCommandGroup(RefsegGroup):
    """A group that runs ``default_command`` when the first argument is not a sub-command.

    ``refseg memory --refs r.json ...`` is ``refseg memory build --refs r.json ...``.
    """

    default_command = "build"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def echo(message: str = "", *, err: bool = False) -> None:
    click.echo(message, err=err)


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """The model options of a verb: preset, checkpoints, device, dtype and setting overrides."""

    preset: str
    sam2: str | None
    encoder: str | None
    device: str | None
    dtype: str | None
    overrides: dict[str, Any]

    def settings(self) -> Preset:
        """The preset with every override applied (what the run will use)."""
        return get_preset(self.preset).replace(
            sam2_id=self.sam2, encoder_id=self.encoder, dtype=self.dtype, **self.overrides
        )

    def load(self, *, device: str | None = None, memory: Any = None):
        """A :class:`~refseg.Segmenter` (raises WeightsUnavailableError when weights are out of reach)."""
        from .segmenter import Segmenter

        return Segmenter.from_pretrained(
            self.preset,
            sam2=self.sam2,
            encoder=self.encoder,
            device=device or self.device,
            dtype=self.dtype,
            memory=memory,
            **self.overrides,
        )


def model_options(*, predict: bool = True, references: bool = True) -> Callable:
    """Add --preset/--sam2/--encoder/--device/--dtype and the setting overrides as ``models``.

    Args:
        predict: add the prediction settings (--points-per-side, --batch-size, ...).
        references: add the reference settings (--context-ratio).
    """
    options = [
        click.option(
            "--preset",
            type=click.Choice(list(PRESETS)),
            default="paper",
            show_default=True,
            help="Named settings: 'paper' is the paper's method (SAM2 Hiera-L, DINOv2-L, 32x32 points); "
            "'fast' uses SAM2.1 tiny, DINOv2-S and 16x16 points.",
        ),
        click.option(
            "--sam2", metavar="ID_OR_DIR", help="SAM2 hub id or local directory (overrides the preset)."
        ),
        click.option(
            "--encoder", metavar="ID_OR_DIR", help="DINOv2 hub id or local directory (overrides the preset)."
        ),
        click.option("--device", help="cpu, cuda, cuda:1... (default: CUDA when available)."),
        click.option(
            "--dtype",
            type=click.Choice(["float32", "bfloat16"]),
            help="Compute dtype (default: the preset's).",
        ),
    ]
    if references:
        options.append(
            click.option("--context-ratio", type=float, help="Reference crop margin (paper: 0.2).")
        )
    if predict:
        options += [
            click.option("--points-per-side", type=int, help="Proposal grid side (paper: 32)."),
            click.option(
                "--batch-size", "points_batch_size", type=int, help="Prompts per decoder call (speed only)."
            ),
            click.option(
                "--iou-thr", "iou_threshold", type=float, help="SAM2 predicted-IoU filter (paper: 0.4)."
            ),
            click.option("--nms-thr", "nms_threshold", type=float, help="Class-wise NMS IoU (paper: 0.5)."),
            click.option("--max-instances", type=int, help="Instances kept per image (paper: 100)."),
        ]
    override_names = [
        "context_ratio",
        "points_per_side",
        "points_batch_size",
        "iou_threshold",
        "nms_threshold",
        "max_instances",
    ]

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides = {name: kwargs.pop(name) for name in override_names if name in kwargs}
            kwargs["models"] = ModelChoice(
                preset=kwargs.pop("preset"),
                sam2=kwargs.pop("sam2"),
                encoder=kwargs.pop("encoder"),
                device=kwargs.pop("device"),
                dtype=kwargs.pop("dtype"),
                overrides={k: v for k, v in overrides.items() if v is not None},
            )
            return function(*args, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


# ----------------------------------------------------------------------------- root


@click.group(cls=RefsegGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="refseg")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Training-free reference-based instance segmentation.

    Show a few annotated examples of each class (the references); refseg finds, segments and
    labels every instance of those classes in new images (SAM2 proposals + DINOv2 matching).

    \b
    Typical run:
      refseg sample train.json --classes cat,dog --shots 5 -o refs.json
      refseg memory --refs refs.json --images train/ -o memory.safetensors
      refseg predict --memory memory.safetensors photos/ -o results.json
      refseg eval --gt val.json --results results.json
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # no-op if the host set logging up
    logging.getLogger("refseg").setLevel(level)
    if verbose == 0:  # the hub's retry chatter would bury our one-sentence errors
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
        logging.getLogger("transformers").setLevel(logging.ERROR)


main = cli


# ----------------------------------------------------------------------------- sample


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("coco_json", type=click.Path(dir_okay=False))
@click.option(
    "--classes",
    required=True,
    help="A split name (coco-fsod-novel, coco-all, voc-split-1...) or comma-separated class names.",
)
@click.option("--shots", type=int, required=True, help="References per class (K).")
@click.option(
    "--seed", type=int, default=33, show_default=True, help="Sampling seed (the paper's main results: 33)."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    required=True,
    help="The references COCO json to write.",
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
    from .data.coco import load_coco
    from .data.sampling import sample_references

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


@cli.group(cls=DefaultCommandGroup, context_settings=CONTEXT_SETTINGS, invoke_without_command=False)
def memory() -> None:
    """Build or inspect a memory bank (one .safetensors file).

    `refseg memory --refs ...` is short for `refseg memory build --refs ...`.

    \b
    Examples:
      refseg memory --refs refs.json --images train2017/ -o memory.safetensors
      refseg memory --folder my_refs/ -o memory.safetensors
      refseg memory info memory.safetensors
    """


memory.add_command(show_memory_command, "show")
cli.add_command(app_command, "app")


@memory.command("build", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--refs", type=click.Path(dir_okay=False), help="References as a COCO json (e.g. from `refseg sample`)."
)
@click.option(
    "--images", type=click.Path(file_okay=False), help="Folder the --refs images' file_name are relative to."
)
@click.option(
    "--folder",
    type=click.Path(file_okay=False),
    help="A folder with one sub-folder per class holding image + mask pairs (x.jpg + x.mask.png or x_mask.png).",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), required=True, help="The memory file to write."
)
@model_options(predict=False)
def memory_build(
    refs: str | None, images: str | None, folder: str | None, output: str, models: ModelChoice
) -> None:
    """Encode references into a memory bank.

    With --refs, annotations with a segmentation give their mask; box-only annotations are
    turned into masks by SAM2 from their box. Each class keeps its COCO category id. With
    --folder, class names are the sub-folder names and category ids 1..K in name order; a mask
    is an image whose white (or 1) pixels mark the object.

    \b
    Examples:
      refseg memory build --refs refs.json --images coco/train2017 -o memory.safetensors
      refseg memory build --folder my_refs/ --preset fast -o memory.safetensors
    """
    from .references import add_coco_references, add_folder_references

    if (refs is None) == (folder is None):
        raise InvalidInputError("Give either --refs REFS.json with --images DIR, or --folder DIR.")
    if refs is not None and images is None:
        raise InvalidInputError(
            "--refs needs --images DIR, the folder its images' file_name are relative to."
        )
    segmenter = models.load()
    if refs is not None:
        from .data.coco import load_coco

        report = add_coco_references(segmenter, load_coco(refs), images)
    else:
        report = add_folder_references(segmenter, folder)
    bank = segmenter.memory
    if len(bank) == 0:
        raise InvalidInputError(
            f"No usable reference: all {len(report.skipped)} were skipped (see the warnings)."
        )
    path = bank.save(output)
    echo(bank.describe())
    if report.skipped:
        echo(f"{len(report.skipped)} reference(s) skipped:", err=True)
        for item in report.skipped[:20]:
            echo(f"  {item['source']}: {item['reason']}", err=True)
    echo(f"{report.added} references of {len(bank.class_names)} classes -> {path}")


@memory.command("info", context_settings=CONTEXT_SETTINGS)
@click.argument("memory_file", type=click.Path(dir_okay=False))
def memory_info(memory_file: str) -> None:
    """Print what a memory file holds: classes, counts, category ids, encoder, version, size.

    \b
    Example:
      refseg memory info memory.safetensors
    """
    from .memory import MemoryBank, read_memory_metadata

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


# ----------------------------------------------------------------------------- predict


@cli.command(context_settings=CONTEXT_SETTINGS)
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
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), required=True, help="The COCO results json to write."
)
@click.option(
    "--score-thr", type=float, default=0.0, show_default=True, help="Drop instances scoring below this."
)
@click.option("--limit", type=int, help="Only the first N target images.")
@click.option(
    "--vis", "vis_dir", type=click.Path(file_okay=False), help="Also write overlay PNGs into this folder."
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run with the same settings and output.")
@model_options(predict=True, references=False)
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
    models: ModelChoice,
) -> None:
    """Segment images with a memory bank; write COCO results (RLE masks).

    TARGETS are image files, folders or quoted glob patterns ('photos/**/*.jpg'); or use
    --coco val.json --images DIR for the images of a COCO json (with their ids). Results are
    written as they come to OUTPUT.partial.jsonl, so an interrupted run continues with
    --resume. Beside OUTPUT: OUTPUT.images.json (file name -> image id) and, if some images
    could not be read, OUTPUT.errors.json. Multi-GPU: torchrun --nproc-per-node N -m refseg predict ...

    \b
    Examples:
      refseg predict --memory memory.safetensors photos/ -o results.json --vis overlays/
      refseg predict --references examples/coins/references examples/coins/targets -o runs/coins/results.json
      refseg predict --memory memory.safetensors --coco val.json --images val2017/ -o results.json
    """
    from .memory import MemoryBank
    from .targets import coco_targets, collect_targets

    if coco_json is not None:
        if images is None:
            raise InvalidInputError("--coco needs --images DIR, the folder of its images.")
        if targets:
            raise InvalidInputError("Give either target images or --coco JSON --images DIR, not both.")
        target_list = coco_targets(coco_json, images)
    elif targets:
        target_list = collect_targets(targets)
    else:
        raise InvalidInputError("Give target images (files, folders or globs) or --coco JSON --images DIR.")
    if limit is not None:
        target_list = target_list[: max(0, limit)]
    if (memory_file is None) == (references_dir is None):
        raise InvalidInputError("Give either --memory FILE or --references DIR (one sub-folder per class).")
    bank = None if memory_file is None else MemoryBank.load(memory_file)
    with distributed_context(models.device) as dist:
        segmenter = models.load(device=dist.device, memory=bank)
        if references_dir is not None:
            _build_folder_memory(segmenter, references_dir, output, dist)
        summary = _run_predict(segmenter, target_list, output, score_thr, vis_dir, resume, dist)
    if summary is not None:
        _print_predict_summary(summary)


def _build_folder_memory(segmenter: Any, folder: str, output: str, dist: DistributedContext) -> str:
    """Encode a class-per-sub-folder reference layout; rank 0 saves it beside OUTPUT."""
    from .references import add_folder_references

    report = add_folder_references(segmenter, folder, progress=dist.is_main)
    if len(segmenter.memory) == 0:
        raise InvalidInputError(f"No usable reference in {folder}: {len(report.skipped)} skipped.")
    path = Path(str(output) + ".memory.safetensors")
    if dist.is_main:
        segmenter.memory.save(path)
        echo(segmenter.memory.describe())
        echo(f"memory -> {path}")
    dist.barrier()
    return str(path)


def _run_predict(
    segmenter: Any,
    targets: list,
    output: str,
    score_thr: float,
    vis_dir: str | None,
    resume: bool,
    dist: DistributedContext,
):
    from .runner import predict_files

    summary = predict_files(
        segmenter,
        targets,
        output,
        resume=resume,
        score_threshold=score_thr,
        vis_dir=vis_dir,
        rank=dist.rank,
        world_size=dist.world_size,
        barrier=dist.barrier,
        progress=dist.is_main,
    )
    return summary if summary.merged else None


def _print_predict_summary(summary: Any) -> None:
    done = summary.total - summary.errors
    rate = summary.processed / summary.seconds if summary.seconds > 0 else 0.0
    resumed = f"; {summary.resumed} done by an earlier run" if summary.resumed else ""
    echo(
        f"{summary.instances} instances on {done} images; this process segmented {summary.processed} "
        f"({rate:.2f} img/s){resumed}"
    )
    echo(f"image ids: {summary.images_path}")
    if summary.errors:
        echo(
            f"{summary.errors} image(s) could not be read and were skipped: see {summary.errors_path}",
            err=True,
        )
    echo(str(summary.out_path))


# ----------------------------------------------------------------------------- eval


@cli.command("eval", context_settings=CONTEXT_SETTINGS)
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
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the summary as json.")
def eval_command(
    gt: str,
    results: str,
    classes: str | None,
    iou_types: tuple[str, ...],
    images_json: str | None,
    output: str | None,
) -> None:
    """COCO evaluation (pycocotools, maxDets 100): the 12-number tables for bbox and segm.

    \b
    Example:
      refseg eval --gt instances_val2017.json --results results.json --classes coco-fsod-novel
    """
    from .data.coco import has_segmentation, load_coco
    from .evaluate import evaluate, format_table

    gt_data = load_coco(gt)
    if not iou_types:
        iou_types = ("bbox", "segm")
        if not all(has_segmentation(a) for a in gt_data["annotations"]):
            iou_types = ("bbox",)
            echo("The ground truth has box-only annotations: evaluating bbox only.", err=True)
    image_ids = _image_ids_from(images_json) if images_json else None
    summary = evaluate(gt_data, results, classes=classes, iou_types=iou_types, image_ids=image_ids)
    echo(format_table(summary))
    if output:
        write_json(summary, output, indent=2)
        echo(f"summary -> {output}")


def _image_ids_from(path: str) -> list[int]:
    from .targets import read_json

    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else data
    if not isinstance(images, list):
        raise InvalidInputError(f"{path} holds no images list.")
    try:
        return [int(image["id"]) for image in images]
    except (KeyError, TypeError, ValueError):
        raise InvalidInputError(f"{path}: every image needs an integer 'id'.") from None


# ----------------------------------------------------------------------------- reproduce


@cli.group(cls=RefsegGroup, context_settings=CONTEXT_SETTINGS)
def reproduce() -> None:
    """Reproduce the paper's benchmarks end to end."""


@reproduce.command("coco-fsod", context_settings=CONTEXT_SETTINGS)
@click.option("--shots", type=int, default=30, show_default=True, help="References per class.")
@click.option("--seed", type=int, default=33, show_default=True, help="Sampling seed.")
@click.option(
    "--coco-root",
    type=click.Path(file_okay=False),
    required=True,
    help="COCO layout: annotations/instances_{train,val}2017.json and {train,val}2017/.",
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), help="Run folder (default runs/coco-fsod-...)."
)
@click.option(
    "--limit", type=int, help="Only the first N val images (a quick look, not comparable to the paper)."
)
@click.option(
    "--resume", is_flag=True, help="Reuse the run folder's refs and memory and continue predicting."
)
@model_options(predict=True)
def reproduce_coco_fsod(
    shots: int,
    seed: int,
    coco_root: str,
    out_dir: str | None,
    limit: int | None,
    resume: bool,
    models: ModelChoice,
) -> None:
    """COCO-FSOD (20 novel classes): sample -> memory -> predict val2017 -> eval, beside the paper.

    Writes refs.json, memory.safetensors, results.json and summary.json into the run folder.
    Runs under torchrun too (sampling and memory on rank 0, prediction on every rank).

    \b
    Example:
      refseg reproduce coco-fsod --shots 30 --seed 33 --coco-root /data/coco --limit 100
    """
    from .data.coco import load_coco
    from .data.sampling import sample_references
    from .evaluate import evaluate, format_table
    from .memory import MemoryBank
    from .references import add_coco_references
    from .targets import coco_targets

    root = Path(coco_root)
    train_json = root / "annotations" / "instances_train2017.json"
    val_json = root / "annotations" / "instances_val2017.json"
    for needed in (train_json, val_json, root / "train2017", root / "val2017"):
        if not needed.exists():
            raise InvalidInputError(f"{needed} not found: --coco-root must hold the COCO 2017 layout.")
    run = Path(out_dir or f"runs/coco-fsod-{shots}shot-seed{seed}")
    refs_path, memory_path = run / "refs.json", run / "memory.safetensors"
    results_path, summary_path = run / "results.json", run / "summary.json"
    targets = coco_targets(val_json, root / "val2017")
    if limit is not None:
        targets = targets[: max(0, limit)]

    with distributed_context(models.device) as dist:
        segmenter = models.load(device=dist.device)
        if dist.is_main:
            run.mkdir(parents=True, exist_ok=True)
            reuse = resume and refs_path.is_file() and _same_draw(refs_path, shots, seed)
            if reuse:
                echo(f"[1/4] references: reusing {refs_path}")
            else:
                echo(f"[1/4] sampling {shots} shot(s) per class, seed {seed}")
                refs = sample_references(load_coco(train_json), "coco-fsod-novel", shots, seed)
                write_json(refs, refs_path)
            if reuse and memory_path.is_file():
                echo(f"[2/4] memory: reusing {memory_path}")
            else:
                echo("[2/4] building the memory bank")
                report = add_coco_references(segmenter, load_coco(refs_path), root / "train2017")
                if report.skipped:
                    echo(f"{len(report.skipped)} reference(s) skipped (see the warnings)", err=True)
                segmenter.memory.save(memory_path)
        dist.barrier()
        segmenter.memory = MemoryBank.load(memory_path)
        if dist.is_main:
            echo(f"[3/4] predicting {len(targets)} val2017 images")
        summary = _run_predict(segmenter, targets, str(results_path), 0.0, None, resume, dist)
    if summary is None:
        return
    _print_predict_summary(summary)
    echo("[4/4] evaluating (novel classes)")
    image_ids = None if limit is None else [t.image_id for t in targets]
    scores = evaluate(val_json, results_path, classes="coco-fsod-novel", image_ids=image_ids)
    scores["run"] = {
        "shots": shots,
        "seed": seed,
        "limit": limit,
        "settings": dataclasses.asdict(models.settings()),
    }
    write_json(scores, summary_path, indent=2)
    echo(format_table(scores, per_class=False))
    echo()
    echo(paper_comparison(scores, shots, seed, limit))
    echo(str(summary_path))


def _same_draw(refs_path: Path, shots: int, seed: int) -> bool:
    """Whether a run folder's refs.json was drawn with these shots and seed."""
    from .targets import read_json

    info = read_json(refs_path).get("info", {})
    if info.get("shots") == shots and info.get("seed") == seed:
        return True
    echo(f"{refs_path} was drawn with other shots or seed: drawing again.", err=True)
    return False


def paper_comparison(scores: dict[str, Any], shots: int, seed: int, limit: int | None) -> str:
    """Our nAP beside the paper's figure (METHOD.md section 6)."""
    lines = [f"COCO-FSOD novel classes, {shots}-shot, seed {seed}: nAP in percent"]
    paper = PAPER_COCO_FSOD.get(shots)
    header = f"{'':6} {'refseg':>8}"
    if paper:
        header += f" {'paper seed 33':>14} {'paper 10 seeds':>15}"
    lines.append(header)
    for index, iou_type in enumerate(("bbox", "segm")):
        ours = scores.get(iou_type, {}).get("AP", float("nan"))
        line = f"{iou_type:6} {ours:8.1f}"
        if paper:
            mean, std = paper[1][2 * index], paper[1][2 * index + 1]
            line += f" {paper[0][index]:14.1f} {f'{mean:.1f} +- {std:.1f}':>15}"
        lines.append(line)
    if not paper:
        lines.append(f"(the paper reports {', '.join(map(str, PAPER_COCO_FSOD))} shots only)")
    if seed != 33 and paper:
        lines.append("(the paper's single-seed figure is for seed 33)")
    if limit is not None:
        lines.append(f"(first {limit} val images only: not comparable with the paper's 5000)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- converters


@cli.command("boxes-to-masks", context_settings=CONTEXT_SETTINGS)
@click.argument("coco_json", type=click.Path(dir_okay=False))
@click.option(
    "--images", type=click.Path(file_okay=False), required=True, help="Folder of the json's images."
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), required=True, help="The COCO json to write."
)
@click.option("--overwrite", is_flag=True, help="Also replace existing segmentations.")
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="paper",
    show_default=True,
    help="Gives the SAM2 model.",
)
@click.option("--sam2", metavar="ID_OR_DIR", help="SAM2 hub id or local directory (overrides the preset).")
@click.option("--device", help="cpu, cuda, cuda:1... (default: CUDA when available).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), help="Compute dtype.")
def boxes_to_masks_command(
    coco_json: str,
    images: str,
    output: str,
    overwrite: bool,
    preset: str,
    sam2: str | None,
    device: str | None,
    dtype: str | None,
) -> None:
    """Give box-only annotations masks made by SAM2 from their boxes (PASCAL VOC, CD-FSOD).

    \b
    Example:
      refseg boxes-to-masks voc_test.json --images VOCdevkit/ -o voc_test_masks.json
    """
    from .data.boxes import boxes_to_masks
    from .data.coco import load_coco
    from .models.loading import load_proposer

    settings = get_preset(preset).replace(sam2_id=sam2, dtype=dtype)
    proposer = load_proposer(settings.sam2_id, device=device, dtype=settings.dtype)
    converted = boxes_to_masks(load_coco(coco_json), images, proposer, overwrite=overwrite)
    write_json(converted, output)
    counts = converted["info"]["boxes_to_masks"]["masks"]
    skipped = converted["info"]["boxes_to_masks"]["skipped_images"]
    echo(f"{counts['sam2']} masks from SAM2, {counts['box']} box fallbacks, {len(skipped)} images skipped")
    for item in skipped[:20]:
        echo(f"  skipped {item['file_name']}: {item['error']}", err=True)
    echo(output)


@cli.command("voc2coco", context_settings=CONTEXT_SETTINGS)
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
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), required=True, help="The COCO json to write."
)
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
    from .data.splits import SPLITS, VOC_CLASSES
    from .data.voc import voc_image_dir, voc_to_coco

    if classes is None:
        class_list: Sequence[str] = VOC_CLASSES
    elif classes.strip() in SPLITS:
        class_list = SPLITS[classes.strip()]
    else:
        class_list = [name.strip() for name in classes.split(",") if name.strip()]
    converted = voc_to_coco(list(voc_roots), image_set, classes=class_list, difficult=difficult)  # type: ignore[arg-type]
    write_json(converted, output)
    echo(
        f"{len(converted['images'])} images, {len(converted['annotations'])} boxes of "
        f"{len(converted['categories'])} classes; images folder: {voc_image_dir(list(voc_roots))}"
    )
    echo(output)
