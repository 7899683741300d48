"""The refseg web app (``pip install "refseg[app]"``; ``refseg app`` starts it).

``build_app(segmenter)`` returns a ``gr.Blocks``; ``launch(segmenter, host=..., port=...)``
serves it. Models are shared by all browser sessions; each session keeps its own memory bank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import RefsegError

if TYPE_CHECKING:  # pragma: no cover
    from .ui import build_app, launch

__all__ = ["build_app", "launch"]


def _ui() -> Any:
    try:
        from . import ui
    except ImportError as error:
        if error.name is not None and error.name.split(".")[0] == "gradio":
            raise RefsegError('The web app needs gradio: pip install "refseg[app]"') from error
        raise
    return ui


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(_ui(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
