"""How the page's events are wired to their handlers (:mod:`refseg.app.marking_events`,
:mod:`refseg.app.result_events`).

Every event that runs SAM2 or DINOv2 waits in one queue lane (``MODELS``), whichever session
sent it; clicks on a picture are never dropped (``trigger_mode="multiple"``); buttons that add
or run take one click at a time (``trigger_mode="once"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from .marking_events import MarkingEvents
from .page_events import MODELS, QUIET, Restore
from .result_events import ResultEvents
from .session import SharedModels

if TYPE_CHECKING:  # pragma: no cover
    from .ui import Page


class Events(MarkingEvents, ResultEvents):
    """Every handler of the page."""


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
    tab_outputs = [page.reference_canvas, page.accept, page.editor, page.mask_canvas, message]
    page.click_tab.select(guard(events.choose_click), [state], tab_outputs, **MODELS)
    page.paint_tab.select(guard(events.choose_paint), [state], tab_outputs, **QUIET)
    page.mask_tab.select(guard(events.choose_mask), [state], tab_outputs, **QUIET)
    page.reference_canvas.prompt(
        guard(events.reference_prompt, events.canvas_restore("reference")),
        [state],
        canvas_outputs,
        trigger_mode="multiple",
        **MODELS,
    )
    reference_restore = events.canvas_restore("reference")
    page.undo.click(
        guard(events.undo, reference_restore), [state], canvas_outputs, trigger_mode="multiple", **MODELS
    )
    page.clear.click(guard(events.clear, reference_restore), [state], canvas_outputs, **MODELS)
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
        guard(events.result_click, events.canvas_restore("result")),
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
    page.missed_undo.click(guard(events.missed_undo, events.canvas_restore("result")), [state], [page.result_canvas, page.missed_accept, message], trigger_mode="multiple", **MODELS)  # fmt: skip
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
