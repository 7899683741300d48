"""The Gradio page: its layout (here) and its events (:mod:`refseg.app.events`).

Needs ``pip install "refseg[app]"`` (gradio). The work is done without gradio in
:mod:`refseg.app.session` and the modules beside it; the page has one message area where
every event says what happened, what went wrong, or which step is running.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..memory import MemoryBank
from ..segmenter import Segmenter
from .canvas import PAGE_CSS, message_area, picture_canvas, reference_list
from .events import wire
from .references_view import references_value
from .session import SessionState, SharedModels, memory_file
from .views import empty_view, message_html

logger = logging.getLogger(__name__)

TITLE = "refseg: find objects from a few examples"
INTRO = """\
**1. References.** Upload a picture, type the object's class, then mark the object: click it
(shift/alt+click marks what is *not* the object), or drag a box; SAM2's mask follows each click.
**Accept** adds it. You can also paint it, or upload its mask file. **2. Targets.** Upload
pictures and press **Run**. Click a found object to correct it: *Not …* and *Background* add it as
a negative example, *Missed something* lets you mark an object refseg did not find.
"""


@dataclass
class Page:
    """The page's components, for the events to name as inputs and outputs."""

    state: gr.State
    message: gr.HTML
    reference_upload: gr.File
    class_name: gr.Textbox
    click_tab: gr.Tab
    paint_tab: gr.Tab
    mask_tab: gr.Tab
    reference_canvas: gr.HTML
    undo: gr.Button
    clear: gr.Button
    accept: gr.Button
    editor: gr.ImageEditor
    add_painted: gr.Button
    mask_upload: gr.File
    mask_canvas: gr.HTML
    add_masked: gr.Button
    references: gr.HTML
    undo_removal: gr.Button
    class_choice: gr.Dropdown
    remove_class: gr.Button
    download: gr.DownloadButton
    memory_upload: gr.File
    picture_button: gr.Button
    memory_picture: gr.Image
    targets: gr.File
    run: gr.Button
    threshold: gr.Slider
    result_canvas: gr.HTML
    correction_row: gr.Row
    not_class: gr.Button
    background: gr.Button
    missed: gr.Button
    missed_row: gr.Row
    missed_class: gr.Dropdown
    missed_undo: gr.Button
    missed_accept: gr.Button
    missed_cancel: gr.Button
    strip: gr.Gallery
    result_files: gr.File

    def memory_outputs(self) -> list[Any]:
        """What shows the memory: the list, the download, undo, and the class choices."""
        return [self.references, self.download, self.undo_removal, self.class_choice, self.missed_class]


def _forget_session(state: SessionState) -> None:
    """Delete a closed session's download folder."""
    if state is not None and state.workdir:
        shutil.rmtree(state.workdir, ignore_errors=True)


def _layout(initial: SessionState, score_threshold: float) -> Page:
    names = initial.bank.class_names if initial.bank is not None else []
    state = gr.State(initial, delete_callback=_forget_session)
    gr.Markdown(f"# {TITLE}\n{INTRO}")
    message = message_area(message_html("Upload a reference picture to start."))
    with gr.Row():
        with gr.Column(scale=1, elem_id="references-column"):
            gr.Markdown("## 1. References")
            reference_upload = gr.File(
                label="Reference picture (JPEG, PNG, WebP, BMP, TIFF)",
                file_count="single",
                height=100,
                elem_id="reference-upload",
            )
            class_name = gr.Textbox(label="Class name", placeholder="e.g. cat", elem_id="class-name")
            with gr.Tabs():
                with gr.Tab("Click or drag", id="click") as click_tab:
                    reference_canvas = picture_canvas(
                        "reference-canvas", empty_view("Upload a picture to start.")
                    )
                    with gr.Row():
                        undo = gr.Button("Undo", size="sm", elem_id="undo")
                        clear = gr.Button("Clear", size="sm", elem_id="clear")
                        accept = gr.Button("Accept", variant="primary", interactive=False, elem_id="accept")
                with gr.Tab("Paint", id="paint") as paint_tab:
                    editor = gr.ImageEditor(
                        label="Paint over the object",
                        type="numpy",
                        format="png",
                        sources=(),
                        transforms=(),
                        layers=False,
                        brush=gr.Brush(colors=["#ff3366"], color_mode="fixed"),
                        elem_id="reference-editor",
                    )
                    add_painted = gr.Button("Add painted reference", variant="primary", elem_id="add-painted")
                with gr.Tab("Image + mask file", id="mask") as mask_tab:
                    mask_upload = gr.File(
                        label="Its mask (same size; the object's pixels non-zero)",
                        height=100,
                        elem_id="mask-upload",
                    )
                    mask_canvas = picture_canvas(
                        "mask-canvas", empty_view("Upload the picture above, then its mask.")
                    )
                    add_masked = gr.Button(
                        "Add with this mask", variant="primary", interactive=False, elem_id="add-masked"
                    )
            references = reference_list("references", references_value(initial))
            undo_removal = gr.Button("Undo removal", size="sm", visible=False, elem_id="undo-removal")
            with gr.Row():
                class_choice = gr.Dropdown(
                    choices=names,
                    value=names[0] if names else None,
                    label="Class",
                    scale=2,
                    elem_id="class-choice",
                )
                remove_class = gr.Button("Remove class", size="sm", scale=1, elem_id="remove-class")
            with gr.Row():
                download = gr.DownloadButton(
                    "Download memory",
                    value=memory_file(initial),
                    interactive=bool(names),
                    size="md",
                    elem_id="download-memory",
                )
                memory_upload = gr.File(
                    label="Load a memory file (.safetensors)", height=100, elem_id="memory-upload"
                )
            with gr.Accordion("Memory picture: what the encoder sees in each reference", open=False):
                picture_button = gr.Button("Draw the memory picture", size="sm", elem_id="draw-memory")
                memory_picture = gr.Image(
                    label="Per class: each reference's crop and the first 3 principal components of its "
                    "patch features as RGB (background dimmed)",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="memory-picture",
                )
        with gr.Column(scale=1, elem_id="targets-column"):
            gr.Markdown("## 2. Targets")
            targets = gr.File(label="Target pictures", file_count="multiple", height=120, elem_id="targets")
            run = gr.Button("Run", variant="primary", elem_id="run")
            threshold = gr.Slider(
                0.0, 1.0, value=score_threshold, step=0.01, label="Minimum score shown", elem_id="threshold"
            )
            result_canvas = picture_canvas("result-canvas", empty_view("Run to see the results here."))
            with gr.Row() as correction_row:
                not_class = gr.Button("Not …", size="sm", interactive=False, elem_id="not-class")
                background = gr.Button("Background", size="sm", interactive=False, elem_id="background")
                missed = gr.Button("Missed something", size="sm", interactive=False, elem_id="missed")
            with gr.Row(visible=False) as missed_row:
                missed_class = gr.Dropdown(
                    choices=names, label="Class of the missed object", allow_custom_value=True, scale=2,
                    elem_id="missed-class",
                )  # fmt: skip
                missed_undo = gr.Button("Undo", size="sm", elem_id="missed-undo")
                missed_accept = gr.Button(
                    "Add", variant="primary", interactive=False, elem_id="missed-accept"
                )
                missed_cancel = gr.Button("Cancel", size="sm", elem_id="missed-cancel")
            strip = gr.Gallery(
                label="All results (click one to show it above)",
                columns=6,
                height=170,
                object_fit="contain",
                allow_preview=False,
                fit_columns=False,
                interactive=False,
                format="jpeg",
                elem_id="result-strip",
            )
            result_files = gr.File(
                label="COCO results (results.json) and image ids (results.json.images.json)",
                file_count="multiple",
                interactive=False,
                elem_id="result-files",
            )
    return Page(**{name: value for name, value in locals().items() if name in Page.__dataclass_fields__})


def build_app(
    segmenter: Segmenter | Callable[[], Segmenter],
    *,
    memory: MemoryBank | str | os.PathLike | None = None,
    score_threshold: float = 0.3,
) -> gr.Blocks:
    """The web app.

    Args:
        segmenter: the segmenter whose models every session shares, or a function that makes
            it (called once, on first use).
        memory: a memory bank (or memory file) every new session starts from; each session
            then edits its own copy.
        score_threshold: initial position of the score slider.

    Returns:
        A ``gr.Blocks``; serve it with :func:`launch` (which sets what the page needs).
    """
    models = SharedModels(segmenter)
    initial = SessionState()
    if memory is not None:
        initial.bank = memory if isinstance(memory, MemoryBank) else MemoryBank.load(memory)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        page = _layout(initial, score_threshold)
        wire(page, models)
    return demo


def launch(
    segmenter: Segmenter | Callable[[], Segmenter] | gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    memory: MemoryBank | str | os.PathLike | None = None,
    block: bool = True,
    quiet: bool = False,
) -> str:
    """Serve the app (builds it first unless given a ``gr.Blocks``).

    Args:
        host: address to listen on (127.0.0.1: this machine only; 0.0.0.0: the network).
        port: TCP port; None picks a free one.
        block: wait until interrupted (the CLI) or return at once (tests, notebooks).

    Returns:
        The local URL of the page.
    """
    demo = segmenter if isinstance(segmenter, gr.Blocks) else build_app(segmenter, memory=memory)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        share=False,
        quiet=quiet,
        css=PAGE_CSS,
        # Gradio 6 keeps every call's inputs and outputs for its "runs" page by default: each
        # click gets slower as they pile up, and the user's pictures are kept there. Off.
        run_history=False,
    )
    logger.info("refseg app at %s", url)
    if block:
        demo.block_thread()
    return url
