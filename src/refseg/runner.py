"""The predict loop over many images: streamed results, resume, error report, multi-process.

``predict_files`` runs a segmenter over a list of :class:`Target` images and writes one COCO
results json. While it runs, every finished image is appended as one JSON line to a partial
file next to the output (:mod:`refseg.partials`), so a run that is killed can be continued with
``resume=True``: images already in a partial file are skipped, and the final file is the same
as the one an uninterrupted run writes (results in target order, per image in score order). A
resume checks itself that the partial files were written with the same settings (the
segmenter's settings, the memory bank's content, the score threshold): no caller has to.

At the end, rank 0 writes ``<out>``, ``<out>.images.json`` and, when some images could not be
read, ``<out>.errors.json`` (:func:`refseg.results.write_results`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .data.images import load_image
from .errors import InvalidInputError, OutputError, RefsegError
from .files import (
    check_not_input,
    check_writable,
    check_writable_folder,
    lock_path,
    make_folder,
    output_error,
    output_lock,
    safe_child,
    safe_relative,
    save_image,
)
from .instances import Instances
from .partials import (
    append_line,
    check_resumable,
    cut_torn_tail,
    partial_header,
    partial_path,
    partial_paths,
    read_partial,
    run_key,
)
from .presets import SettingRange
from .results import sidecar_path, write_results
from .targets import Target

logger = logging.getLogger(__name__)

SCORE_THRESHOLDS = SettingRange(float, 0, 1)


class SupportsPredict(Protocol):
    """What the runner needs from a segmenter (``refseg.Segmenter`` has it)."""

    def predict(self, image: np.ndarray) -> Instances: ...


def box_convention_of(segmenter: object) -> str:
    """The COCO box convention of a segmenter's settings (:attr:`refseg.presets.Preset.box_convention`);
    ``"exclusive"`` for a segmenter without settings."""
    settings = getattr(segmenter, "settings", None)
    return str(getattr(settings, "box_convention", "exclusive"))


@dataclass
class PredictSummary:
    """What one call of :func:`predict_files` did (in a multi-process run: this process).

    Attributes:
        out_path: the COCO results json (written by rank 0 only).
        images_path: the ``<out>.images.json`` mapping.
        errors_path: the ``<out>.errors.json`` report, or None when every image was read.
        total: images in the whole run.
        processed: images this call segmented (those it could not read are ``errors``).
        resumed: images skipped because an earlier run had done them.
        errors: unreadable images in the whole run (rank 0) or in this process's share.
        instances: result entries in the final file (rank 0) or written by this process.
        seconds: wall time of the loop.
        merged: whether this call wrote the final files.
        error_records: the entries of ``<out>.errors.json`` (rank 0).
    """

    out_path: Path
    images_path: Path
    errors_path: Path | None = None
    total: int = 0
    processed: int = 0
    resumed: int = 0
    errors: int = 0
    instances: int = 0
    seconds: float = 0.0
    merged: bool = False
    error_records: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- the loop


def check_outputs(
    out_path: str | os.PathLike,
    vis_dir: str | os.PathLike | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> None:
    """Raise unless every file of a run can be written: ``out_path``, its sidecars, partial
    file and lock (:func:`refseg.files.check_writable`), and the overlay folder, none of them
    one of the ``inputs`` (the target images, the memory file...) nor the overlay folder. Cheap:
    call it before loading models, so a bad output stops a run before any work.

    Raises:
        OutputError: naming the first output that cannot be written.
    """
    files = [out_path, sidecar_path(out_path, "images"), sidecar_path(out_path, "errors")]
    files += [partial_path(out_path), lock_path(out_path)]
    for path in files:
        check_writable(path)
    check_not_input(files, inputs)
    if vis_dir is not None:
        check_writable_folder(vis_dir)
        if Path(os.path.realpath(vis_dir)) in {Path(os.path.realpath(f)) for f in files}:
            raise OutputError(
                f"The overlay folder {vis_dir} is one of the run's files; give overlays a folder of their own."
            )


def predict_files(
    segmenter: SupportsPredict,
    targets: Sequence[Target],
    out_path: str | os.PathLike,
    *,
    category_ids: Mapping[str, int] | None = None,
    resume: bool = False,
    score_threshold: float = 0.0,
    vis_dir: str | os.PathLike | None = None,
    run_info: Mapping[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: bool = True,
) -> PredictSummary:
    """Segment every target and write the COCO results of all of them to ``out_path``.

    Args:
        segmenter: anything with ``predict(image (H, W, 3) uint8) -> Instances``.
        targets: the images, in the order of the final file (ids and names must be unique).
        out_path: the COCO results json to write.
        category_ids: class name -> COCO category id. Default: ``segmenter.memory.category_ids``
            when the segmenter has a memory, else label + 1.
        resume: skip the images already in partial files of an earlier run of the same
            settings (:func:`refseg.partials.run_key`, computed here from the segmenter, the
            score threshold and the category ids, plus ``run_info``); without it, partial
            files of earlier runs are deleted first.
        score_threshold: drop instances scoring below this.
        vis_dir: when given, an overlay PNG per image is written there (``refseg.viz``), named
            by :func:`overlay_paths`.
        run_info: anything else a resume must agree on (json-able), beside the settings the
            runner finds itself.
        rank, world_size: this process's share is ``targets[rank::world_size]``; rank 0 merges.
        barrier: waits for every process (needed when ``world_size > 1``).
        progress: show a tqdm progress bar (rank 0 only).

    Returns:
        A :class:`PredictSummary` of the run.

    Raises:
        InvalidInputError: duplicate target names or ids, an empty memory bank, or a resume
            over partial files of a run with other settings.
        OutputError: an output cannot be written (checked before the first image), or another
            run is writing it (``<out>.lock``, :func:`refseg.files.output_lock`).
    """
    if world_size > 1 and barrier is None:
        raise ValueError("a multi-process run needs a barrier")
    out_path = Path(out_path)
    if not SCORE_THRESHOLDS.accepts(score_threshold):
        raise InvalidInputError(
            f"score_threshold must be {SCORE_THRESHOLDS.describe()}, got {score_threshold!r}."
        )
    check_outputs(out_path, vis_dir, [t.path for t in targets])
    _check_unique(targets)
    overlays = overlay_paths(targets, vis_dir) if vis_dir is not None else {}
    memory = getattr(segmenter, "memory", None)
    if memory is not None and len(memory) == 0:
        raise InvalidInputError("The memory bank is empty: add references before predicting.")
    if category_ids is None:
        category_ids = _default_category_ids(segmenter)
    header = partial_header(run_key(segmenter, score_threshold, category_ids), dict(run_info or {}))
    summary = PredictSummary(
        out_path=out_path, images_path=sidecar_path(out_path, "images"), total=len(targets)
    )

    # One run per output: a second run would delete or mix this one's partial files.
    with output_lock(out_path) if rank == 0 else contextlib.nullcontext():
        if not resume and rank == 0:
            for stale in partial_paths(out_path):
                logger.warning(
                    "Deleting partial results of an earlier run: %s (use --resume to continue it)", stale
                )
                stale.unlink()
        if world_size > 1:
            barrier()  # type: ignore[misc]
        done = _done_names(out_path, header) if resume else set()

        share = list(targets[rank::world_size])
        todo = [t for t in share if t.file_name not in done]
        summary.resumed = len(share) - len(todo)
        if summary.resumed:
            logger.info("Resuming: %d of %d images already done", summary.resumed, len(share))

        own = partial_path(out_path, rank, world_size)
        make_folder(out_path.parent)
        start = time.perf_counter()
        try:
            if own.exists():
                cut_torn_tail(own)
            with open(own, "a", encoding="utf-8") as handle:
                if handle.tell() == 0:
                    append_line(handle, header)
                bar = progress_bar(len(share), summary.resumed, enabled=progress and rank == 0)
                try:
                    for target in todo:
                        overlay = overlays.get(target.file_name)
                        record = _predict_one(segmenter, target, category_ids, score_threshold, overlay)
                        append_line(handle, record)
                        if record["status"] == "ok":
                            summary.processed += 1
                            summary.instances += len(record["results"])
                        else:
                            summary.errors += 1
                            logger.warning("Skipped %s: %s", target.path, record["error"])
                        bar.update(1)
                finally:
                    bar.close()
        except OSError as error:  # a full disk or a folder that became read-only, mid-run
            raise output_error(error, own) from None
        summary.seconds = time.perf_counter() - start

        if world_size > 1:
            barrier()  # type: ignore[misc]
        if rank == 0:
            _merge(targets, out_path, category_ids, summary)
    return summary


def _check_unique(targets: Sequence[Target]) -> None:
    names = [t.file_name for t in targets]
    ids = [t.image_id for t in targets]
    if len(set(names)) != len(names):
        raise InvalidInputError("Two target images share a file name; give each image a unique name.")
    if len(set(ids)) != len(ids):
        raise InvalidInputError("Two target images share an image id; image ids must be unique.")


def _default_category_ids(segmenter: Any) -> dict[str, int] | None:
    memory = getattr(segmenter, "memory", None)
    if memory is None:
        return None
    return dict(memory.category_ids)


def _done_names(out_path: Path, header: Mapping[str, Any]) -> set[str]:
    done: set[str] = set()
    for path in partial_paths(out_path):
        written, records = read_partial(path)
        check_resumable(path, written, header["run_key"], header["run_info"])
        done.update(r["file_name"] for r in records if r.get("status") == "ok")
    return done


def _predict_one(
    segmenter: SupportsPredict,
    target: Target,
    category_ids: Mapping[str, int] | None,
    score_threshold: float,
    overlay: Path | None,
) -> dict[str, Any]:
    base = {"file_name": target.file_name, "image_id": target.image_id}
    try:
        image = load_image(target.path)
        instances = segmenter.predict(image)
    except InvalidInputError as error:  # this image; weights or outputs out of reach stop the run
        return {**base, "status": "error", "error": str(error)}
    if score_threshold > 0:
        instances = instances.filter(score_threshold)
    results = instances.to_coco(target.image_id, category_ids, box_convention=box_convention_of(segmenter))
    if overlay is not None:
        from .viz import draw_instances  # optional: only when overlays are asked for

        save_image(draw_instances(image, instances), overlay)
    height, width = image.shape[:2]
    return {**base, "status": "ok", "height": int(height), "width": int(width), "results": results}


def overlay_paths(targets: Sequence[Target], vis_dir: str | os.PathLike) -> dict[str, Path]:
    """Where each target's overlay goes (file name -> path), for the whole run at once.

    Each lies inside ``vis_dir`` (:func:`refseg.files.safe_child`: a ``file_name`` such as
    ``../../x.jpg`` cannot lead out) and no two targets share one, compared ignoring case:
    ``<stem>.png`` in the name's sub-folders, unless another target would get the same file
    (``a.jpg`` and ``a.png``); those get ``<name with its suffix>.png``; if even that is shared
    (names that differ only by parts ``safe_child`` drops), ``<name>.id<image id>.png``. Every
    process of a multi-process run computes the same paths.

    Raises:
        InvalidInputError: a name that names no file, or leads out of ``vis_dir`` through a link.
    """
    relatives = {t.file_name: safe_relative(t.file_name) for t in targets}
    ids = {t.file_name: t.image_id for t in targets}
    forms = (
        lambda name, rel: rel.with_suffix(".png"),
        lambda name, rel: rel.with_name(rel.name + ".png"),
        lambda name, rel: rel.with_name(f"{rel.name}.id{ids[name]}.png"),
    )
    level = dict.fromkeys(relatives, 0)
    while True:
        chosen = {name: forms[level[name]](name, rel) for name, rel in relatives.items()}
        counts = Counter(path.as_posix().casefold() for path in chosen.values())
        shared = [name for name, path in chosen.items() if counts[path.as_posix().casefold()] > 1]
        if not shared:
            break
        for name in shared:
            if level[name] == len(forms) - 1:  # pragma: no cover - ids are unique, so is the last form
                raise InvalidInputError(f"Two targets would share the overlay {chosen[name]}.")
            level[name] += 1
    return {name: safe_child(vis_dir, path) for name, path in chosen.items()}


def progress_bar(total: int, initial: int, *, enabled: bool, desc: str = "predict", unit: str = "img"):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)


def _merge(
    targets: Sequence[Target],
    out_path: Path,
    category_ids: Mapping[str, int] | None,
    summary: PredictSummary,
) -> None:
    """Write the final files from every partial file, in target order; delete the partials."""
    partials = partial_paths(out_path)
    by_name: dict[str, dict[str, Any]] = {}
    for path in partials:
        for record in read_partial(path)[1]:
            known = by_name.get(record["file_name"])
            if known is None or (known["status"] != "ok" and record["status"] == "ok"):
                by_name[record["file_name"]] = record
    missing = [t.file_name for t in targets if t.file_name not in by_name]
    if missing:
        raise RefsegError(
            f"{len(missing)} images have no results (first: {missing[0]}); run again with --resume to finish them."
        )
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for target in targets:
        record = by_name[target.file_name]
        if record["status"] != "ok":
            errors.append(
                {
                    "file_name": target.file_name,
                    "path": str(target.path),
                    "image_id": target.image_id,
                    "error": record["error"],
                }
            )
            continue
        images.append(
            {
                "id": target.image_id,
                "file_name": target.file_name,
                "height": record["height"],
                "width": record["width"],
            }
        )
        results.extend({**r, "image_id": target.image_id} for r in record["results"])

    files = write_results(out_path, results, images, category_ids, errors=errors)
    summary.errors_path = files.errors
    for path in partials:
        path.unlink()
    summary.errors = len(errors)
    summary.error_records = errors
    summary.instances = len(results)
    summary.merged = True
