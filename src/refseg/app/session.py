"""What the web app does, without the web: shared models, per-session state and its actions.

Nothing here imports gradio, so every action is tested as a plain function. The models are
loaded once (:class:`SharedModels`) and shared by all sessions; each browser session has its
own :class:`SessionState` (its memory bank, reference thumbnails and last results).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.images import load_image
from ..errors import InvalidInputError
from ..instances import Instances
from ..masks import mask_box_exclusive, mask_to_rle
from ..memory import MemoryBank, context_crop_box
from ..results import write_results
from ..segmenter import Segmenter
from ..viz import draw_instances, draw_reference, memory_picture

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = 160
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"


class SharedModels:
    """The models every session uses, created once, on first use.

    Args:
        source: a ready :class:`Segmenter`, or a zero-argument function returning one (called
            at most once, under a lock, so the page can come up before the models load).
    """

    def __init__(self, source: Segmenter | Callable[[], Segmenter]) -> None:
        self._source = source
        self._segmenter = source if isinstance(source, Segmenter) else None
        self._lock = threading.Lock()

    def base(self) -> Segmenter:
        """The shared segmenter (its own memory bank is not used by sessions)."""
        if self._segmenter is None:
            with self._lock:
                if self._segmenter is None:
                    logger.info("loading the models")
                    self._segmenter = self._source()  # type: ignore[operator]
        return self._segmenter

    def segmenter_for(self, bank: MemoryBank | None) -> Segmenter:
        """A segmenter with the shared models and a session's memory bank (an empty one if None).

        A bank that holds references keeps its own context ratio: references added in the page
        are cropped as the bank's earlier ones were (a loaded file may have another ratio than
        the app's preset).

        Raises:
            EncoderMismatchError: the bank was built with another encoder.
        """
        base = self.base()
        settings = base.settings
        if bank is not None and len(bank) > 0:
            settings = settings.replace(context_ratio=bank.context_ratio)
        return Segmenter(
            base.proposer, base.encoder, memory=bank, preset=settings, between_stages=base.between_stages
        )


@dataclass
class TargetResult:
    """One segmented target image."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    instances: Instances


@dataclass
class SessionState:
    """Everything one browser session owns.

    Attributes:
        bank: the session's memory bank (None until the first reference or load).
        thumbnails: reference id -> context crop with the mask outlined (only for references
            added in this session: a loaded memory file holds features, not pictures).
        crops: reference id -> (image, mask) cut to the reference's context crop, enough to
            redo the bank's crop exactly for the memory picture.
        strokes: (picture fingerprint, painted mask) at the last reference added with the
            brush. The editor keeps earlier strokes on the canvas, so only strokes painted since
            then mark the next object (see :func:`fresh_strokes`).
        results: the last run's targets, kept so the score slider redraws without recomputing.
        result_categories: class name -> category id at the time of that run.
        workdir: folder for the files offered for download.
    """

    bank: MemoryBank | None = None
    thumbnails: dict[int, Image.Image] = field(default_factory=dict)
    crops: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    strokes: tuple[str, np.ndarray] | None = None
    results: list[TargetResult] = field(default_factory=list)
    result_categories: dict[str, int] = field(default_factory=dict)
    workdir: str | None = None

    def folder(self) -> Path:
        if self.workdir is None or not Path(self.workdir).is_dir():
            self.workdir = tempfile.mkdtemp(prefix="refseg-app-")
        return Path(self.workdir)


# --------------------------------------------------------------------------- inputs


def parse_box(text: str | None) -> list[float] | None:
    """A box typed as "x1, y1, x2, y2" (commas, spaces or brackets); None for an empty text.

    Raises:
        InvalidInputError: not four numbers, or x2 <= x1 or y2 <= y1.
    """
    if text is None or not text.strip():
        return None
    numbers = re.findall(_NUMBER, text)
    leftover = re.sub(_NUMBER, "", text)
    if len(numbers) != 4 or re.search(r"[^\s,;()\[\]]", leftover):
        raise InvalidInputError(f"Type the box as four numbers x1, y1, x2, y2 in pixels; got {text!r}.")
    x1, y1, x2, y2 = (float(n) for n in numbers)
    if x2 <= x1 or y2 <= y1:
        raise InvalidInputError(f"The box {text!r} is empty: x2 must exceed x1 and y2 must exceed y1.")
    return [x1, y1, x2, y2]


def editor_image_and_mask(value: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The reference image and the painted mask from an image-editor value.

    Args:
        value: ``{"background": (H, W, 3|4), "layers": [(H, W, 4), ...], "composite": ...}`` as
            gradio's ImageEditor gives it (numpy), or a plain image.

    Returns:
        image: (H, W, 3) uint8.
        mask: (H, W) bool union of the painted strokes (alpha > 0), or None if nothing is painted.

    Raises:
        InvalidInputError: no image was uploaded.
    """
    if isinstance(value, dict):
        background = value.get("background")
        if background is None:
            background = value.get("composite")
        layers = value.get("layers") or []
    else:
        background, layers = value, []
    if background is None or (isinstance(background, np.ndarray) and background.size == 0):
        raise InvalidInputError("Upload a reference image first.")
    array = np.asarray(background)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]  # the uploaded picture itself, not composited on black
    image = load_image(array)
    height, width = image.shape[:2]
    mask = np.zeros((height, width), dtype=bool)
    for layer in layers:
        if layer is None:
            continue
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] != 4:
            continue
        if layer.shape[:2] != (height, width):
            resized = Image.fromarray(layer[..., 3]).resize((width, height), Image.Resampling.NEAREST)
            mask |= np.asarray(resized) > 0
        else:
            mask |= layer[..., 3] > 0
    return image, (mask if mask.any() else None)


def _fingerprint(image: np.ndarray) -> str:
    return hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + str(image.shape)


def fresh_strokes(state: SessionState, image: np.ndarray, painted: np.ndarray | None) -> np.ndarray | None:
    """The strokes painted since the last brush reference on this same picture.

    Strokes stay on the editor's canvas after "Add reference"; without this, the next object
    painted on the same picture would be merged with the previous one.

    Args:
        image: (H, W, 3) uint8 picture in the editor.
        painted: (H, W) bool everything painted on it, or None.

    Returns:
        (H, W) bool new strokes, or None when nothing new was painted (a typed box then counts).
    """
    if painted is None:
        return None
    if state.strokes is None or state.strokes[0] != _fingerprint(image):
        return painted
    fresh = painted & ~state.strokes[1]
    return fresh if fresh.any() else None


def remember_strokes(state: SessionState, image: np.ndarray, painted: np.ndarray | None) -> None:
    """Record what is painted on ``image`` once a reference was added from it."""
    if painted is not None:
        state.strokes = (_fingerprint(image), painted.copy())


# --------------------------------------------------------------------------- actions


def add_reference(
    models: SharedModels,
    state: SessionState,
    class_name: str | None,
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    box: Sequence[float] | None = None,
    file_name: str | None = None,
) -> int:
    """Add one reference to the session's bank; a box is turned into a mask by SAM2.

    The mask (as RLE) and the box are kept in the reference's source, so the memory file can
    be pictured later (``refseg memory show``).

    Returns:
        The new reference id.

    Raises:
        InvalidInputError: no class name, neither mask nor box, or an unusable mask/box.
    """
    if not class_name or not class_name.strip():
        raise InvalidInputError("Type a class name first.")
    if mask is None and box is None:
        raise InvalidInputError(
            "Mark the object: paint over it with the brush, or type its box x1, y1, x2, y2."
        )
    segmenter = models.segmenter_for(state.bank)
    instance_mask = segmenter.reference_mask(image, mask=mask, box=None if mask is not None else box)
    source: dict[str, Any] = {
        "prompt": "mask" if mask is not None else "box",
        "mask": mask_to_rle(instance_mask),
    }
    if mask is None and box is not None:
        source["box"] = [float(v) for v in box]
    if file_name:
        source["file"] = file_name
    ref_id = segmenter.add_reference(image, class_name.strip(), mask=instance_mask, source=source)
    state.bank = segmenter.memory
    ratio = segmenter.memory.context_ratio
    x0, y0, x1, y1 = context_crop_box(mask_box_exclusive(instance_mask), instance_mask.shape, ratio)
    state.crops[ref_id] = (image[y0:y1, x0:x1].copy(), instance_mask[y0:y1, x0:x1].copy())
    state.thumbnails[ref_id] = draw_reference(
        image, instance_mask, class_name=class_name.strip(), size=THUMBNAIL_SIZE, context_ratio=ratio
    )
    logger.info("added reference %d (%s)", ref_id, class_name)
    return ref_id


def remove_class(state: SessionState, class_name: str | None) -> None:
    """Remove a class and its references from the session's bank."""
    if state.bank is None or not class_name:
        raise InvalidInputError("Choose a class to remove.")
    kept = {r.ref_id for r in state.bank.references if r.class_name != class_name}
    state.bank.remove_class(class_name)
    state.thumbnails = {i: t for i, t in state.thumbnails.items() if i in kept}
    state.crops = {i: c for i, c in state.crops.items() if i in kept}


def remove_reference(state: SessionState, ref_id: float | int | None) -> None:
    """Remove one reference (by id) from the session's bank."""
    if state.bank is None or ref_id is None:
        raise InvalidInputError("Type the id of the reference to remove (see the table).")
    state.bank.remove_reference(int(ref_id))
    state.thumbnails.pop(int(ref_id), None)
    state.crops.pop(int(ref_id), None)


def save_memory(state: SessionState) -> Path:
    """Write the session's bank to ``memory.safetensors`` in its folder; returns the path."""
    if state.bank is None or len(state.bank) == 0:
        raise InvalidInputError("The memory is empty: add a reference before saving.")
    return state.bank.save(state.folder() / "memory.safetensors")


def load_memory(models: SharedModels, state: SessionState, path: str | os.PathLike) -> None:
    """Replace the session's bank by a memory file (checked against the shared encoder).

    Raises:
        InvalidInputError: not a memory file; EncoderMismatchError: built with another encoder.
    """
    bank = MemoryBank.load(path)
    models.segmenter_for(bank)  # raises EncoderMismatchError before anything changes
    state.bank = bank
    state.thumbnails = {}
    state.crops = {}


def run_targets(
    models: SharedModels,
    state: SessionState,
    paths: Sequence[str | os.PathLike],
    *,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[str]:
    """Segment every target image; keeps the results in the state.

    Args:
        paths: the uploaded image files.
        progress: called as ``progress(done, total, name)`` before each image.

    Returns:
        One message per file that could not be read (those files are skipped).

    Raises:
        InvalidInputError: no image given, or the memory is empty.
    """
    if not paths:
        raise InvalidInputError("Upload one or more target images first.")
    if state.bank is None or len(state.bank) == 0:
        raise InvalidInputError("The memory is empty: add references (or load a memory file) before running.")
    segmenter = models.segmenter_for(state.bank)
    problems: list[str] = []
    results: list[TargetResult] = []
    for done, path in enumerate(paths):
        name = Path(path).name
        if progress is not None:
            progress(done, len(paths), name)
        try:
            image = load_image(path)
        except InvalidInputError as error:
            problems.append(f"{name}: {error}")
            logger.warning("skipped %s: %s", name, error)
            continue
        results.append(TargetResult(name, image, segmenter.predict(image)))
    state.results = results
    state.result_categories = state.bank.category_ids
    return problems


def render_results(
    state: SessionState, score_threshold: float
) -> tuple[list[tuple[Image.Image, str]], list[str]]:
    """Overlays and result files for the kept results, at a score threshold (no recomputing).

    Returns:
        gallery: (overlay, caption) per target.
        files: ``results.json`` (COCO results: image_id, category_id, bbox, score, segmentation)
            and ``results.json.images.json`` (image id -> file name, categories), as ``refseg predict``
            writes them;
            empty when there are no results.
    """
    if not state.results:
        return [], []
    category_ids = state.result_categories  # the run's: classes may have been removed since
    gallery, coco, images = [], [], []
    for image_id, result in enumerate(state.results, start=1):
        shown = result.instances.filter(score_threshold)
        gallery.append(
            (draw_instances(result.image, shown), f"{image_id}: {result.name} ({len(shown)} instances)")
        )
        coco.extend(shown.to_coco(image_id, category_ids))
        height, width = result.image.shape[:2]
        images.append({"id": image_id, "file_name": result.name, "height": height, "width": width})
    files = write_results(state.folder() / "results.json", coco, images, category_ids)
    return gallery, [str(files.results), str(files.images)]


def session_memory_picture(models: SharedModels, state: SessionState, *, tile_size: int = 112) -> Image.Image:
    """The memory picture (:func:`refseg.viz.memory_picture`) of the references added in this session.

    Raises:
        InvalidInputError: no reference of this session has its picture (e.g. a loaded file).
    """
    if state.bank is None or not state.crops:
        raise InvalidInputError(
            "No reference pictures in this session (a loaded memory file holds features only): add references "
            "here, or use `refseg memory show` with the reference images."
        )
    segmenter = models.segmenter_for(state.bank)
    references = [
        (*state.crops[r.ref_id], r.class_name) for r in state.bank.references if r.ref_id in state.crops
    ]
    return memory_picture(
        segmenter.encoder, references, context_ratio=state.bank.context_ratio, tile_size=tile_size
    )


# --------------------------------------------------------------------------- views


def reference_rows(state: SessionState) -> list[list[Any]]:
    """One table row per reference: id, class, how it was marked, file name."""
    if state.bank is None:
        return []
    return [
        [r.ref_id, r.class_name, r.source.get("prompt", ""), r.source.get("file", "")]
        for r in state.bank.references
    ]


def reference_gallery(state: SessionState) -> list[tuple[Image.Image, str]]:
    """(thumbnail, "class #id") for the references added in this session, in bank order."""
    if state.bank is None:
        return []
    return [
        (state.thumbnails[r.ref_id], f"{r.class_name} #{r.ref_id}")
        for r in state.bank.references
        if r.ref_id in state.thumbnails
    ]


def memory_summary(state: SessionState) -> str:
    """A one-line Markdown summary of the bank: classes and reference counts."""
    if state.bank is None or len(state.bank) == 0:
        return "Memory: empty. Add a reference to start."
    counts = ", ".join(f"**{name}** {count}" for name, count in state.bank.counts().items())
    return f"Memory: {len(state.bank)} reference(s) in {len(state.bank.class_names)} class(es): {counts}"
