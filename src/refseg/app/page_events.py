"""The page's events, the part every handler shares: messages, the error guard, and the
updates that show the memory, a draft on a canvas and the results.

Every handler returns (or yields) a dict ``{component: update}``; what it leaves out stays as
it is. A user's mistake is a message in the one message area, never ``gr.Error`` (whose "Error"
badge would cover every output of the event until the next success). Work that takes time
yields its steps first ("encoding the reference…", "segmenting 3/12: …") with its button
disabled, and a button that adds something is guarded three ways against adding twice:
``trigger_mode="once"``, the button disabled by the first yield, and a check on the server
(a draft accepted once, a brush or mask add taken once).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..errors import InvalidInputError, RefsegError
from . import session as actions
from .canvas import show_picture
from .draft import Draft, describe_prompts, draft_mask, prompt_from_event
from .references_view import references_value
from .results_view import result_files, result_strip, result_view
from .session import SessionState, SharedModels
from .views import empty_view, message_html, prompt_view

if TYPE_CHECKING:  # pragma: no cover
    from .ui import Page

logger = logging.getLogger(__name__)

MODELS: dict[str, Any] = {"concurrency_id": "models", "concurrency_limit": 1, "show_progress": "hidden"}
QUIET: dict[str, Any] = {"show_progress": "hidden"}
UNEXPECTED = "Something went wrong on the server (its log says what); the page is still usable."
Restore = Callable[[SessionState], dict]


def upload_path(value: Any) -> str | None:
    """The local path of an uploaded file (gradio gives a str path or an object with .name)."""
    if value is None:
        return None
    return os.fspath(value) if isinstance(value, str | os.PathLike) else getattr(value, "name", None)


def event_data(evt: gr.EventData | None) -> Any:
    return getattr(evt, "_data", None)


def fingerprint(*parts: Any) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.tobytes() if hasattr(part, "tobytes") else str(part).encode())
    return digest.hexdigest()


class PageEvents:
    """What every handler of the page uses, bound to its components and the shared models."""

    def __init__(self, page: Page, models: SharedModels) -> None:
        self.page = page
        self.models = models

    # ------------------------------------------------------------------ messages and guards

    def info(self, text: str) -> dict:
        return {self.page.message: message_html(text, "info")}

    def busy(self, text: str) -> dict:
        return {self.page.message: message_html(text, "busy")}

    def error(self, text: str) -> dict:
        return {self.page.message: message_html(text, "error")}

    def guard(self, handler: Callable[..., Any], restore: Restore | None = None) -> Callable[..., Any]:
        """``handler`` with every error turned into a message (and ``restore``'s updates, which
        put back what its first yield disabled). It always answers with a dict or ``gr.skip()``:
        an answer of None would blank every output of the event."""

        def failed(args: tuple, text: str) -> dict:
            update = self.error(text)
            if restore is not None and args and isinstance(args[0], SessionState):
                update.update(restore(args[0]))
            return update

        def explain(error: Exception, args: tuple) -> dict:
            if isinstance(error, RefsegError):
                return failed(args, str(error))
            logger.exception("unexpected error in %s", handler.__name__, exc_info=error)
            return failed(args, UNEXPECTED)

        if inspect.isgeneratorfunction(handler):

            @functools.wraps(handler)
            def generator(*args: Any) -> Iterator[Any]:
                sent = False
                try:
                    for update in handler(*args):
                        sent = True
                        yield update
                except Exception as error:  # noqa: BLE001 (every failure becomes a message)
                    yield explain(error, args)
                    return
                if not sent:
                    yield gr.skip()

            return generator

        @functools.wraps(handler)
        def plain(*args: Any) -> Any:
            try:
                return handler(*args) or gr.skip()
            except Exception as error:  # noqa: BLE001
                return explain(error, args)

        return plain

    # ------------------------------------------------------------------ shared updates

    def memory_updates(self, state: SessionState) -> dict:
        page = self.page
        path = actions.memory_file(state)
        names = state.bank.class_names if state.bank is not None else []
        removal = state.removal
        can_undo = removal is not None and removal.version == state.version
        return {
            page.references: references_value(state),
            page.download: gr.DownloadButton(
                value=None if path is None else str(path), interactive=path is not None
            ),
            page.undo_removal: gr.Button(
                value=f"Undo removal of {removal.what}" if can_undo else "Undo removal", visible=can_undo
            ),
            page.class_choice: gr.Dropdown(choices=names, value=names[0] if names else None),
            page.missed_class: gr.Dropdown(choices=names),
        }

    def draft_updates(self, state: SessionState, slot: str, draft: Draft, caption: str | None = None) -> dict:
        """The canvas of a draft (its mask previewed) and its accept button."""
        canvas, accept = self._slot(slot)
        try:
            mask = draft_mask(self.models.base().proposer, draft, draft.picture.preview.shape[:2])
        except InvalidInputError as error:  # prompts SAM2 cannot take yet (only points off the object)
            mask, caption = None, str(error)
        if mask is not None and not mask.any():
            caption = "SAM2 found no object for these prompts: click elsewhere or drag a box."
        view = prompt_view(draft, mask, state.seqs.get(slot, 0), caption)
        return {canvas: view, accept: gr.Button(interactive=mask is not None and bool(mask.any()))}

    def correction_updates(self, state: SessionState) -> dict:
        page = self.page
        marking = "result" in state.drafts
        result = state.results[state.shown] if state.results else None
        chosen = None if result is None or state.selected is None else result.instances.names[state.selected]
        return {
            page.correction_row: gr.Row(visible=not marking),
            page.missed_row: gr.Row(visible=marking),
            page.not_class: gr.Button(
                value=f"Not {chosen}" if chosen else "Not …", interactive=chosen is not None
            ),
            page.background: gr.Button(interactive=chosen is not None),
            page.missed: gr.Button(interactive=result is not None),
        }

    def result_updates(
        self, state: SessionState, threshold: float, caption: str | None = None, *, picture: bool = True
    ) -> dict:
        page = self.page
        if not state.results:
            return {
                page.result_canvas: empty_view("No picture could be segmented."),
                page.strip: [],
                page.result_files: [],
                **self.correction_updates(state),
            }
        result = state.results[state.shown]
        view = result_view(result, threshold, state.selected, state.seqs.get("result", 0), caption)
        return {
            page.result_canvas: show_picture(result.picture, view) if picture else view,
            page.strip: result_strip(state, threshold),
            page.result_files: result_files(state, threshold),
            **self.correction_updates(state),
        }

    def canvas_restore(self, slot: str) -> Restore:
        """After an unexpected failure on a marking canvas: its prompts as they are, without a
        mask, answering the last click (so the page does not wait for an answer that will not
        come)."""
        canvas, _ = self._slot(slot)

        def restore(state: SessionState) -> dict:
            draft = state.drafts.get(slot)
            return {} if draft is None else {canvas: prompt_view(draft, None, state.seqs.get(slot, 0), "")}

        return restore

    def _slot(self, slot: str) -> tuple[gr.HTML, gr.Button]:
        page = self.page
        return (
            (page.reference_canvas, page.accept)
            if slot == "reference"
            else (page.result_canvas, page.missed_accept)
        )

    @staticmethod
    def _seq(state: SessionState, slot: str, data: Any) -> int:
        if isinstance(data, dict) and isinstance(data.get("seq"), int) and not isinstance(data["seq"], bool):
            state.seqs[slot] = data["seq"]
        return state.seqs.get(slot, 0)

    # ------------------------------------------------------------------ a draft on either canvas

    def prompt(self, state: SessionState, slot: str, data: Any) -> dict:
        canvas, _ = self._slot(slot)
        seq = self._seq(state, slot, data)
        draft = state.drafts.get(slot)
        if draft is None:
            return {canvas: {**empty_view("Upload a picture to start."), "seq": seq}, **self.error(
                "Upload a reference picture first.")}  # fmt: skip
        try:
            draft.add(prompt_from_event(data, draft.picture.width, draft.picture.height))
        except InvalidInputError as error:
            return {**self.draft_updates(state, slot, draft), **self.error(str(error))}
        return {
            **self.draft_updates(state, slot, draft),
            **self.info("Accept adds this object; Undo removes the last prompt."),
        }

    def undo(self, state: SessionState, slot: str = "reference") -> dict:
        draft = state.drafts.get(slot)
        if draft is None:
            return self.info("Nothing marked.")
        undone = draft.undo()
        return {
            **self.draft_updates(state, slot, draft),
            **self.info("Removed the last prompt." if undone else "Nothing marked."),
        }

    def accept_draft(self, state: SessionState, slot: str, class_name: str | None) -> Iterator[dict]:
        """Add the draft's object as a positive reference (shared by both Accept buttons)."""
        canvas, accept = self._slot(slot)
        draft = state.drafts.get(slot)
        if draft is None:
            raise InvalidInputError("Upload a reference picture, then click the object.")
        if draft.taken:  # the same Accept sent twice: the first one added it
            return
        if not draft.prompts:
            raise InvalidInputError("Mark the object first: click it or drag a box.")
        if not class_name or not class_name.strip():
            raise InvalidInputError("Type a class name first.")
        yield {accept: gr.Button(interactive=False), **self.busy("encoding the reference…")}
        mask = draft_mask(self.models.base().proposer, draft)
        if mask is None or not mask.any():
            raise InvalidInputError("SAM2 found no object for these prompts: click elsewhere or drag a box.")
        picture = draft.picture
        source = {**describe_prompts(draft.prompts, picture.width, picture.height), "file": picture.name}
        ref_id = actions.add_reference(
            self.models, state, class_name, draft.picture.pixels, mask, source=source
        )
        draft.clear()
        draft.accepted = draft.version
        yield {
            canvas: prompt_view(draft, None, state.seqs.get(slot, 0)),
            accept: gr.Button(interactive=False),
            **self.memory_updates(state),
            **self.info(
                f"Added reference #{ref_id}: {class_name.strip()} (marked by {source['prompt']} on {draft.picture.name})."
            ),
        }
