"""Process policy at the edge: importing refseg sets nothing; the program chooses huge pages and
malloc retention (refseg.runtime); the segmenter only calls the hook it is given."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from synthetic import SyntheticEncoder, SyntheticProposer, make_scene

import refseg.runtime as malloc_tuning
from refseg import Segmenter


def _fresh_python(code: str, **environment: str) -> str:
    """stdout of ``code`` in a new interpreter (no THP_MEM_ALLOC_ENABLE unless given)."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env.update(environment)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_refseg_changes_nothing_and_imports_no_torch():
    code = (
        "import os, sys; before = dict(os.environ); import refseg; "
        "print(dict(os.environ) == before, 'torch' in sys.modules, 'transformers' in sys.modules, "
        "refseg.Segmenter.__name__)"
    )
    assert _fresh_python(code) == "True False False Segmenter"


def test_huge_pages_are_asked_for_only_before_torch_and_never_over_the_users_choice():
    code = (
        "import os; from refseg import runtime; print(runtime.prefer_huge_pages(), "
        "os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    )
    assert _fresh_python(code) == "True 1"
    assert _fresh_python(code, THP_MEM_ALLOC_ENABLE="0") == "False 0"
    late = "import os, torch; from refseg import runtime; print(runtime.prefer_huge_pages(), 'THP_MEM_ALLOC_ENABLE' in os.environ)"
    assert _fresh_python(late) == "False False"


def test_the_refseg_command_sets_huge_pages_before_torch_is_imported():
    code = """
import builtins, os, sys
seen = []
real_import = builtins.__import__

def spy(name, *args, **kwargs):
    if name == "torch" and "torch" not in sys.modules and not seen:
        seen.append(os.environ.get("THP_MEM_ALLOC_ENABLE"))
    return real_import(name, *args, **kwargs)

builtins.__import__ = spy
sys.argv = ["refseg", "--version"]
from refseg.__main__ import main
try:
    main()
except SystemExit:
    pass
print(seen)
"""
    assert _fresh_python(code).splitlines()[-1] == "['1']"


def test_predict_calls_the_between_stages_hook_and_nothing_else():
    calls = []
    seg = Segmenter(SyntheticProposer(), SyntheticEncoder(), between_stages=lambda: calls.append(1))
    scene = make_scene(3, classes=("red",), per_class=1)
    seg.add_reference(scene.image, "red", mask=scene.masks[0])
    assert calls == []
    seg.predict(scene.image)
    assert calls == [1, 1, 1]  # after SAM2's encoder, after its decoder, after matching
    quiet = Segmenter(SyntheticProposer(), SyntheticEncoder(), memory=seg.memory)
    assert quiet.between_stages is None
    assert len(quiet.predict(np.asarray(scene.image))) == len(seg.predict(scene.image))


class _FakeMallopt:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


def _fake_glibc(mallopt: _FakeMallopt, trims: list[int]):
    return type(
        "Glibc",
        (),
        {
            "gnu_get_libc_version": staticmethod(lambda: b"2.36"),
            "mallopt": mallopt,
            "malloc_trim": staticmethod(lambda pad: trims.append(pad) or 1),
        },
    )()


def test_retain_freed_memory_raises_glibc_thresholds_once_and_release_trims(monkeypatch):
    mallopt, trims = _FakeMallopt(), []
    libc = _fake_glibc(mallopt, trims)
    monkeypatch.setattr(malloc_tuning.sys, "platform", "linux")
    monkeypatch.setattr(malloc_tuning.ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(malloc_tuning, "_malloc_tuned", None)
    monkeypatch.setattr(malloc_tuning, "_libc", None)
    assert malloc_tuning.release_freed_memory() is False  # nothing retained yet: nothing to trim
    assert malloc_tuning.retain_freed_memory() is True
    assert malloc_tuning.retain_freed_memory() is True
    assert mallopt.calls == [
        (-3, malloc_tuning.MALLOC_MMAP_THRESHOLD_BYTES),
        (-1, malloc_tuning.MALLOC_TRIM_THRESHOLD_BYTES),
    ]
    assert max(value for _, value in mallopt.calls) < 2**31  # mallopt takes a C int
    assert malloc_tuning.release_freed_memory() is True
    assert trims == [0]


def test_retain_freed_memory_leaves_other_libcs_and_opt_out_alone(monkeypatch):
    mallopt, trims = _FakeMallopt(), []
    musl = type("Musl", (), {"mallopt": mallopt, "malloc_trim": lambda pad: trims.append(pad)})()
    monkeypatch.setattr(malloc_tuning.sys, "platform", "linux")
    monkeypatch.setattr(malloc_tuning.ctypes, "CDLL", lambda name: musl)
    monkeypatch.setattr(malloc_tuning, "_malloc_tuned", None)
    monkeypatch.setattr(malloc_tuning, "_libc", None)
    assert malloc_tuning.retain_freed_memory() is False
    assert malloc_tuning.release_freed_memory() is False
    monkeypatch.setattr(malloc_tuning, "_malloc_tuned", None)
    monkeypatch.setattr(malloc_tuning, "RETAIN_FREED_MEMORY", False)
    assert malloc_tuning.retain_freed_memory() is False
    assert mallopt.calls == [] and trims == []
