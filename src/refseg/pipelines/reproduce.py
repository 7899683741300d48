"""Reproducing the paper's COCO-FSOD benchmark end to end, and its results table to compare with.

sample -> memory -> predict val2017 -> evaluate the 20 novel classes, in one run folder:
``refs.json``, ``memory.safetensors``, ``results.json`` (+ sidecars) and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.coco import load_coco, write_json
from ..distributed import distributed_context
from ..errors import InvalidInputError
from ..files import check_writable, check_writable_folder, make_folder
from ..memory import MemoryBank
from ..model_spec import ModelSpec
from ..runner import PredictSummary, check_outputs
from ..targets import coco_targets_and_categories, read_json
from .predict import json_category_ids, predict_in_context
from .reporter import Reporter

# docs/method.md 9.5: the paper's COCO-FSOD novel classes, AP bbox / segm in percent.
# shots -> ((seed 33 bbox, segm), (10-seed mean bbox, std, mean segm, std))
PAPER_COCO_FSOD: dict[int, tuple[tuple[float, float], tuple[float, float, float, float]]] = {
    1: ((25.6, 24.1), (24.5, 1.5, 22.9, 1.6)),
    2: ((30.7, 28.5), (29.5, 2.0, 27.5, 1.9)),
    3: ((32.4, 29.7), (32.3, 1.3, 30.1, 1.3)),
    5: ((35.1, 32.4), (34.4, 0.8, 32.1, 0.7)),
    10: ((36.6, 33.8), (35.9, 0.5, 33.4, 0.5)),
    30: ((37.3, 34.7), (37.0, 0.2, 34.4, 0.2)),
}

SPLIT = "coco-fsod-novel"


@dataclass
class CocoFsodResult:
    """A finished COCO-FSOD run (on the process that wrote the files).

    Attributes:
        predicted: the predict step's summary.
        scores: the evaluation summary, also written to ``summary_path`` (with a ``run`` entry).
        summary_path: ``<run>/summary.json``.
        comparison: :func:`paper_comparison` of the scores.
    """

    predicted: PredictSummary
    scores: dict[str, Any]
    summary_path: Path
    comparison: str


def reproduce_coco_fsod(
    models: ModelSpec,
    coco_root: str | os.PathLike,
    *,
    shots: int = 30,
    seed: int = 33,
    out_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
) -> CocoFsodResult | None:
    """COCO-FSOD (20 novel classes): sample -> memory -> predict val2017 -> evaluate.

    Runs under torchrun too: sampling and the memory on rank 0, prediction on every rank.

    Args:
        models: the models and settings.
        coco_root: holds ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/``.
        shots, seed: references per class and the sampling seed (the paper's main results: 33).
        out_dir: the run folder (default ``runs/coco-fsod-<shots>shot-seed<seed>``).
        limit: only the first N val images (a quick look, not comparable with the paper).
        resume: reuse the run folder's references (same shots and seed) and memory (same
            context ratio), and continue an interrupted prediction.
        reporter: receives the step messages.

    Returns:
        The result on the process that wrote the files, None on the others.

    Raises:
        InvalidInputError: the COCO layout is incomplete, or as the steps raise.
        OutputError: the run folder or a file in it cannot be written (checked before any work).
    """
    reporter = reporter or Reporter()
    root = Path(coco_root)
    train_json = root / "annotations" / "instances_train2017.json"
    val_json = root / "annotations" / "instances_val2017.json"
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit must be an integer >= 1 (or None for every image), got {limit!r}.")
    for needed in (train_json, val_json, root / "train2017", root / "val2017"):
        if not needed.exists():
            raise InvalidInputError(f"{needed} not found: --coco-root must hold the COCO 2017 layout.")
    run = Path(out_dir or f"runs/coco-fsod-{shots}shot-seed{seed}")
    refs_path, memory_path = run / "refs.json", run / "memory.safetensors"
    check_writable_folder(run)
    for output in (refs_path, memory_path, run / "summary.json"):
        check_writable(output)
    check_outputs(run / "results.json")
    targets, categories = coco_targets_and_categories(val_json, root / "val2017")
    if limit is not None:
        targets = targets[:limit]
    settings = models.settings()

    with distributed_context(models.device) as dist:
        segmenter = models.load_segmenter(device=dist.device)
        if dist.is_main:
            make_folder(run)
            reuse = resume and refs_path.is_file() and _same_draw(refs_path, shots, seed, reporter)
            if reuse:
                reporter.step(f"[1/4] references: reusing {refs_path}")
            else:
                from ..data.sampling import sample_references

                reporter.step(f"[1/4] sampling {shots} shot(s) per class, seed {seed}")
                write_json(sample_references(load_coco(train_json), SPLIT, shots, seed), refs_path)
            if reuse and _same_memory(memory_path, settings.context_ratio, reporter, settings.reference_crop):
                reporter.step(f"[2/4] memory: reusing {memory_path}")
            else:
                from ..references import add_coco_references

                reporter.step("[2/4] building the memory bank")
                report = add_coco_references(
                    segmenter,
                    load_coco(refs_path),
                    root / "train2017",
                    on_skip=lambda line: reporter.warn(f"  skipped {line}"),
                )
                if report.skipped:
                    reporter.warn(f"{len(report.skipped)} reference(s) skipped (listed above)")
                segmenter.memory.save(memory_path)
        dist.barrier()
        segmenter.memory = MemoryBank.load(memory_path)
        if dist.is_main:
            reporter.step(f"[3/4] predicting {len(targets)} val2017 images")
        category_ids = json_category_ids(segmenter, categories, str(val_json), dist, reporter)
        predicted = predict_in_context(
            segmenter, targets, run / "results.json", dist, 0.0, None, resume, reporter, category_ids
        )
    if predicted is None:
        return None

    from ..evaluate import evaluate

    reporter.step("[4/4] evaluating (novel classes)")
    image_ids = None if limit is None else [t.image_id for t in targets]
    scores = evaluate(val_json, predicted.out_path, classes=SPLIT, image_ids=image_ids)
    scores["run"] = {"shots": shots, "seed": seed, "limit": limit, "settings": dataclasses.asdict(settings)}
    summary_path = write_json(scores, run / "summary.json", indent=2)
    return CocoFsodResult(predicted, scores, summary_path, paper_comparison(scores, shots, seed, limit))


def _same_draw(refs_path: Path, shots: int, seed: int, reporter: Reporter) -> bool:
    """Whether a run folder's refs.json was drawn with these shots and seed."""
    info = read_json(refs_path).get("info", {})
    if info.get("shots") == shots and info.get("seed") == seed:
        return True
    reporter.warn(f"{refs_path} was drawn with other shots or seed: drawing again.")
    return False


def _same_memory(
    memory_path: Path, context_ratio: float, reporter: Reporter, reference_crop: str | None = None
) -> bool:
    """Whether a run folder's memory exists and was built with this context ratio (and, when
    given, this reference crop convention)."""
    if not memory_path.is_file():
        return False
    bank = MemoryBank.load(memory_path)
    if bank.context_ratio != context_ratio:
        reporter.warn(
            f"{memory_path} was built with context ratio {bank.context_ratio}, not {context_ratio}: building again."
        )
        return False
    if reference_crop is not None and bank.reference_crop != reference_crop:
        reporter.warn(
            f"{memory_path} was built with the {bank.reference_crop!r} reference crop, not {reference_crop!r}: "
            "building again."
        )
        return False
    return True


def paper_comparison(scores: dict[str, Any], shots: int, seed: int, limit: int | None) -> str:
    """Our nAP beside the paper's figure (docs/method.md 9.5)."""
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
