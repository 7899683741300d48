"""refseg: training-free reference-based instance segmentation.

Show a few annotated examples of each class; refseg finds, segments and labels every
instance of those classes in new images (SAM2 proposals + DINOv2 semantic matching, the
method of "No time to train!", Espinosa et al. 2025).
"""

from __future__ import annotations

import os as _os

# 2 MiB transparent huge pages for large CPU tensors. torch reads this once, when it is first
# imported, so it applies when refseg is imported before torch (as by the CLI). With the malloc
# retention of models/malloc.py it kept the paper preset's peak RSS at 3.15 GiB instead of
# 4.9-6.4 GiB on CPU (docs/speed.md, measured before the lean encoder). A value the user
# already set wins.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"

from .errors import EncoderMismatchError, InvalidInputError, RefsegError, WeightsUnavailableError
from .instances import Instances
from .memory import MemoryBank
from .presets import FAST, PAPER, PRESETS, Preset, get_preset
from .segmenter import Segmenter

__all__ = [
    "FAST",
    "PAPER",
    "PRESETS",
    "EncoderMismatchError",
    "Instances",
    "InvalidInputError",
    "MemoryBank",
    "Preset",
    "RefsegError",
    "Segmenter",
    "WeightsUnavailableError",
    "__version__",
    "get_preset",
]
