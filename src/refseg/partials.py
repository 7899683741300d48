"""The partial files of a predict run, and the settings a resume must share with them.

While :func:`refseg.runner.predict_files` runs, each process appends one JSON line per finished
image to its partial file (``<out>.partial.jsonl``, or ``<out>.partial.rank<R>.jsonl`` in a
multi-process run), flushed and fsynced. The first line is a header::

    {"refseg_partial": 2, "run_key": {...}, "run_info": {...}}

``run_key`` (:func:`run_key`) holds the settings that change results, computed from the
segmenter itself; ``run_info`` is whatever the caller adds. A resume refuses partial files
whose header differs, naming what changed (:func:`check_resumable`).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

logger = logging.getLogger(__name__)

PARTIAL_FORMAT = 2  # 1 (refseg 0.1.0): the header held run_info only

#: Preset fields that change speed or naming only, never results (left out of the run key).
COMPUTE_ONLY_SETTINGS = frozenset({"name", "points_batch_size"})


def run_key(segmenter: Any, score_threshold: float, category_ids: Mapping[str, int] | None) -> dict[str, Any]:
    """The settings that change a run's results, as json-able values.

    - ``settings``: the segmenter's settings (a dataclass such as :class:`~refseg.Preset`)
      without :data:`COMPUTE_ONLY_SETTINGS`;
    - ``memory``: the memory bank's content fingerprint (``MemoryBank.fingerprint``: features,
      class names and category ids; the same bank saved to another file has the same one);
    - ``score_threshold`` and ``category_ids``.

    Segmenters without ``settings`` or a fingerprinted ``memory`` leave those keys out.
    """
    key: dict[str, Any] = {
        "score_threshold": float(score_threshold),
        "category_ids": None if category_ids is None else {str(k): int(v) for k, v in category_ids.items()},
    }
    settings = getattr(segmenter, "settings", None)
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        values = dataclasses.asdict(settings)
        key["settings"] = {k: v for k, v in values.items() if k not in COMPUTE_ONLY_SETTINGS}
    fingerprint = getattr(getattr(segmenter, "memory", None), "fingerprint", None)
    if callable(fingerprint):
        key["memory"] = fingerprint()
    return _json_normal(key)


def partial_header(key: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """The first line of a partial file."""
    return {"refseg_partial": PARTIAL_FORMAT, "run_key": _json_normal(key), "run_info": _json_normal(info)}


def check_resumable(
    path: Path, header: Mapping[str, Any] | None, key: Mapping[str, Any], info: Mapping[str, Any]
) -> None:
    """Raise unless the partial file ``path`` was written by a run of the same settings.

    Raises:
        InvalidInputError: naming each setting that changed.
    """
    if header is None:  # killed before its header was complete: no results either
        return
    if header.get("refseg_partial") != PARTIAL_FORMAT:
        changes = ["it was written by another refseg version"]
    else:
        changes = _changes(header.get("run_key") or {}, _json_normal(key))
        changes += _changes(header.get("run_info") or {}, _json_normal(info))
    if changes:
        raise InvalidInputError(
            f"{path} holds results of a run with other settings ({'; '.join(changes)}); "
            "run again with the same settings, or without --resume to start over."
        )


def _changes(then: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """One phrase per differing leaf: ``points_per_side was 4, now 8``."""
    changes = []
    for name in sorted(set(then) | set(now)):
        old, new = then.get(name), now.get(name)
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping) and name == "settings":
            changes += _changes(old, new)
        elif name == "memory":
            changes.append(
                "the memory bank's content differs (another memory, or references added or removed)"
            )
        else:
            changes.append(f"{name} was {_short(old)}, now {_short(new)}")
    return changes


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_normal(value: Any) -> Any:
    """``value`` as json reads it back (tuples become lists, keys strings), so it compares equal."""
    return json.loads(json.dumps(value, sort_keys=True))


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
            except (json.JSONDecodeError, RecursionError):
                entry = None
            if not isinstance(entry, dict):
                logger.warning("Ignoring an unreadable line in %s", path)
                continue
            if "refseg_partial" in entry:
                header = entry
            else:
                records.append(entry)
    return header, records


def cut_torn_tail(path: Path) -> None:
    """Drop a last line that has no newline (a write interrupted by a kill)."""
    with open(path, "rb+") as handle:
        data = handle.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            handle.truncate(end)


def append_line(handle, entry: Mapping[str, Any]) -> None:
    handle.write(json.dumps(entry, separators=(",", ":")) + "\n")
    handle.flush()
    os.fsync(handle.fileno())
