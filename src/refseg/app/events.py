"""What each click, upload and button of the page does, and how the events are wired.

Every handler returns (or yields) a dict ``{component: update}``; what it leaves out stays as
it is. A user's mistake is a message in the one message area, never ``gr.Error`` (whose "Error"
badge would cover every output of the event until the next success). Work that takes time
yields its steps first ("encoding the reference…", "segmenting 3/12: …") with its button
disabled, and a button that adds something is guarded three ways against adding twice:
``trigger_mode="once"``, the button disabled by the first yield, and a check on the server
(a draft accepted once, a brush or mask add taken once).

Every event that runs SAM2 or DINOv2 waits in one queue lane (``MODELS``), whichever session
sent it; clicks on a picture are never dropped (``trigger_mode="multiple"``).
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
from .brush import fresh_strokes, painted_mask, remember_strokes
from .canvas import show_picture
from .draft import Draft, describe_prompts, draft_mask, prompt_from_event, start_draft
from .pictures import check_picture, display_name, read_mask_file, read_picture
from .references_view import references_value
from .results_view import describe_instance, pick_instance, result_files, result_strip, result_view
from .session import SessionState, SharedModels
from .views import empty_view, mask_view, message_html, picture_view, prompt_view

if TYPE_CHECKING:  # pragma: no cover
    from .ui import Page

logger = logging.getLogger(__name__)

MODELS: dict[str, Any] = {"concurrency_id": "models", "concurrency_limit": 1, "show_progress": "hidden"}
QUIET: dict[str, Any] = {"show_progress": "hidden"}
UNEXPECTED = "Something went wrong on the server (its log says what); the page is still usable."
Restore = Callable[[SessionState], dict]


def _file_path(value: Any) -> str | None:
    """The local path of an uploaded file (gradio gives a str path or an object with .name)."""
    if value is None:
        return None
    return os.fspath(value) if isinstance(value, str | os.PathLike) else getattr(value, "name", None)


def _event_data(evt: gr.EventData | None) -> Any:
    return getattr(evt, "_data", None)


def _digest(*parts: Any) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.tobytes() if hasattr(part, "tobytes") else str(part).encode())
    return digest.hexdigest()


class Events:
    """The page's handlers, bound to its components and the shared models."""

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
        mask = draft_mask(self.models.base().proposer, draft, draft.picture.preview.shape[:2])
        if mask is not None and not mask.any():
            caption = "SAM2 found no object for these prompts: click elsewhere or drag a box."
        view = prompt_view(draft, mask, state.seqs.get(slot, 0), caption)
        return {canvas: view, accept: gr.Button(interactive=bool(draft.prompts))}

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

    # ------------------------------------------------------------------ the reference picture

    def upload_reference(self, state: SessionState, file: Any) -> Iterator[dict]:
        page = self.page
        path = _file_path(file)
        if path is None:
            return
        name = display_name(path)
        yield self.busy(f"reading {name}…")
        try:
            picture = read_picture(path, name)
        except InvalidInputError as error:  # the previous picture stays; the drop zone is ready again
            yield {**self.error(str(error)), page.reference_upload: None}
            return
        state.picture, state.pair_mask = picture, None
        state.drafts.pop("reference", None)
        seq = state.seqs.get("reference", 0)
        shown = picture_view(picture, mode="prompt", seq=seq, caption_text="encoding the picture…")
        yield {
            page.reference_upload: None,
            page.reference_canvas: show_picture(picture, shown),
            page.editor: {"background": picture.preview, "layers": [], "composite": None},
            page.mask_canvas: show_picture(
                picture, picture_view(picture, mode="view", seq=0, caption_text="Upload its mask above.")
            ),
            page.add_masked: gr.Button(interactive=False),
            page.accept: gr.Button(interactive=False),
            **self.busy(f"encoding {name} ({picture.width}x{picture.height})…"),
        }
        state.drafts["reference"] = draft = start_draft(self.models.base().proposer, picture)
        yield {
            page.reference_canvas: prompt_view(draft, None, state.seqs.get("reference", 0)),
            **self.info(f"{name}: click the object (shift/alt+click: not on it) or drag a box, then Accept."),
        }

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

    def reference_prompt(self, state: SessionState, evt: gr.EventData) -> dict:
        return self.prompt(state, "reference", _event_data(evt))

    def undo(self, state: SessionState, slot: str = "reference") -> dict:
        draft = state.drafts.get(slot)
        if draft is None:
            return self.info("Nothing marked.")
        undone = draft.undo()
        return {
            **self.draft_updates(state, slot, draft),
            **self.info("Removed the last prompt." if undone else "Nothing marked."),
        }

    def clear(self, state: SessionState) -> dict:
        draft = state.drafts.get("reference")
        if draft is None:
            return self.info("Nothing marked.")
        draft.clear()
        return {
            **self.draft_updates(state, "reference", draft),
            **self.info("Cleared: click the object again."),
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
        source = {**describe_prompts(draft.prompts), "file": draft.picture.name}
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

    def accept(self, state: SessionState, class_name: str | None) -> Iterator[dict]:
        yield from self.accept_draft(state, "reference", class_name)

    def add_painted(self, state: SessionState, class_name: str | None, editor: Any) -> Iterator[dict]:
        page = self.page
        picture = state.picture
        if picture is None:
            raise InvalidInputError("Upload a reference picture first.")
        painted = painted_mask(editor, (picture.height, picture.width))
        if painted is None:
            raise InvalidInputError("Paint over the object with the brush first.")
        mask = fresh_strokes(state, picture.key, painted)
        if mask is None:
            if state.last_add == _digest("brush", picture.key, painted):
                return  # the same add sent twice
            raise InvalidInputError(
                "These strokes already marked the previous reference: paint the next object."
            )
        if not class_name or not class_name.strip():
            raise InvalidInputError("Type a class name first.")
        yield {page.add_painted: gr.Button(interactive=False), **self.busy("encoding the reference…")}
        source = {"prompt": "brush", "file": picture.name}
        ref_id = actions.add_reference(self.models, state, class_name, picture.pixels, mask, source=source)
        remember_strokes(state, picture.key, painted)
        state.last_add = _digest("brush", picture.key, painted)
        yield {
            page.add_painted: gr.Button(interactive=True),
            **self.memory_updates(state),
            **self.info(f"Added reference #{ref_id}: {class_name.strip()} (painted on {picture.name})."),
        }

    def upload_mask(self, state: SessionState, file: Any) -> dict:
        page = self.page
        path = _file_path(file)
        if path is None:
            return {}
        reset = {page.mask_upload: None}
        if state.picture is None:
            return {**reset, **self.error("Upload the picture first (above), then its mask here.")}
        name = display_name(path)
        try:
            mask = read_mask_file(path, state.picture, name)
        except InvalidInputError as error:
            return {**reset, **self.error(str(error))}
        state.pair_mask = (name, mask)
        return {
            **reset,
            page.mask_canvas: mask_view(state.picture, mask, f"The mask {name} over {state.picture.name}."),
            page.add_masked: gr.Button(interactive=True),
            **self.info(f"{name} read: type the class name and press Add with this mask."),
        }

    def add_masked(self, state: SessionState, class_name: str | None) -> Iterator[dict]:
        page = self.page
        if state.pair_mask is None or state.picture is None:
            return  # nothing uploaded (the button is off), or the same add sent twice
        if not class_name or not class_name.strip():
            raise InvalidInputError("Type a class name first.")
        (name, mask), picture = state.pair_mask, state.picture
        yield {page.add_masked: gr.Button(interactive=False), **self.busy("encoding the reference…")}
        source = {"prompt": "mask file", "file": picture.name, "mask_file": name}
        ref_id = actions.add_reference(self.models, state, class_name, picture.pixels, mask, source=source)
        state.pair_mask = None
        yield {
            page.mask_canvas: picture_view(
                picture, mode="view", seq=0, caption_text="Added. Upload another mask."
            ),
            **self.memory_updates(state),
            **self.info(f"Added reference #{ref_id}: {class_name.strip()} (mask {name} on {picture.name})."),
        }

    # ------------------------------------------------------------------ the memory

    def remove_row(self, state: SessionState, evt: gr.EventData) -> dict:
        data = _event_data(evt)
        ref_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(ref_id, int) or isinstance(ref_id, bool):
            raise InvalidInputError("The page is out of step with the server: reload it.")
        what = actions.remove_reference(state, ref_id)
        return {**self.memory_updates(state), **self.info(f"Removed {what}. Undo removal puts it back.")}

    def remove_class(self, state: SessionState, class_name: str | None) -> dict:
        what = actions.remove_class(state, class_name)
        return {**self.memory_updates(state), **self.info(f"Removed {what}. Undo removal puts it back.")}

    def undo_removal(self, state: SessionState) -> dict:
        what = actions.undo_removal(state)
        return {**self.memory_updates(state), **self.info(f"Put back {what}.")}

    def downloaded(self, state: SessionState) -> dict:
        actions.save_memory(state)
        return {self.page.references: references_value(state)}

    def load_memory(self, state: SessionState, file: Any) -> dict:
        path = _file_path(file)
        if path is None:
            return {}
        reset = {self.page.memory_upload: None}
        try:
            actions.load_memory(self.models, state, path)
        except RefsegError as error:
            return {**reset, **self.error(str(error))}
        count = len(state.bank) if state.bank is not None else 0
        return {
            **reset,
            **self.memory_updates(state),
            **self.info(f"Loaded {display_name(path)}: {count} reference(s)."),
        }

    def memory_picture(self, state: SessionState) -> Iterator[dict]:
        yield self.busy("encoding the references for the memory picture…")
        picture = actions.session_memory_picture(self.models, state)
        yield {self.page.memory_picture: picture, **self.info("The memory picture is below.")}

    # ------------------------------------------------------------------ targets and results

    def targets_arrived(self, state: SessionState, files: Any) -> dict:
        paths = [p for p in (_file_path(f) for f in (files or [])) if p]
        good, problems = [], []
        for path in paths:
            try:
                check_picture(path)
                good.append(path)
            except InvalidInputError as error:
                problems.append(str(error))
        if problems:
            left = f" {len(good)} picture(s) ready." if good else ""
            return {self.page.targets: good or None, **self.error(" ".join(problems) + " Left out." + left)}
        return self.info(f"{len(good)} target picture(s) ready: press Run.")

    def run(self, state: SessionState, files: Any, threshold: float) -> Iterator[dict]:
        paths = [p for p in (_file_path(f) for f in (files or [])) if p]
        yield {self.page.run: gr.Button(interactive=False), **self.busy("loading the models…")}
        self.models.base()
        steps = actions.run_targets(self.models, state, paths)
        while True:
            try:
                done, total, name = next(steps)
            except StopIteration as stop:
                problems = stop.value or []
                break
            yield self.busy(f"segmenting {done + 1}/{total}: {name}")
        found = sum(len(r.instances.filter(threshold)) for r in state.results)
        text = f"Done: {found} instance(s) in {len(state.results)} picture(s). Click one to correct it."
        if problems:
            text += " Skipped " + "; ".join(problems) + "."
        yield {
            self.page.run: gr.Button(interactive=True),
            **self.result_updates(state, threshold),
            **self.info(text),
        }

    def result_click(self, state: SessionState, threshold: float, evt: gr.EventData) -> dict:
        data = _event_data(evt)
        if "result" in state.drafts:
            return self.prompt(state, "result", data)
        seq = self._seq(state, "result", data)
        if not state.results:
            return {self.page.result_canvas: {**empty_view("Run to see the results here."), "seq": seq}}
        result = state.results[state.shown]
        point = prompt_from_event(data, result.picture.width, result.picture.height, allow_box=False)
        state.selected = pick_instance(result, threshold, point.x1, point.y1)
        if state.selected is None:
            text = "No instance here. Missed something? Press Missed something, then click it."
        else:
            chosen = result.instances.names[state.selected]
            text = (f"Selected {describe_instance(result, state.selected)}. Not {chosen}: a negative example of "
                    f"{chosen}; Background: a negative example of no class.")  # fmt: skip
        return {**self.result_updates(state, threshold, text, picture=False), **self.info(text)}

    def add_negative(self, state: SessionState, threshold: float, of_class: bool) -> Iterator[dict]:
        if not state.results or state.selected is None:
            return  # nothing selected (the buttons are off), or the same click sent twice
        page = self.page
        result, index = state.results[state.shown], state.selected
        class_name = result.instances.names[index] if of_class else None
        yield {page.not_class: gr.Button(interactive=False), page.background: gr.Button(interactive=False),
               **self.busy("encoding the negative example…")}  # fmt: skip
        source = {"prompt": "result", "file": result.name}
        mask = result.instances.masks[index]
        ref_id = actions.add_reference(
            self.models, state, class_name, result.image, mask, source=source, negative=True
        )
        what = f"a negative example of {class_name}" if class_name else "a background example"
        state.selected = None
        text = f"Added {describe_instance(result, index)} as {what} (#{ref_id}). Run again to see the effect."
        yield {
            **self.result_updates(state, threshold, text, picture=False),
            **self.memory_updates(state),
            **self.info(text),
        }

    def not_class(self, state: SessionState, threshold: float) -> Iterator[dict]:
        yield from self.add_negative(state, threshold, of_class=True)

    def background(self, state: SessionState, threshold: float) -> Iterator[dict]:
        yield from self.add_negative(state, threshold, of_class=False)

    def missed(self, state: SessionState) -> Iterator[dict]:
        page = self.page
        if not state.results:
            return
        result = state.results[state.shown]
        selected = None if state.selected is None else result.instances.names[state.selected]
        yield {page.missed: gr.Button(interactive=False), **self.busy(f"encoding {result.name}…")}
        state.drafts["result"] = draft = start_draft(self.models.base().proposer, result.picture)
        state.selected = None
        names = state.bank.class_names if state.bank is not None else []
        caption = "Click the object refseg missed (shift/alt+click: not on it) or drag a box; then Add."
        yield {
            page.result_canvas: prompt_view(draft, None, state.seqs.get("result", 0), caption),
            page.missed_class: gr.Dropdown(choices=names, value=selected or (names[0] if names else None)),
            page.missed_accept: gr.Button(interactive=False),
            **self.correction_updates(state),
            **self.info(caption),
        }

    def missed_undo(self, state: SessionState) -> dict:
        return self.undo(state, "result")

    def missed_accept(self, state: SessionState, class_name: str | None, threshold: float) -> Iterator[dict]:
        added = False
        for update in self.accept_draft(state, "result", class_name):
            added = self.page.references in update
            if not added:
                yield update
        if added:
            state.drafts.pop("result", None)
            yield {
                **update,
                **self.result_updates(state, threshold, "Added. Run again to see the effect.", picture=False),
            }

    def missed_cancel(self, state: SessionState, threshold: float) -> dict:
        state.drafts.pop("result", None)
        return {**self.result_updates(state, threshold, picture=False), **self.info("Back to the results.")}

    def threshold_moved(self, state: SessionState, threshold: float) -> dict:
        if state.results and state.selected is not None:
            if float(state.results[state.shown].instances.scores[state.selected]) < threshold:
                state.selected = None
        if "result" in state.drafts:
            return {
                self.page.strip: result_strip(state, threshold),
                self.page.result_files: result_files(state, threshold),
            }
        return self.result_updates(state, threshold, picture=False)

    def show_result(self, state: SessionState, threshold: float, evt: gr.SelectData) -> dict:
        index = int(evt.index) if isinstance(evt.index, int) else 0
        if not 0 <= index < len(state.results):
            return {}
        state.shown, state.selected = index, None
        state.drafts.pop("result", None)
        return self.result_updates(state, threshold)


def wire(page: Page, models: SharedModels) -> Events:
    """Bind the page's events to their handlers."""
    events = Events(page, models)
    guard = events.guard
    state, message = page.state, page.message
    memory = page.memory_outputs()
    results = [page.result_canvas, page.strip, page.result_files, page.correction_row, page.missed_row,
               page.not_class, page.background, page.missed]  # fmt: skip

    def accept_restore(slot: str, button: gr.Button) -> Restore:
        return lambda s: {button: gr.Button(interactive=bool(s.drafts.get(slot) and s.drafts[slot].prompts))}

    canvas_outputs = [page.reference_canvas, page.accept, message]
    page.reference_upload.upload(
        guard(events.upload_reference),
        [state, page.reference_upload],
        [page.reference_upload, page.reference_canvas, page.editor, page.mask_canvas, page.add_masked, page.accept, message],
        **MODELS,
    )  # fmt: skip
    page.reference_canvas.prompt(
        guard(events.reference_prompt), [state], canvas_outputs, trigger_mode="multiple", **MODELS
    )
    page.undo.click(guard(events.undo), [state], canvas_outputs, trigger_mode="multiple", **MODELS)
    page.clear.click(guard(events.clear), [state], canvas_outputs, **MODELS)
    page.accept.click(
        guard(events.accept, accept_restore("reference", page.accept)),
        [state, page.class_name],
        [*canvas_outputs, *memory],
        trigger_mode="once",
        **MODELS,
    )
    page.add_painted.click(
        guard(events.add_painted, lambda s: {page.add_painted: gr.Button(interactive=True)}),
        [state, page.class_name, page.editor],
        [page.add_painted, message, *memory],
        trigger_mode="once",
        **MODELS,
    )
    page.mask_upload.upload(
        guard(events.upload_mask), [state, page.mask_upload], [page.mask_upload, page.mask_canvas, page.add_masked, message], **QUIET
    )  # fmt: skip
    page.add_masked.click(
        guard(events.add_masked, lambda s: {page.add_masked: gr.Button(interactive=s.pair_mask is not None)}),
        [state, page.class_name],
        [page.add_masked, page.mask_canvas, message, *memory],
        trigger_mode="once",
        **MODELS,
    )
    page.references.remove_reference(
        guard(events.remove_row, events.memory_updates), [state], [message, *memory], trigger_mode="multiple", **QUIET
    )  # fmt: skip
    page.remove_class.click(
        guard(events.remove_class), [state, page.class_choice], [message, *memory], **QUIET
    )
    page.undo_removal.click(
        guard(events.undo_removal, events.memory_updates), [state], [message, *memory], **QUIET
    )
    page.download.click(guard(events.downloaded), [state], [page.references, message], **QUIET)
    page.memory_upload.upload(guard(events.load_memory), [state, page.memory_upload], [page.memory_upload, message, *memory], **QUIET)  # fmt: skip
    page.picture_button.click(guard(events.memory_picture), [state], [page.memory_picture, message], **MODELS)
    page.targets.upload(
        guard(events.targets_arrived), [state, page.targets], [page.targets, message], **QUIET
    )
    page.run.click(
        guard(events.run, lambda s: {page.run: gr.Button(interactive=True)}),
        [state, page.targets, page.threshold],
        [page.run, message, *results],
        trigger_mode="once",
        **MODELS,
    )
    page.result_canvas.prompt(
        guard(events.result_click),
        [state, page.threshold],
        [message, *results, page.missed_accept],
        trigger_mode="multiple",
        **MODELS,
    )
    negative_outputs = [message, *results, *memory]
    page.not_class.click(guard(events.not_class, events.correction_updates), [state, page.threshold], negative_outputs, trigger_mode="once", **MODELS)  # fmt: skip
    page.background.click(guard(events.background, events.correction_updates), [state, page.threshold], negative_outputs, trigger_mode="once", **MODELS)  # fmt: skip
    page.missed.click(
        guard(events.missed, events.correction_updates),
        [state],
        [message, *results, page.missed_class, page.missed_accept],
        trigger_mode="once",
        **MODELS,
    )
    page.missed_undo.click(guard(events.missed_undo), [state], [page.result_canvas, page.missed_accept, message], trigger_mode="multiple", **MODELS)  # fmt: skip
    page.missed_accept.click(
        guard(events.missed_accept, accept_restore("result", page.missed_accept)),
        [state, page.missed_class, page.threshold],
        [message, *results, page.missed_accept, *memory],
        trigger_mode="once",
        **MODELS,
    )
    page.missed_cancel.click(
        guard(events.missed_cancel), [state, page.threshold], [message, *results], **QUIET
    )
    page.threshold.release(guard(events.threshold_moved), [state, page.threshold], results, **QUIET)
    page.strip.select(guard(events.show_result), [state, page.threshold], results, **QUIET)
    return events
