"""The page's events on the reference side: the picture, marking, the brush, mask files,
the reference list and the memory file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from ..errors import InvalidInputError, RefsegError
from . import session as actions
from .brush import fresh_strokes, painted_mask, remember_strokes
from .canvas import show_picture
from .draft import start_draft
from .page_events import PageEvents, event_data, fingerprint, upload_path
from .pictures import display_name, read_mask_file, read_picture
from .references_view import references_value
from .session import SessionState
from .views import mask_view, picture_view, prompt_view


class MarkingEvents(PageEvents):
    """Handlers of the references column."""

    # ------------------------------------------------------------------ the reference picture

    def upload_reference(self, state: SessionState, file: Any) -> Iterator[dict]:
        page = self.page
        path = upload_path(file)
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
        yield {
            page.reference_upload: None,
            **self.tab_updates(state),
            page.add_masked: gr.Button(interactive=False),
            page.accept: gr.Button(interactive=False),
            **self.busy(f"encoding {name} ({picture.width}x{picture.height})…"),
        }
        state.drafts["reference"] = draft = start_draft(self.models.base().proposer, picture)
        shown = {page.reference_canvas: prompt_view(draft, None, state.seqs.get("reference", 0))}
        yield {
            **(shown if state.tab == "click" else {}),
            **self.info(f"{name}: click the object (shift/alt+click: not on it) or drag a box, then Accept."),
        }

    def tab_updates(self, state: SessionState) -> dict:
        """The picture as the chosen tab shows it. Gradio drops updates to a component in a tab
        not shown, so each tab gets the picture when it is chosen (the brush's editor only when
        its picture changed: it holds the user's strokes)."""
        page, picture = self.page, state.picture
        if picture is None:
            return {}
        if state.tab == "paint":
            if state.editor_picture == picture.key:
                return {}
            state.editor_picture = picture.key
            return {page.editor: {"background": picture.preview, "layers": [], "composite": None}}
        if state.tab == "mask":
            if state.pair_mask is not None:
                name, mask = state.pair_mask
                view = mask_view(picture, mask, f"The mask {name} over {picture.name}.")
            else:
                view = picture_view(picture, mode="view", seq=0, caption_text="Upload its mask above.")
            return {page.mask_canvas: show_picture(picture, view)}
        draft = state.drafts.get("reference")
        if draft is None or draft.picture is not picture:
            seq = state.seqs.get("reference", 0)
            view = picture_view(picture, mode="prompt", seq=seq, caption_text="encoding the picture…")
            return {page.reference_canvas: show_picture(picture, view)}
        updates = self.draft_updates(state, "reference", draft)
        updates[page.reference_canvas] = show_picture(picture, updates[page.reference_canvas])
        return updates

    def choose_click(self, state: SessionState) -> dict:
        state.tab = "click"
        return self.tab_updates(state)

    def choose_paint(self, state: SessionState) -> dict:
        state.tab = "paint"
        return self.tab_updates(state)

    def choose_mask(self, state: SessionState) -> dict:
        state.tab = "mask"
        return self.tab_updates(state)

    def reference_prompt(self, state: SessionState, evt: gr.EventData) -> dict:
        return self.prompt(state, "reference", event_data(evt))

    def clear(self, state: SessionState) -> dict:
        draft = state.drafts.get("reference")
        if draft is None:
            return self.info("Nothing marked.")
        draft.clear()
        return {
            **self.draft_updates(state, "reference", draft),
            **self.info("Cleared: click the object again."),
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
            if state.last_add == fingerprint("brush", picture.key, painted):
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
        state.last_add = fingerprint("brush", picture.key, painted)
        yield {
            page.add_painted: gr.Button(interactive=True),
            **self.memory_updates(state),
            **self.info(f"Added reference #{ref_id}: {class_name.strip()} (painted on {picture.name})."),
        }

    def upload_mask(self, state: SessionState, file: Any) -> dict:
        page = self.page
        path = upload_path(file)
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
        data = event_data(evt)
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
        path = upload_path(file)
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
