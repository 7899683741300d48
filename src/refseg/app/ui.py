"""The Gradio page: references on the left, targets and results on the right.

Needs ``pip install "refseg[app]"`` (gradio). All work is done by :mod:`refseg.app.session`;
this module only lays the page out and turns refseg errors into messages in the page.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import InvalidInputError, RefsegError
from ..memory import MemoryBank
from ..segmenter import Segmenter
from . import session as actions
from .session import SessionState, SharedModels

logger = logging.getLogger(__name__)

TITLE = "refseg: find objects from a few examples"
INTRO = """\
**1.** Type a class name, upload a reference image and mark one object: paint over it with the
brush, or type its box `x1, y1, x2, y2` in pixels (SAM2 then makes the mask). Add as many
references as you like, for one or more classes (on the same picture, only the strokes painted
since the last reference count). **2.** Upload target images and press **Run**.
The score slider filters what is shown without recomputing. Memory and results can be downloaded.
"""
REFERENCE_HEADERS = ["id", "class", "marked by", "file"]
# Events that run the shared models wait for each other, whichever session sent them.
MODELS: dict[str, Any] = {"concurrency_id": "models", "concurrency_limit": 1}


def _user_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """Show a refseg error as an error message in the page instead of failing the request."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except RefsegError as error:
            raise gr.Error(str(error), print_exception=False) from error

    return wrapper


def _forget_session(state: SessionState) -> None:
    """Delete a closed session's download folder."""
    if state is not None and state.workdir:
        shutil.rmtree(state.workdir, ignore_errors=True)


def _file_path(value: Any) -> str | None:
    """The local path of an uploaded file (gradio gives a str path or an object with .name)."""
    if value is None:
        return None
    return value if isinstance(value, str | os.PathLike) else getattr(value, "name", None)


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
        A ``gr.Blocks``; serve it with :func:`launch` or its own ``.launch()``.
    """
    models = SharedModels(segmenter)
    initial = SessionState()
    if memory is not None:
        initial.bank = memory if isinstance(memory, MemoryBank) else MemoryBank.load(memory)

    def reference_views(state: SessionState) -> tuple:
        names = state.bank.class_names if state.bank is not None else []
        return (
            state,
            actions.reference_gallery(state),
            actions.reference_rows(state),
            actions.memory_summary(state),
            gr.Dropdown(choices=names, value=names[0] if names else None),
        )

    @_user_errors
    def on_add(state: SessionState, class_name: str, editor: Any, box_text: str, progress=gr.Progress()):  # noqa: B008 (gradio injects it)
        image, painted = actions.editor_image_and_mask(editor)
        mask = actions.fresh_strokes(state, image, painted)
        box = actions.parse_box(box_text)
        if painted is not None and mask is None and box is None:
            raise InvalidInputError(
                "The strokes on this picture already marked the previous reference: paint the next "
                "object, or type its box."
            )
        if mask is not None and box is not None:
            gr.Warning("Both new brush strokes and a box were given: the strokes are used.")
        progress(0.1, desc="encoding the reference")
        actions.add_reference(models, state, class_name, image, mask=mask, box=box)
        actions.remember_strokes(state, image, painted)
        # The box just used is cleared. The editor is left alone: gradio's ImageEditor does not
        # reliably survive a value sent back from the server while the user works in it.
        return (*reference_views(state), "")

    @_user_errors
    def on_remove_class(state: SessionState, class_name: str):
        actions.remove_class(state, class_name)
        return reference_views(state)

    @_user_errors
    def on_remove_reference(state: SessionState, ref_id: float | None):
        actions.remove_reference(state, ref_id)
        return reference_views(state)

    @_user_errors
    def on_save(state: SessionState):
        return str(actions.save_memory(state))

    @_user_errors
    def on_load(state: SessionState, upload: Any):
        path = _file_path(upload)
        if path is None:
            return reference_views(state)
        actions.load_memory(models, state, path)
        gr.Info(f"Loaded {Path(path).name}: {len(state.bank)} reference(s).")
        return reference_views(state)

    @_user_errors
    def on_run(state: SessionState, uploads: Any, threshold: float, progress=gr.Progress()):  # noqa: B008 (gradio injects it)
        paths = [p for p in (_file_path(u) for u in (uploads or [])) if p]
        progress(0.0, desc="loading the models")
        models.base()

        def report(done: int, total: int, name: str) -> None:
            progress((done, total), desc=f"segmenting {name}", unit="images")

        problems = actions.run_targets(models, state, paths, progress=report)
        for problem in problems:
            gr.Warning(f"Skipped {problem}")
        gallery, files = actions.render_results(state, threshold)
        return state, gallery, files

    @_user_errors
    def on_picture(state: SessionState, progress=gr.Progress()):  # noqa: B008 (gradio injects it)
        progress(0.1, desc="encoding the references")
        return actions.session_memory_picture(models, state)

    def on_threshold(state: SessionState, threshold: float):
        gallery, files = actions.render_results(state, threshold)
        return gallery, files

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        state = gr.State(initial, delete_callback=_forget_session)
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Row():
            with gr.Column(scale=1):
                gr.Markdown("## References")
                class_name = gr.Textbox(label="Class name", placeholder="e.g. cat", elem_id="class-name")
                editor = gr.ImageEditor(
                    label="Reference image (paint the object with the brush)",
                    type="numpy",
                    format="png",
                    sources=["upload", "clipboard"],
                    transforms=(),
                    layers=False,
                    brush=gr.Brush(colors=["#ff3366"], color_mode="fixed"),
                    elem_id="reference-editor",
                )
                box_text = gr.Textbox(
                    label="…or its box x1, y1, x2, y2 (pixels)",
                    placeholder="e.g. 40, 30, 200, 180",
                    elem_id="reference-box",
                )
                add_button = gr.Button("Add reference", variant="primary", elem_id="add-reference")
                summary = gr.Markdown(actions.memory_summary(initial), elem_id="memory-summary")
                references = gr.Gallery(
                    value=actions.reference_gallery(initial),
                    label="References added in this session",
                    columns=5,
                    height=200,
                    object_fit="contain",
                    fit_columns=False,
                    allow_preview=False,
                    format="png",
                    elem_id="reference-gallery",
                )
                table = gr.Dataframe(
                    value=actions.reference_rows(initial) or None,
                    headers=REFERENCE_HEADERS,
                    label="All references in memory",
                    interactive=False,
                    elem_id="reference-table",
                )
                with gr.Row():
                    class_choice = gr.Dropdown(
                        choices=initial.bank.class_names if initial.bank else [], label="Class", scale=2
                    )
                    remove_class_button = gr.Button("Remove class", size="sm", scale=1)
                with gr.Row():
                    ref_id = gr.Number(label="Reference id", precision=0, scale=2)
                    remove_ref_button = gr.Button("Remove reference", size="sm", scale=1)
                with gr.Row():
                    memory_upload = gr.File(
                        label="Load a memory file", file_types=[".safetensors"], elem_id="memory-upload"
                    )
                    with gr.Column():
                        save_button = gr.Button("Save memory", elem_id="save-memory")
                        memory_file = gr.File(label="Memory file", interactive=False, elem_id="memory-file")
                with gr.Accordion("Memory picture: what the encoder sees in each reference", open=False):
                    picture_button = gr.Button("Draw the memory picture", size="sm", elem_id="draw-memory")
                    picture = gr.Image(
                        label="Per class: each reference's crop and the first 3 principal components of its "
                        "patch features as RGB (background dimmed)",
                        type="pil",
                        format="png",
                        interactive=False,
                        elem_id="memory-picture",
                    )
            with gr.Column(scale=1):
                gr.Markdown("## Targets")
                targets = gr.File(
                    label="Target images", file_count="multiple", file_types=["image"], elem_id="targets"
                )
                run_button = gr.Button("Run", variant="primary", elem_id="run")
                threshold = gr.Slider(
                    0.0,
                    1.0,
                    value=score_threshold,
                    step=0.01,
                    label="Minimum score shown",
                    elem_id="threshold",
                )
                overlays = gr.Gallery(
                    label="Results",
                    columns=2,
                    height=520,
                    object_fit="contain",
                    format="png",
                    elem_id="overlays",
                )
                result_files = gr.File(
                    label="COCO results (results.json) and image ids (results.json.images.json)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="result-files",
                )

        views = [state, references, table, summary, class_choice]
        add_button.click(on_add, [state, class_name, editor, box_text], [*views, box_text], **MODELS)
        remove_class_button.click(on_remove_class, [state, class_choice], views)
        remove_ref_button.click(on_remove_reference, [state, ref_id], views)
        save_button.click(on_save, [state], [memory_file])
        memory_upload.upload(on_load, [state, memory_upload], views)
        picture_button.click(on_picture, [state], [picture], **MODELS)
        run_button.click(on_run, [state, targets, threshold], [state, overlays, result_files], **MODELS)
        threshold.release(on_threshold, [state, threshold], [overlays, result_files])
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
        show_error=True,
    )
    logger.info("refseg app at %s", url)
    if block:
        demo.block_thread()
    return url
