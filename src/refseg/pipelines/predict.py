"""``refseg predict`` as a library call: models in, one process or a torchrun group, results out."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.coco import category_ids_by_name
from ..distributed import DistributedContext, distributed_context
from ..errors import InvalidInputError
from ..files import check_not_input, check_writable
from ..memory import MemoryBank
from ..model_spec import ModelSpec
from ..runner import PredictSummary, check_outputs, predict_files
from ..targets import Target
from .reporter import Reporter


def predict_images(
    models: ModelSpec,
    targets: Sequence[Target],
    output: str | os.PathLike,
    *,
    memory: MemoryBank | None = None,
    references_dir: str | os.PathLike | None = None,
    score_threshold: float = 0.0,
    vis_dir: str | os.PathLike | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
    categories: Sequence[Mapping[str, Any]] | None = None,
    inputs: Sequence[str | os.PathLike] = (),
) -> PredictSummary | None:
    """Segment ``targets`` with ``memory`` (or a memory built from ``references_dir``).

    Runs in one process, or in each process of a ``torchrun`` group (each segments its share;
    rank 0 merges). A memory built from a folder is saved beside the output as
    ``<output>.memory.safetensors``.

    Args:
        models: the models and settings.
        memory: the memory bank; or ``references_dir``, a folder with one sub-folder per class
            (:func:`refseg.references.add_folder_references`). Exactly one of the two.
        categories: the categories of the COCO json the targets come from: results carry the
            id of the category named as each class (:func:`refseg.data.coco.category_ids_by_name`).
        inputs: other files the run reads (the memory file, the COCO json): no output may be
            one of them, nor one of the targets.
        Others: as :func:`refseg.runner.predict_files`.

    Returns:
        The run's summary on the process that wrote the files, None on the others.

    Raises:
        InvalidInputError: neither or both of ``memory`` and ``references_dir``, no usable
            reference in the folder, a class not among ``categories``, no image could be read
            (after the files are written), or as :func:`~refseg.runner.predict_files`.
        OutputError: an output cannot be written (checked before the models are loaded).
        WeightsUnavailableError: a model cannot be loaded.
    """
    if (memory is None) == (references_dir is None):
        raise InvalidInputError("Give either a memory bank or a reference folder (one sub-folder per class).")
    check_outputs(output, vis_dir, [*inputs, *(t.path for t in targets)])
    memory_path = Path(str(output) + ".memory.safetensors")
    if references_dir is not None:
        check_writable(memory_path, example="memory.safetensors")
        check_not_input([memory_path], [*inputs, *(t.path for t in targets)])
    reporter = reporter or Reporter()
    with distributed_context(models.device) as dist:
        segmenter = models.load_segmenter(device=dist.device, memory=memory)
        if references_dir is not None:
            build_folder_memory(segmenter, references_dir, memory_path, dist, reporter)
        category_ids = json_category_ids(segmenter, categories, "the targets' json", dist, reporter)
        return predict_in_context(
            segmenter, targets, output, dist, score_threshold, vis_dir, resume, reporter, category_ids
        )


def json_category_ids(
    segmenter: Any,
    categories: Sequence[Mapping[str, Any]] | None,
    source: str,
    dist: DistributedContext,
    reporter: Reporter,
) -> dict[str, int] | None:
    """The category ids results on a COCO json's images carry (:func:`category_ids_by_name`);
    the process that reports says which differ from the memory's. None: no categories given."""
    if not categories:
        return None
    own = segmenter.memory.category_ids
    mapped = category_ids_by_name(own, categories, source)
    moved = [f"{name} {own[name]} -> {mapped[name]}" for name in mapped if mapped[name] != own[name]]
    if moved and dist.is_main:
        reporter.warn(f"category ids taken from {source} by class name: {', '.join(moved)}")
    return mapped


def build_folder_memory(
    segmenter: Any, folder: str | os.PathLike, path: Path, dist: DistributedContext, reporter: Reporter
) -> Path:
    """Encode a class-per-sub-folder reference layout (with its negatives) on every process; rank 0
    saves it to ``path``.

    Raises:
        InvalidInputError: no usable positive reference in the folder.
    """
    from ..references import add_folder_references

    def skipped(line: str) -> None:
        if dist.is_main:  # every process builds the memory; one reports
            reporter.warn(f"  skipped {line}")

    report = add_folder_references(segmenter, folder, progress=dist.is_main, on_skip=skipped)
    if not segmenter.memory.class_names:
        raise InvalidInputError(
            f"No usable positive reference in {folder}: {len(report.skipped)} skipped (listed above)."
        )
    if dist.is_main:
        segmenter.memory.save(path)
        reporter.step(segmenter.memory.describe())
        reporter.step(f"memory -> {path}")
    dist.barrier()
    return path


def predict_in_context(
    segmenter: Any,
    targets: Sequence[Target],
    output: str | os.PathLike,
    dist: DistributedContext,
    score_threshold: float,
    vis_dir: str | os.PathLike | None,
    resume: bool,
    reporter: Reporter,
    category_ids: Mapping[str, int] | None = None,
) -> PredictSummary | None:
    """:func:`~refseg.runner.predict_files` on this process's share; the summary where it merged.

    Raises:
        InvalidInputError: no image of the run could be read (after the files are written and
            the summary reported: a run that segmented nothing is a failure).
    """
    summary = predict_files(
        segmenter,
        targets,
        output,
        category_ids=category_ids,
        resume=resume,
        score_threshold=score_threshold,
        vis_dir=vis_dir,
        rank=dist.rank,
        world_size=dist.world_size,
        barrier=dist.barrier,
        progress=dist.is_main,
    )
    if not summary.merged:
        return None
    reporter.predicted(summary)
    if summary.total and summary.errors == summary.total:
        first = summary.error_records[0]
        raise InvalidInputError(
            f"None of the {summary.total} image(s) could be read (first: {first['file_name']}: {first['error']}); "
            f"each is listed in {summary.errors_path}."
        )
    return summary
