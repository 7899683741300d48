"""Process settings of the in-process benchmark scripts (``bench_levers.py``,
``profile_stages.py``), applied on import, which must come before torch's: Hugging Face offline
and quiet, torch's 2 MiB huge pages (``THP_MEM_ALLOC_ENABLE``, read once when torch is
imported), and refseg importable from a source checkout when it is not installed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
try:
    import refseg  # noqa: F401
except ImportError:
    sys.path.insert(0, str(HERE.parent / "src"))
    import refseg  # noqa: F401
