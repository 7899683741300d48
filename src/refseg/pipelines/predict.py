"""``refseg predict`` as a library call: models in, one process or a torchrun group, results out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..distributed import DistributedContext, distributed_context
from ..errors import InvalidInputError
from ..memory import MemoryBank
from ..model_spec import ModelSpec
from ..runner import PredictSummary, predict_files
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
) -> PredictSummary | None:
    """Segment ``targets`` with ``memory`` (or a memory built from ``references_dir``).

    Runs in one process, or in each process of a ``torchrun`` group (each segments its share;
    rank 0 merges). A memory built from a folder is saved beside the output as
    ``<output>.memory.safetensors``.

    Args:
        models: the models and settings.
        memory: the memory bank; or ``references_dir``, a folder with one sub-folder per class
            (:func:`refseg.references.add_folder_references`). Exactly one of the two.
        Others: as :func:`refseg.runner.predict_files`.

    Returns:
        The run's summary on the process that wrote the files, None on the others.

    Raises:
        InvalidInputError: neither or both of ``memory`` and ``references_dir``, no usable
            reference in the folder, or as :func:`~refseg.runner.predict_files`.
        WeightsUnavailableError: a model cannot be loaded.
    """
    if (memory is None) == (references_dir is None):
        raise InvalidInputError("Give either a memory bank or a reference folder (one sub-folder per class).")
    reporter = reporter or Reporter()
    with distributed_context(models.device) as dist:
        segmenter = models.load_segmenter(device=dist.device, memory=memory)
        if references_dir is not None:
            build_folder_memory(
                segmenter, references_dir, Path(str(output) + ".memory.safetensors"), dist, reporter
            )
        return predict_in_context(
            segmenter, targets, output, dist, score_threshold, vis_dir, resume, reporter
        )


def build_folder_memory(
    segmenter: Any, folder: str | os.PathLike, path: Path, dist: DistributedContext, reporter: Reporter
) -> Path:
    """Encode a class-per-sub-folder reference layout (with its negatives) on every process; rank 0
    saves it to ``path``.

    Raises:
        InvalidInputError: no usable positive reference in the folder.
    """
    from ..references import add_folder_references

    report = add_folder_references(segmenter, folder, progress=dist.is_main)
    if not segmenter.memory.class_names:
        raise InvalidInputError(f"No usable positive reference in {folder}: {len(report.skipped)} skipped.")
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
) -> PredictSummary | None:
    """:func:`~refseg.runner.predict_files` on this process's share; the summary where it merged."""
    summary = predict_files(
        segmenter,
        targets,
        output,
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
    return summary
