"""The reference list as the page shows it: one row per reference in memory.

Each row: the reference's thumbnail (the crop the memory bank encoded, its mask outlined;
only for references added in this session, since a memory file holds features, not
pictures), its class, positive or negative, how it was marked and its file. The list's value
is a plain dict the list's script draws (:mod:`refseg.app.canvas`), text as text::

    {"rows": [{"id", "thumbnail", "class", "kind", "marked", "file"}], "summary": str,
     "unsaved": bool}
"""

from __future__ import annotations

from pathlib import PureWindowsPath
from typing import Any

from .session import SessionState

BACKGROUND = "background"
_MARKED = {
    "points": "points",
    "box": "box",
    "box+points": "box + points",
    "brush": "brush",
    "mask file": "mask file",
    "mask": "mask",
    "result": "picked in a result",
}


def marked_by(source: dict[str, Any]) -> str:
    """How a reference was marked, in words, from its recorded source."""
    prompt = str(source.get("prompt", ""))
    return _MARKED.get(prompt, prompt)


def file_of(source: dict[str, Any]) -> str:
    """The base name of the file a reference came from ("" if none is recorded)."""
    recorded = source.get("file")
    return PureWindowsPath(str(recorded)).name if recorded else ""


def reference_rows(state: SessionState) -> list[dict[str, Any]]:
    """One row per reference in memory, in the bank's order."""
    if state.bank is None:
        return []
    rows = []
    for record in state.bank.references:
        rows.append(
            {
                "id": record.ref_id,
                "thumbnail": state.thumbnails.get(record.ref_id, ""),
                "class": record.class_name or BACKGROUND,
                "kind": "negative" if record.negative else "positive",
                "marked": marked_by(record.source),
                "file": file_of(record.source),
            }
        )
    return rows


def memory_summary(state: SessionState) -> str:
    """One line: references and classes in memory."""
    if state.bank is None or len(state.bank) == 0:
        return "Memory: empty. Mark an object and press Accept to add the first reference."
    counts = ", ".join(f"{name} {count}" for name, count in state.bank.counts().items())
    negatives = sum(state.bank.negative_counts().values())
    extra = f", {negatives} of them negative" if negatives else ""
    return (
        f"Memory: {len(state.bank)} reference(s){extra} in {len(state.bank.class_names)} class(es): {counts}"
    )


def references_value(state: SessionState) -> dict[str, Any]:
    """The reference list's value."""
    return {"rows": reference_rows(state), "summary": memory_summary(state), "unsaved": state.unsaved}
