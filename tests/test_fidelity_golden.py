"""refseg's ``paper`` preset reproduces the research code stage by stage on the golden set
(benchmarks/fidelity/golden.py, docs/fidelity.md): tiny models, three small targets, 3 classes
x 2 shots, against the research code's own stage outputs kept as plain arrays. No network, no
research code, no ``sam2`` package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity"


@pytest.fixture(scope="module")
def golden():
    sys.path.insert(0, str(HARNESS))
    try:
        import golden as module

        yield module
    finally:
        sys.path.remove(str(HARNESS))


def test_paper_reproduces_the_research_code_stage_by_stage(golden, tmp_path) -> None:
    report = golden.check({}, tmp_path)
    assert report.checked.keys() >= {
        "sampler", "reference crop", "reference input", "reference feature", "prototypes", "SAM2 input",
        "SAM2 embedding", "predicted IoU", "prompt masks", "IoU filter", "proposal order", "DINOv2 input",
        "target features", "scores, labels", "NMS", "final instances", "output boxes", "results json",
    }  # fmt: skip
    assert not report.failures, report.describe()
