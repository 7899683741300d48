"""A proposer loaded on first use, so that work which never prompts SAM2 never loads it.

Building a memory from masks (``refseg memory --folder``, a COCO json whose references all have
a segmentation) needs DINOv2 only; SAM2 is needed for a reference given by its box and for
prediction. :func:`refseg.models.loading.load_proposer` with ``lazy=True`` checks the
checkpoint at once (its config: a wrong id, a missing folder or a foreign model type are
reported before any work) and loads the weights when the proposer is first used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .base import Proposer


class LazyProposer:
    """Stands for the proposer ``load()`` returns, and calls ``load`` on first use.

    Any attribute other than :attr:`name` and :attr:`loaded` (``image_size``, ``embed``,
    ``decode_points``...) loads the proposer once (thread-safe: sessions of the web app share
    it) and is read from it.

    Args:
        load: returns the proposer; its errors (``WeightsUnavailableError``) surface at first use.
        name: the checkpoint's name, known without loading.
    """

    def __init__(self, load: Callable[[], Proposer], name: str = "") -> None:
        self._load = load
        self._proposer: Proposer | None = None
        self._lock = threading.Lock()
        self.name = name

    @property
    def loaded(self) -> bool:
        """Whether the proposer has been loaded."""
        return self._proposer is not None

    def get(self) -> Proposer:
        """The proposer, loaded now if it was not yet."""
        if self._proposer is None:
            with self._lock:
                if self._proposer is None:
                    self._proposer = self._load()
        return self._proposer

    def __getattr__(self, attribute: str) -> Any:  # only for what the instance itself lacks
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self.get(), attribute)

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "not loaded yet"
        return f"LazyProposer({self.name!r}, {state})"
