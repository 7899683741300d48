"""What the web app does, without the web: shared models, per-session state and its actions.

Nothing here imports gradio, so every action is tested as a plain function. The models are
loaded once (:class:`SharedModels`) and shared by all sessions; each browser session has its
own :class:`SessionState`: its memory bank with what the page shows of it, the picture being
marked, and the last results. Marking lives in :mod:`refseg.app.draft`, the brush in
:mod:`refseg.app.brush`, what the page shows in the ``*_view`` modules.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.images import load_image
from ..errors import InvalidInputError
from ..instances import Instances
from ..masks import mask_to_rle
from ..memory import MemoryBank
from ..reference_features import reference_crop_box
from ..runner import box_convention_of
from ..segmenter import Segmenter
from ..viz import draw_reference, memory_picture
from .draft import Draft
from .pictures import Picture, display_name, jpeg_data_url, picture_from_pixels, resize_mask

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = 160
MEMORY_FILE = "memory.safetensors"


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

        A bank that holds references keeps its own context ratio and crop convention: references
        added in the page are cropped as the bank's earlier ones were (a loaded file may have
        another ratio or convention than the app's preset).

        Raises:
            EncoderMismatchError: the bank was built with another encoder.
        """
        base = self.base()
        settings = base.settings
        if bank is not None and len(bank) > 0:
            settings = settings.replace(context_ratio=bank.context_ratio, reference_crop=bank.reference_crop)
        return Segmenter(
            base.proposer, base.encoder, memory=bank, preset=settings, between_stages=base.between_stages
        )


@dataclass
class TargetResult:
    """One segmented target image.

    Attributes:
        picture: the target (pixels and the preview the page shows).
        instances: what was found, at the target's size.
        preview_masks: (N, h, w) bool, the instances' masks at the preview's size.
    """

    picture: Picture
    instances: Instances
    preview_masks: np.ndarray

    @property
    def name(self) -> str:
        return self.picture.name

    @property
    def image(self) -> np.ndarray:
        return self.picture.pixels


@dataclass
class Removal:
    """What "Undo removal" puts back: the memory as it was before the last removal."""

    what: str
    bank: MemoryBank
    thumbnails: dict[int, str]
    crops: dict[int, tuple[np.ndarray, np.ndarray]]
    version: int  # the memory version right after the removal: undo only while it is current


@dataclass
class SessionState:
    """Everything one browser session owns.

    Attributes:
        bank: the session's memory bank (None until the first reference or load).
        thumbnails: reference id -> context crop with the mask outlined, as a JPEG data URL
            (only for references added in this session: a loaded memory file holds features, not pictures).
        crops: reference id -> (image, mask) cut to the reference's context crop, enough to
            redo the bank's crop exactly for the memory picture.
        version: counts the changes of the memory; ``saved_version`` is the version the user
            has as a file (downloaded, or uploaded): the page warns before leaving otherwise.
        removal: what "Undo removal" restores (None: nothing to undo).
        picture: the reference picture being marked; ``drafts`` the objects being marked on
            it ("reference") and on a result ("result", the missed object).
        tab: how the picture is being marked ("click", "paint" or "mask"): the page only
            updates what is shown, so the other ways get the picture when their tab is chosen;
            ``editor_picture`` is the fingerprint of the picture the brush's editor holds.
        strokes: (picture fingerprint, painted mask) at the last reference added with the
            brush (see :func:`refseg.app.brush.fresh_strokes`).
        pair_mask: (file name, (H, W) mask) of a mask file uploaded for the picture.
        last_add: what the last add took (a brush or mask-file add sent twice adds once).
        results: the last run's targets; ``shown`` the one in the large view, ``selected`` the
            selected instance's index in it; ``result_categories`` class name -> category id
            at the time of that run, ``result_box_convention`` the COCO box convention of its
            settings (:attr:`refseg.presets.Preset.box_convention`).
        seqs: canvas name -> the last click the server handled (echoed to the page).
        workdir: folder for the files offered for download.
    """

    bank: MemoryBank | None = None
    thumbnails: dict[int, str] = field(default_factory=dict)
    crops: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    version: int = 0
    saved_version: int = 0
    removal: Removal | None = None
    picture: Picture | None = None
    tab: str = "click"
    editor_picture: str | None = None
    drafts: dict[str, Draft] = field(default_factory=dict)
    strokes: tuple[str, np.ndarray] | None = None
    pair_mask: tuple[str, np.ndarray] | None = None
    last_add: str | None = None
    results: list[TargetResult] = field(default_factory=list)
    result_categories: dict[str, int] = field(default_factory=dict)
    result_box_convention: str = "exclusive"
    shown: int = 0
    selected: int | None = None
    seqs: dict[str, int] = field(default_factory=dict)
    workdir: str | None = None

    def folder(self) -> Path:
        if self.workdir is None or not Path(self.workdir).is_dir():
            self.workdir = tempfile.mkdtemp(prefix="refseg-app-")
        return Path(self.workdir)

    @property
    def unsaved(self) -> bool:
        """The memory holds references the user has no file of."""
        return self.bank is not None and len(self.bank) > 0 and self.version != self.saved_version

    def changed(self) -> None:
        """Record a change of the memory (any undo of an earlier removal is now stale)."""
        self.version += 1


# --------------------------------------------------------------------------- references


def add_reference(
    models: SharedModels,
    state: SessionState,
    class_name: str | None,
    image: np.ndarray,
    mask: np.ndarray,
    *,
    source: dict[str, Any],
    negative: bool = False,
) -> int:
    """Add one marked object to the session's bank.

    Args:
        class_name: its class; None only for a negative example of no class (background).
        image: (H, W, 3) uint8 picture.
        mask: (H, W) bool, the object (the page makes it: SAM2 from prompts, the brush, a file).
        source: how it was marked (``prompt``, ``file``, points, box...), kept in the memory
            file; the mask is added to it as RLE, so the memory file can be pictured later.
        negative: a "not this class" example (or background, without a class).

    Returns:
        The new reference id.

    Raises:
        InvalidInputError: no class name for a positive example, or an unusable mask.
    """
    name = class_name.strip() if class_name else None
    if not name and not negative:
        raise InvalidInputError("Type a class name first.")
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise InvalidInputError("The mask is empty: mark the object first.")
    segmenter = models.segmenter_for(state.bank)
    provenance = {**source, "mask": mask_to_rle(mask)}
    ref_id = segmenter.add_reference(image, name, mask=mask, negative=negative, source=provenance)
    state.bank = segmenter.memory
    ratio = state.bank.context_ratio
    x0, y0, x1, y1 = reference_crop_box(mask, ratio, None, state.bank.reference_crop)
    state.crops[ref_id] = (image[y0:y1, x0:x1].copy(), mask[y0:y1, x0:x1].copy())
    thumbnail = draw_reference(
        image,
        mask,
        class_name=name,
        size=THUMBNAIL_SIZE,
        context_ratio=ratio,
        reference_crop=state.bank.reference_crop,
    )
    state.thumbnails[ref_id] = jpeg_data_url(np.asarray(thumbnail), quality=85)
    state.changed()
    logger.info("added reference %d (%s%s)", ref_id, name, ", negative" if negative else "")
    return ref_id


def _remember_for_undo(state: SessionState, what: str) -> None:
    assert state.bank is not None
    state.removal = Removal(what, copy.deepcopy(state.bank), dict(state.thumbnails), dict(state.crops), -1)


def _removed(state: SessionState) -> None:
    kept = {r.ref_id for r in state.bank.references} if state.bank is not None else set()
    state.thumbnails = {i: t for i, t in state.thumbnails.items() if i in kept}
    state.crops = {i: c for i, c in state.crops.items() if i in kept}
    state.changed()
    if state.removal is not None:
        state.removal.version = state.version


def remove_reference(state: SessionState, ref_id: int) -> str:
    """Remove one reference (by id) from the session's bank; returns what was removed, in words."""
    if state.bank is None:
        raise InvalidInputError("The memory is empty: there is nothing to remove.")
    record = next((r for r in state.bank.references if r.ref_id == int(ref_id)), None)
    if record is None:
        raise InvalidInputError("That reference is no longer in memory; the list is now up to date.")
    what = f"reference #{record.ref_id} ({record.class_name or 'background'})"
    _remember_for_undo(state, what)
    state.bank.remove_reference(int(ref_id))
    _removed(state)
    return what


def remove_class(state: SessionState, class_name: str | None) -> str:
    """Remove a class and its references from the session's bank; returns what, in words."""
    if state.bank is None or not class_name:
        raise InvalidInputError("Choose a class to remove.")
    if class_name not in state.bank.class_names:
        raise InvalidInputError(f"There is no class {class_name!r} in memory.")
    _remember_for_undo(state, f"class {class_name}")
    state.bank.remove_class(class_name)
    _removed(state)
    return f"class {class_name}"


def undo_removal(state: SessionState) -> str:
    """Put back what the last removal took, if the memory did not change since.

    Raises:
        InvalidInputError: nothing to undo, or the memory changed after the removal.
    """
    removal = state.removal
    if removal is None:
        raise InvalidInputError("There is no removal to undo.")
    state.removal = None
    if removal.version != state.version:
        raise InvalidInputError(f"The memory changed after {removal.what} was removed: remove again instead.")
    state.bank, state.thumbnails, state.crops = removal.bank, removal.thumbnails, removal.crops
    state.changed()
    return removal.what


def memory_file(state: SessionState) -> Path | None:
    """The memory as a file matching the current memory (written on first ask), or None if empty.

    Each version gets its own folder, so a link to an older file never serves newer contents
    and the file the user downloads is always named ``memory.safetensors``.
    """
    if state.bank is None or len(state.bank) == 0:
        return None
    root = state.folder()
    path = root / f"memory-v{state.version}" / MEMORY_FILE
    if not path.is_file():
        for old in root.glob("memory-v*"):
            shutil.rmtree(old, ignore_errors=True)
        state.bank.save(path)
    return path


def save_memory(state: SessionState) -> Path:
    """The memory file (see :func:`memory_file`), counted as saved by the user."""
    path = memory_file(state)
    if path is None:
        raise InvalidInputError("The memory is empty: add a reference before saving.")
    state.saved_version = state.version
    return path


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
    state.removal = None
    state.changed()
    state.saved_version = state.version  # the user has this file


# --------------------------------------------------------------------------- runs


def run_targets(
    models: SharedModels, state: SessionState, paths: Sequence[str | os.PathLike]
) -> Generator[tuple[int, int, str], None, list[str]]:
    """Segment every target image; keeps the results in the state.

    A generator, so the page can say which picture is being segmented: it yields
    ``(done, total, name)`` before each picture and returns one message per file that could
    not be read (those files are skipped)::

        problems = yield from run_targets(models, state, paths)

    Args:
        paths: the uploaded image files.

    Raises:
        InvalidInputError: no image given, or the memory is empty (before the first yield).
    """
    if not paths:
        raise InvalidInputError("Upload one or more target images first.")
    if state.bank is None or len(state.bank) == 0:
        raise InvalidInputError("The memory is empty: add references (or load a memory file) before running.")
    segmenter = models.segmenter_for(state.bank)
    problems: list[str] = []
    results: list[TargetResult] = []
    for done, path in enumerate(paths):
        name = display_name(path)
        yield done, len(paths), name
        try:
            image = load_image(path)
        except InvalidInputError:
            problems.append(f"{name}: not a picture this page can read")
            logger.warning("skipped %s: unreadable", name)
            continue
        instances = segmenter.predict(image)
        picture = picture_from_pixels(image, name)
        small = np.zeros((len(instances), *picture.preview.shape[:2]), dtype=bool)
        for i, instance_mask in enumerate(instances.masks):
            small[i] = resize_mask(instance_mask, small.shape[1:])
        results.append(TargetResult(picture, instances, small))
    state.results = results
    state.result_categories = state.bank.category_ids
    state.result_box_convention = box_convention_of(segmenter)
    state.shown, state.selected = 0, None
    state.drafts.pop("result", None)
    return problems


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
        (*state.crops[r.ref_id], r.class_name, r.negative)
        for r in state.bank.references
        if r.ref_id in state.crops
    ]
    return memory_picture(
        segmenter.encoder,
        references,
        context_ratio=state.bank.context_ratio,
        tile_size=tile_size,
        reference_crop=state.bank.reference_crop,
    )
