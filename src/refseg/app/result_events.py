"""The page's events on the results side: targets, runs, the large view and its corrections
(a negative example from a click, an object refseg missed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from ..errors import InvalidInputError
from . import session as actions
from .draft import prompt_from_event, start_draft
from .page_events import PageEvents, event_data, upload_path
from .pictures import check_picture
from .results_view import describe_instance, pick_instance, result_files, result_strip
from .session import SessionState
from .views import empty_view, prompt_view


class ResultEvents(PageEvents):
    """Handlers of the targets column."""

    # ------------------------------------------------------------------ targets and results

    def targets_arrived(self, state: SessionState, files: Any) -> dict:
        paths = [p for p in (upload_path(f) for f in (files or [])) if p]
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
        paths = [p for p in (upload_path(f) for f in (files or [])) if p]
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
        data = event_data(evt)
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
