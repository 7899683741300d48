"""The predict loop over many images: streamed results, resume, error report, multi-process.

``predict_files`` runs a segmenter over a list of :class:`Target` images and writes one COCO
results json. While it runs, every finished image is appended as one JSON line to a partial
file next to the output (``<out>.partial.jsonl``, or ``<out>.partial.rank<R>.jsonl`` per process
in a multi-process run), flushed and fsynced, so a run that is killed can be continued with
``resume=True``: images already in a partial file are skipped, and the final file is the same
as the one an uninterrupted run writes (results in target order, per image in score order).

Files written at the end (``<out>`` is the output path):

- ``<out>``: COCO results, a json list of ``{image_id, category_id, bbox, score, segmentation}``.
- ``<out>.images.json``: ``{"images": [{id, file_name, height, width}], "categories": [...]}``,
  the stable file name -> image id mapping, so the results can be evaluated.
- ``<out>.errors.json``: the images that could not be read (only when there are some).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .data.coco import write_json
from .data.images import IMAGE_EXTENSIONS, list_images, load_image
from .errors import InvalidInputError, RefsegError
from .instances import Instances

logger = logging.getLogger(__name__)

PARTIAL_FORMAT = 1
_GLOB_CHARS = frozenset("*?[")


class SupportsPredict(Protocol):
    """What the runner needs from a segmenter (``refseg.Segmenter`` has it)."""

    def predict(self, image: np.ndarray) -> Instances: ...


@dataclass(frozen=True)
class Target:
    """One image to segment.

    Attributes:
        path: where the image file is.
        file_name: its stable name in the results (relative path; the key used by resume).
        image_id: its id in the results (COCO ``image_id``).
    """

    path: Path
    file_name: str
    image_id: int


@dataclass
class PredictSummary:
    """What one call of :func:`predict_files` did (in a multi-process run: this process).

    Attributes:
        out_path: the COCO results json (written by rank 0 only).
        images_path: the ``<out>.images.json`` mapping.
        errors_path: the ``<out>.errors.json`` report, or None when every image was read.
        total: images in the whole run.
        processed: images this call segmented (or failed to read).
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


# ----------------------------------------------------------------------------- targets


def collect_targets(inputs: Sequence[str | os.PathLike]) -> list[Target]:
    """Image files from folders, glob patterns and file paths, with stable ids.

    A folder gives the images directly inside it (sorted by name); a glob (``imgs/**/*.jpg``,
    ``**`` recurses) gives its matching image files, sorted; a file is taken as is. Inputs keep
    their order, duplicates are dropped. ``file_name`` is the path relative to the folder (or
    the glob's fixed leading part); when two targets would share a name, every name becomes
    the path relative to the targets' common folder. Ids are 1..N in that order, so the same
    inputs always give the same ids.

    Raises:
        InvalidInputError: an input is neither a file, a folder nor a glob with matches, or no
            image was found at all.
    """
    found: list[tuple[Path, str]] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found.extend((image, image.name) for image in list_images(path))
        elif path.is_file():
            found.append((path, path.name))
        elif any(char in text for char in _GLOB_CHARS):
            base = _glob_base(text)
            matches = sorted(
                Path(m)
                for m in glob.glob(text, recursive=True)
                if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_EXTENSIONS
            )
            if not matches:
                raise InvalidInputError(f"No image file matches the pattern {text!r}.")
            found.extend((m, _relative_name(m, base)) for m in matches)
        else:
            raise InvalidInputError(f"No such image file or folder: {text}")
    unique: dict[Path, tuple[Path, str]] = {}
    for path, name in found:
        unique.setdefault(path.resolve(), (path, name))
    if not unique:
        raise InvalidInputError(f"No images found in: {', '.join(os.fspath(i) for i in inputs)}.")
    names = [name for _, name in unique.values()]
    if len(set(names)) != len(names):
        root = Path(os.path.commonpath([str(p.parent) for p in unique]))
        names = [p.relative_to(root).as_posix() for p in unique]
    return [
        Target(path, name, index + 1)
        for index, ((path, _), name) in enumerate(zip(unique.values(), names, strict=True))
    ]


def coco_targets(coco_json: str | os.PathLike, images_dir: str | os.PathLike) -> list[Target]:
    """The images of a COCO json (in the file's order), with their own ids.

    Raises:
        InvalidInputError: the json cannot be read or has no ``images`` list.
    """
    data = read_json(coco_json)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise InvalidInputError(f"{coco_json} is not a COCO json: it has no 'images' list.")
    root = Path(images_dir)
    if not root.is_dir():
        raise InvalidInputError(f"Images folder not found: {root}")
    targets = []
    for image in images:
        name = str(image["file_name"])
        targets.append(Target(root / name, name, int(image["id"])))
    return targets


def read_json(path: str | os.PathLike) -> Any:
    """A json file's content, or an InvalidInputError that names the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InvalidInputError(f"File not found: {path}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"Cannot read json file {path}: {error}") from error


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(char in part for char in _GLOB_CHARS):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relative_name(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name


# ----------------------------------------------------------------------------- files


def partial_path(out_path: str | os.PathLike, rank: int = 0, world_size: int = 1) -> Path:
    """The partial file a process appends to: ``<out>.partial.jsonl`` or ``<out>.partial.rank<R>.jsonl``."""
    out_path = Path(out_path)
    suffix = ".partial.jsonl" if world_size <= 1 else f".partial.rank{rank}.jsonl"
    return out_path.with_name(out_path.name + suffix)


def partial_paths(out_path: str | os.PathLike) -> list[Path]:
    """Every partial file of ``out_path`` on disk, from runs of any number of processes."""
    out_path = Path(out_path)
    prefix = glob.escape(str(out_path.with_name(out_path.name + ".partial")))
    return sorted(Path(p) for p in set(glob.glob(prefix + ".jsonl") + glob.glob(prefix + ".rank*.jsonl")))


def sidecar_path(out_path: str | os.PathLike, kind: str) -> Path:
    """``<out>.<kind>.json`` (``images`` or ``errors``)."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.name}.{kind}.json")


def read_partial(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The header and the complete records of one partial file.

    A line cut short by a killed run (the last one) is ignored.
    """
    header = None
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("Ignoring an unreadable line in %s", path)
                continue
            if "refseg_partial" in entry:
                header = entry
            else:
                records.append(entry)
    return header, records


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line that has no newline (a write interrupted by a kill)."""
    with open(path, "rb+") as handle:
        data = handle.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            handle.truncate(end)


def _append_line(handle, entry: Mapping[str, Any]) -> None:
    handle.write(json.dumps(entry, separators=(",", ":")) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


# ----------------------------------------------------------------------------- the loop


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
            settings; without it, partial files of earlier runs are deleted first.
        score_threshold: drop instances scoring below this.
        vis_dir: when given, an overlay PNG per image is written there (``refseg.viz``).
        run_info: settings that make results differ (json-able); a resume refuses partial files
            written with other ``run_info``.
        rank, world_size: this process's share is ``targets[rank::world_size]``; rank 0 merges.
        barrier: waits for every process (needed when ``world_size > 1``).
        progress: show a tqdm progress bar (rank 0 only).

    Returns:
        A :class:`PredictSummary` of the run.

    Raises:
        InvalidInputError: duplicate target names or ids, an empty memory bank, or a resume
            over partial files of a run with other settings.
    """
    if world_size > 1 and barrier is None:
        raise ValueError("a multi-process run needs a barrier")
    out_path = Path(out_path)
    _check_unique(targets)
    info = json.loads(json.dumps(dict(run_info or {}), sort_keys=True))
    memory = getattr(segmenter, "memory", None)
    if memory is not None and len(memory) == 0:
        raise InvalidInputError("The memory bank is empty: add references before predicting.")
    if category_ids is None:
        category_ids = _default_category_ids(segmenter)
    summary = PredictSummary(
        out_path=out_path, images_path=sidecar_path(out_path, "images"), total=len(targets)
    )

    if not resume and rank == 0:
        for stale in partial_paths(out_path):
            logger.warning(
                "Deleting partial results of an earlier run: %s (use --resume to continue it)", stale
            )
            stale.unlink()
    if world_size > 1:
        barrier()  # type: ignore[misc]
    done = _done_names(out_path, info) if resume else set()

    share = list(targets[rank::world_size])
    todo = [t for t in share if t.file_name not in done]
    summary.resumed = len(share) - len(todo)
    if summary.resumed:
        logger.info("Resuming: %d of %d images already done", summary.resumed, len(share))

    own = partial_path(out_path, rank, world_size)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if own.exists():
        _cut_torn_tail(own)
    start = time.perf_counter()
    with open(own, "a", encoding="utf-8") as handle:
        if handle.tell() == 0:
            _append_line(handle, {"refseg_partial": PARTIAL_FORMAT, "run_info": info})
        bar = progress_bar(len(share), summary.resumed, enabled=progress and rank == 0)
        try:
            for target in todo:
                record = _predict_one(segmenter, target, category_ids, score_threshold, vis_dir)
                _append_line(handle, record)
                summary.processed += 1
                if record["status"] == "ok":
                    summary.instances += len(record["results"])
                else:
                    summary.errors += 1
                    logger.warning("Skipped %s: %s", target.path, record["error"])
                bar.update(1)
        finally:
            bar.close()
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


def _done_names(out_path: Path, info: Mapping[str, Any]) -> set[str]:
    done: set[str] = set()
    for path in partial_paths(out_path):
        header, records = read_partial(path)
        if header is not None and header.get("run_info") != info:
            raise InvalidInputError(
                f"{path} holds results of a run with other settings ({header.get('run_info')}); "
                "run again with the same settings, or without --resume to start over."
            )
        done.update(r["file_name"] for r in records if r.get("status") == "ok")
    return done


def _predict_one(
    segmenter: SupportsPredict,
    target: Target,
    category_ids: Mapping[str, int] | None,
    score_threshold: float,
    vis_dir: str | os.PathLike | None,
) -> dict[str, Any]:
    base = {"file_name": target.file_name, "image_id": target.image_id}
    try:
        image = load_image(target.path)
        instances = segmenter.predict(image)
    except RefsegError as error:
        return {**base, "status": "error", "error": str(error)}
    if score_threshold > 0:
        instances = instances.filter(score_threshold)
    results = instances.to_coco(target.image_id, category_ids)
    if vis_dir is not None:
        _write_overlay(image, instances, Path(vis_dir), target.file_name)
    height, width = image.shape[:2]
    return {**base, "status": "ok", "height": int(height), "width": int(width), "results": results}


def _write_overlay(image: np.ndarray, instances: Instances, vis_dir: Path, file_name: str) -> None:
    from .viz import draw_instances  # optional: only when overlays are asked for

    relative = Path(file_name.lstrip("/")).with_suffix(".png")
    path = vis_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_instances(image, instances).save(path)


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

    write_json(results, out_path)
    write_json({"images": images, "categories": _categories(category_ids)}, summary.images_path)
    errors_path = sidecar_path(out_path, "errors")
    if errors:
        write_json(errors, errors_path)
        summary.errors_path = errors_path
    elif errors_path.exists():
        errors_path.unlink()
    for path in partials:
        path.unlink()
    summary.errors = len(errors)
    summary.error_records = errors
    summary.instances = len(results)
    summary.merged = True


def _categories(category_ids: Mapping[str, int] | None) -> list[dict[str, Any]]:
    if not category_ids:
        return []
    return [{"id": int(i), "name": name} for name, i in sorted(category_ids.items(), key=lambda kv: kv[1])]
