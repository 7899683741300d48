"""Option values and settings: one range table refuses 0, -1, NaN, inf and words alike, in the
command line (``Error: ...``, exit 1, before any work) and in Python (``InvalidInputError``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from refseg.cli import cli
from refseg.errors import InvalidInputError
from refseg.presets import FAST, PAPER, SETTING_RANGES, Preset

NO_MODELS = ["--sam2", "/nonexistent/sam2", "--encoder", "/nonexistent/dino", "--device", "cpu"]


def _predict(tmp_path: Path, *extra: str) -> list[str]:
    return ["predict", "--memory", str(tmp_path / "m.safetensors"), str(tmp_path), "-o",
            str(tmp_path / "out" / "r.json"), *NO_MODELS, *extra]  # fmt: skip


BAD_VALUES = {
    "--points-per-side": ["0", "-1", "nan", "inf", "eight", "2.5"],
    "--batch-size": ["0", "-3", "nan"],
    "--iou-thr": ["nan", "-0.1", "1.5", "inf", "high"],
    "--nms-thr": ["nan", "-1", "2"],
    "--max-instances": ["0", "-1", "nan"],
    "--score-thr": ["nan", "-1", "1.01", "-inf"],
    "--limit": ["0", "-1", "nan", "all"],
}
CASES = [(flag, value) for flag, values in BAD_VALUES.items() for value in values]


@pytest.mark.parametrize(("flag", "value"), CASES)
def test_predict_refuses_bad_option_values_before_any_work(tmp_path: Path, flag: str, value: str) -> None:
    result = CliRunner().invoke(cli, _predict(tmp_path, flag, value))
    assert result.exit_code == 1, result.output
    assert f"Error: Invalid value for '{flag}'" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["memory", "--folder", ".", "-o", "m.safetensors", "--context-ratio", "nan"],
        ["memory", "--folder", ".", "-o", "m.safetensors", "--context-ratio", "-1"],
        ["memory", "--folder", ".", "-o", "m.safetensors", "--context-ratio", "1e308"],
        ["sample", "x.json", "--classes", "cat", "--shots", "0", "-o", "r.json"],
        ["sample", "x.json", "--classes", "cat", "--shots", "-2", "-o", "r.json"],
        ["memory", "show", "m.safetensors", "--max-per-class", "0"],
        ["memory", "show", "m.safetensors", "--tile-size", "0"],
        ["memory", "show", "m.safetensors", "--tile-size", "100000"],
        ["reproduce", "coco-fsod", "--coco-root", ".", "--limit", "-1"],
        ["reproduce", "coco-fsod", "--coco-root", ".", "--shots", "0"],
        ["app", "--port", "70000"],
        ["app", "--port", "-1"],
    ],
)
def test_other_verbs_refuse_bad_counts_and_ratios(tmp_path: Path, monkeypatch, args: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "Error: Invalid value for" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("field", sorted(SETTING_RANGES))
@pytest.mark.parametrize("value", [math.nan, math.inf, -1, 1e9 + 0.5, "8", True, None])
def test_preset_refuses_settings_out_of_range(field: str, value: object) -> None:
    allowed = SETTING_RANGES[field]
    if value is None:
        return  # replace() ignores None: the preset's value stays
    if allowed.accepts(value):
        assert getattr(PAPER.replace(**{field: value}), field) == value
        return
    with pytest.raises(InvalidInputError, match=f"The setting {field} must be"):
        PAPER.replace(**{field: value})


def test_presets_themselves_are_valid() -> None:
    for preset in (PAPER, FAST, Preset()):
        assert preset.replace() == preset


def test_segmenter_settings_are_checked(tiny_models) -> None:
    from refseg import Segmenter

    proposer, encoder = tiny_models
    with pytest.raises(InvalidInputError, match="iou_threshold"):
        Segmenter(proposer, encoder, iou_threshold=math.nan)
    with pytest.raises(InvalidInputError, match="points_per_side"):
        Segmenter(proposer, encoder, points_per_side=0)


def test_the_runner_refuses_a_nan_score_threshold(tmp_path: Path) -> None:
    from refseg.runner import predict_files

    with pytest.raises(InvalidInputError, match="score_threshold"):
        predict_files(object(), [], tmp_path / "r.json", score_threshold=math.nan)  # type: ignore[arg-type]
