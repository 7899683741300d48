"""The library side of the verbs: ModelSpec, the reproduce pipeline's helpers, the Reporter."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from refseg import FAST, InvalidInputError, MemoryBank
from refseg.model_spec import ModelSpec
from refseg.models.base import EncoderIdentity
from refseg.pipelines.reporter import Reporter
from refseg.pipelines.reproduce import _same_memory, paper_comparison


def test_model_spec_settings_apply_every_override() -> None:
    spec = ModelSpec("fast", sam2="my/sam2", dtype="bfloat16", overrides={"points_per_side": 8})
    assert spec.settings() == FAST.replace(sam2_id="my/sam2", dtype="bfloat16", points_per_side=8)
    assert ModelSpec().settings().name == "paper"
    with pytest.raises(InvalidInputError, match="Unknown setting"):
        ModelSpec(overrides={"points": 8}).settings()


def test_the_reporter_logs_by_default(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="refseg.pipelines"):
        Reporter().step("[1/4] sampling")
        Reporter().warn("drawing again")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "[1/4] sampling"),
        ("WARNING", "drawing again"),
    ]


def test_reproduce_reuses_a_memory_only_with_the_same_context_ratio(tmp_path: Path) -> None:
    bank = MemoryBank(EncoderIdentity("enc", "1", 518, 4))
    bank.add(torch.ones(4), "cat", context_ratio=0.2)
    path = bank.save(tmp_path / "memory.safetensors")
    warnings: list[str] = []

    class Collect(Reporter):
        def warn(self, message: str) -> None:
            warnings.append(message)

    assert _same_memory(path, 0.2, Collect()) and not warnings
    assert not _same_memory(path, 0.3, Collect())
    assert "context ratio 0.2, not 0.3: building again" in warnings[0]
    assert not _same_memory(tmp_path / "missing.safetensors", 0.2, Collect())


def test_paper_comparison_beside_the_papers_figures() -> None:
    scores = {"bbox": {"AP": 30.04}, "segm": {"AP": 28.0}}
    table = paper_comparison(scores, 30, 33, None)
    assert "30.0" in table and "37.3" in table and "37.0 +- 0.2" in table
    other = paper_comparison(scores, 4, 7, 10)
    assert "reports 1, 2, 3, 5, 10, 30 shots only" in other and "not comparable" in other
