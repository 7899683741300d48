"""The stage benchmark's own logic (benchmarks/), on tiny random-weight models.

The benchmark is not a test; here its comparison, scaling, table and target logic run on the
tiny SAM2/DINOv2 checkpoints of conftest with a 4x4 point grid.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_report  # noqa: E402
import bench_stages  # noqa: E402
from bench_compare import Outputs, compare_outputs, mask_iou, match_fraction, numeric_fidelity  # noqa: E402
from bench_matching import (  # noqa: E402
    memory_file_size,
    same_result,
    straightforward_postprocess,
    synthetic_matching_inputs,
    time_matching,
)

from refseg import matching  # noqa: E402

GRID = 4


@pytest.fixture(scope="module")
def tiny_report(tiny_sam2_dir: Path, tiny_dinov2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The benchmark run in-process on the tiny models: fast preset; asking for bfloat16 runs
    float32 on both paths as well."""
    workdir = tmp_path_factory.mktemp("bench")
    argv = [
        "--presets", "fast", "--sam2", str(tiny_sam2_dir), "--encoder", str(tiny_dinov2_dir),
        "--grid", str(GRID), "--repeats", "1", "--dtype", "bfloat16", "--skip-matching", "--in-process",
        "--workdir", str(workdir),
    ]  # fmt: skip
    args = bench_stages.parse_args(argv)
    args._argv = argv
    return bench_stages.run_benchmark(args, workdir), workdir


def test_tiny_run_reports_every_stage_and_identical_paths(tiny_report) -> None:
    report, workdir = tiny_report
    runs = {run["label"]: run for run in report["runs"]}
    assert set(runs) == {"fast/float32/optimised", "fast/float32/straightforward", "fast/bfloat16/optimised"}
    optimised, straightforward = runs["fast/float32/optimised"], runs["fast/float32/straightforward"]
    assert (optimised["decoder"], optimised["batch_size"], optimised["pool"]) == ("fast", 64, "fast")
    assert (straightforward["decoder"], straightforward["batch_size"], straightforward["pool"]) == (
        "stock",
        256,
        "dense",
    )
    for run in runs.values():
        stages = run["stages"]
        assert set(stages) == {"embed", "decode", "encode", "match", "other", "total"}
        assert all(stages[name] > 0 for name in ("embed", "decode", "encode", "match"))
        assert stages["total"] == pytest.approx(sum(v for k, v in stages.items() if k != "total"))
        assert run["grid"] == GRID and run["preset_grid"] == 16
        assert run["instances"] > 0
        peaks = run["peak_rss_stage_bytes"]
        assert set(peaks) == {"embed", "decode", "encode", "match", "other"}
        assert 0 < max(peaks.values()) <= run["peak_rss_bytes"]
        assert 0 < run["peak_rss_load_bytes"] <= run["peak_rss_bytes"]
    assert optimised["proposals"] == straightforward["proposals"] > 0

    [comparison] = report["comparisons"]
    assert comparison["identical"], comparison["reason"]
    assert comparison["proposals_equal"]
    fidelity = comparison["fidelity"]
    assert fidelity["proposal_mask_match"] == 1.0 and fidelity["proposals_paired"] == 1.0
    assert fidelity["logits_rel_error"] < 1e-5 and fidelity["embedding_rel_error"] == 0.0
    assert fidelity["feature_cosine"] == pytest.approx(1.0)

    text = bench_report.format_report(report)
    assert "| fast | float32 | optimised | fast, lean, 64, fast" in text
    assert "| fast | float32 | straightforward | stock, stock, 256, dense" in text
    assert "optimised vs straightforward: IDENTICAL" in text
    assert "Straightforward / optimised" in text
    assert "Peak RSS by stage" in text and "low-res proposal masks with IoU >= 0.95: 100.0%" in text
    assert "(4x4 -> 16x16)" in text
    [bf16] = report["bfloat16"]
    assert bf16["float32_instances"] == optimised["instances"]
    assert 0.0 <= bf16["match"] <= 1.0
    assert bf16["fidelity"]["proposals_paired"] > 0.5 and bf16["fidelity"]["feature_cosine"] > 0.99
    assert "fast bfloat16 vs float32:" in text and "instances found (same class, mask IoU >= 0.95)" in text
    assert report["targets"] == []  # a sub-grid is never judged against the targets
    assert (workdir / "fast-float32-optimised.npz").is_file()


def test_sub_grid_decode_is_scaled_to_the_full_grid(tiny_report) -> None:
    report, _ = tiny_report
    run = report["runs"][0]
    scaled = bench_report.scaled_stages(run)
    factor = (16 / GRID) ** 2
    assert scaled["decode"] == pytest.approx(run["stages"]["decode"] * factor)
    assert scaled["total"] - scaled["decode"] == pytest.approx(
        run["stages"]["total"] - run["stages"]["decode"]
    )
    assert scaled["embed"] == run["stages"]["embed"]
    [row] = bench_report.ratios(report)
    slow = bench_report.scaled_stages(report["runs"][1])
    assert row["decode"] == pytest.approx(slow["decode"] / scaled["decode"])


def test_perturbed_outputs_are_reported_different(tiny_report) -> None:
    _, workdir = tiny_report
    reference = Outputs.load(workdir / "fast-float32-optimised.npz")
    straightforward = Outputs.load(workdir / "fast-float32-straightforward.npz")
    assert compare_outputs(reference, straightforward).identical
    assert len(reference) >= 1

    def changed(**fields: np.ndarray) -> Outputs:
        return dataclasses.replace(reference, **fields)

    scores = reference.scores.copy()
    scores[0] += 5e-5
    assert compare_outputs(reference, changed(scores=scores)).identical  # within 1e-4
    scores[0] += 1e-3
    result = compare_outputs(reference, changed(scores=scores))
    assert not result.identical and "scores differ" in result.reason

    masks = reference.masks.copy()
    masks[0, 0, 0] = not masks[0, 0, 0]
    result = compare_outputs(reference, changed(masks=masks))
    assert not result.identical and not result.masks_equal and "1 pixels" in result.reason

    labels = reference.labels.copy()
    labels[0] += 1
    result = compare_outputs(reference, changed(labels=labels))
    assert not result.identical and not result.labels_equal

    fewer = changed(
        masks=reference.masks[1:],
        scores=reference.scores[1:],
        labels=reference.labels[1:],
        boxes=reference.boxes[1:],
    )
    result = compare_outputs(reference, fewer)
    assert not result.identical and result.count == (len(reference), len(reference) - 1)

    iou = reference.predicted_iou.copy()
    iou[0] += 0.25
    assert compare_outputs(reference, changed(predicted_iou=iou)).max_predicted_iou_diff == pytest.approx(
        0.25, abs=1e-6
    )


def test_numeric_fidelity_pairs_proposals_by_prompt(tiny_report) -> None:
    _, workdir = tiny_report
    reference = Outputs.load(workdir / "fast-float32-optimised.npz")
    n = len(reference.points)
    assert reference.proposal_masks.shape == (n, 256, 256) and n == GRID * GRID
    assert reference.logits_sample.shape[0] == len(reference.sample_points) > 0
    assert reference.features.shape == (32, 37, 37) and reference.image_embedding.shape == (16, 64, 64)

    # drop the first proposal and flip all pixels of the second: 1 of 16 unpaired, 1 of 15 off
    masks = reference.proposal_masks[1:].copy()
    masks[0] = ~masks[0]
    candidate = dataclasses.replace(
        reference,
        points=reference.points[1:],
        predicted_iou=reference.predicted_iou[1:],
        proposal_masks=masks,
        image_embedding=reference.image_embedding * 1.01,
        features=-reference.features,
    )
    fidelity = numeric_fidelity(reference, candidate)
    assert fidelity["proposals_paired"] == pytest.approx((n - 1) / n)
    assert fidelity["proposal_mask_match"] == pytest.approx((n - 2) / (n - 1))
    assert fidelity["embedding_rel_error"] == pytest.approx(0.01, rel=1e-4)
    assert fidelity["feature_cosine"] == pytest.approx(-1.0)
    assert fidelity["logits_rel_error"] == 0.0  # samples are paired by prompt point
    assert fidelity["predicted_iou_max_diff"] == 0.0


def _outputs(masks: np.ndarray, labels: list[int]) -> Outputs:
    n = len(masks)
    return Outputs(
        masks=masks,
        scores=np.linspace(1.0, 0.5, n, dtype=np.float32),
        labels=np.array(labels, dtype=np.int64),
        boxes=np.zeros((n, 4), dtype=np.float32),
        predicted_iou=np.zeros(0, dtype=np.float32),
    )


def test_match_fraction_needs_same_class_and_iou_095() -> None:
    masks = np.zeros((3, 20, 20), dtype=bool)
    masks[0, :10, :10] = True  # 100 px
    masks[1, 10:, 10:] = True
    masks[2, :5, 15:] = True
    reference = _outputs(masks, [0, 1, 1])
    assert match_fraction(reference, reference) == 1.0

    shifted = masks.copy()
    shifted[0, :10, 10] = True  # IoU 100/110 = 0.91 < 0.95
    assert match_fraction(reference, _outputs(shifted, [0, 1, 1])) == pytest.approx(2 / 3)
    nudged = masks.copy()
    nudged[0, 0, 10] = True  # IoU 100/101 >= 0.95
    assert match_fraction(reference, _outputs(nudged, [0, 1, 1])) == 1.0
    assert match_fraction(reference, _outputs(masks, [1, 1, 1])) == pytest.approx(2 / 3)
    # one-to-one: two reference instances cannot both match one candidate
    twice = _outputs(np.stack([masks[0], masks[0]]), [0, 0])
    assert match_fraction(twice, _outputs(masks[:1], [0])) == 0.5
    assert match_fraction(_outputs(masks[:0], []), _outputs(masks[:0], [])) == 1.0
    assert match_fraction(reference, _outputs(masks[:0], [])) == 0.0
    assert mask_iou(masks[:1], shifted[:1])[0, 0] == pytest.approx(100 / 110)


def test_targets_are_judged_on_full_grid_optimised_runs() -> None:
    def run(label: str, total: float, rss: int, grid: int = 32) -> dict:
        return {
            "label": label,
            "stages": {"total": total},
            "peak_rss_bytes": rss,
            "grid": grid,
            "preset_grid": 32,
        }

    gib = bench_report.GIB
    report = {
        "runs": [
            run("paper/float32/optimised", 45.0, 2 * gib),
            run("paper/float32/straightforward", 200.0, 13 * gib),
            run("paper/bfloat16/optimised", 10.0, 2 * gib),
        ],
        "bfloat16": [{"preset": "paper", "match": 0.98}],
        "comparisons": [{"preset": "paper", "dtype": "float32", "identical": True}],
    }
    targets = {(t["preset"], t["dtype"]): t for t in bench_report.check_targets(report)}
    assert set(targets) == {("paper", "float32"), ("paper", "bfloat16")}
    f32, bf16 = targets[("paper", "float32")], targets[("paper", "bfloat16")]
    assert not f32["time_met"] and f32["rss_met"] and f32["identical"]
    assert bf16["time_met"] and not bf16["match_met"]
    assert bench_report._met(False, 45.0, 30.0) == "MISSED by 50%"

    report["runs"][0]["grid"] = 8
    assert ("paper", "float32") not in {(t["preset"], t["dtype"]) for t in bench_report.check_targets(report)}


def test_plan_adds_float32_reference_for_bfloat16() -> None:
    args = bench_stages.parse_args(["--presets", "paper", "--dtype", "bfloat16"])
    assert bench_stages.plan_runs(args) == [
        ("paper", "float32", "optimised"),
        ("paper", "float32", "straightforward"),
        ("paper", "bfloat16", "optimised"),
    ]
    args = bench_stages.parse_args(["--presets", "fast", "--skip-straightforward"])
    assert bench_stages.plan_runs(args) == [("fast", "float32", "optimised")]


def test_synthetic_matching_paths_agree() -> None:
    torch.manual_seed(0)
    inputs = synthetic_matching_inputs(n_objects=12, image_size=(60, 80), channels=16, classes=3)
    assert inputs.low_res_logits.shape == (12 * 5 + 4, 256, 256)
    fast = matching.postprocess(
        inputs.low_res_logits, inputs.predicted_iou, inputs.feature_map, inputs.prototypes, inputs.image_size
    )
    naive = straightforward_postprocess(inputs)
    assert len(fast) > 3
    assert same_result(fast, naive)
    assert torch.equal(fast.boxes, naive.boxes)
    moved = dataclasses.replace(naive, scores=naive.scores + 1e-3)
    assert not same_result(fast, moved)

    timing = time_matching(inputs, repeats=1)
    assert timing["identical"] and timing["merge_identical"]
    assert 0 < timing["survivors"] < timing["proposals"]
    assert set(timing["levers"]) == {"pool_fast", "pool_dense", "merge_cropped", "merge_dense"}


def test_memory_file_size_is_features_plus_metadata(tmp_path: Path) -> None:
    size = memory_file_size(tmp_path / "memory.safetensors", classes=2, shots=3, feature_dim=64)
    features = 2 * 3 * 64 * 4
    assert features < size < features + 16_000


def test_worker_subprocess_round_trip(tmp_path: Path) -> None:
    job = {
        "kind": "matching",
        "channels": 8,
        "image_size": [40, 50],
        "objects": 6,
        "repeats": 1,
        "threads": 1,
        "memory_file": None,
    }
    result = bench_stages.run_job_isolated(job, tmp_path, "matching-tiny", timeout=120)
    assert "error" not in result, result
    assert result["identical"] and result["proposals"] == 6 * 5 + 2
    assert (tmp_path / "matching-tiny.job.json").is_file() and (tmp_path / "matching-tiny.log").is_file()
    with pytest.raises(ValueError, match="unknown job kind"):
        bench_stages.run_job({"kind": "nonsense"})


def test_help_runs() -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_stages.parse_args(["--help"])
    assert exit_info.value.code == 0


def test_lever_comparisons_on_the_tiny_model(tiny_sam2_dir: Path):
    """bench_levers.py: every lever row is there, variants keep the decoder's and encoder's
    outputs."""
    import bench_levers

    report = bench_levers.run_levers(
        tiny_sam2_dir, bench_levers.DEFAULT_IMAGE, prompts=6, repeats=1, chunks=[2, 4]
    )
    groups = [row["group"] for row in report["rows"]]
    for group in ("SAM2 decoder", "fast decoder chunk", "SAM2 image encoder", "bfloat16 autocast"):
        assert group in groups
    decoder_rows = [row for row in report["rows"] if row["group"] in ("SAM2 decoder", "fast decoder chunk")]
    assert len(decoder_rows) == 7  # 5 decoders, 2 chunk sizes
    for row in decoder_rows:
        assert row["max_logit_difference"] < 1e-5 and row["max_iou_difference"] < 1e-5
        assert row["per_item_ms"] > 0
    encoder_rows = [row for row in report["rows"] if row["group"] == "SAM2 image encoder"]
    assert max(row["max_feature_difference"] for row in encoder_rows) < 1e-5
    text = bench_levers.format_levers(report)
    assert "| SAM2 decoder | fast, conv1 chain and low-rank tokens (default) |" in text
    assert text.count("\n| ") == len(report["rows"]) + 1


def test_decoder_parts_timer_reports_and_restores(tiny_models, tiny_image):
    """profile_stages.py's per-function timers cover every decoder part and are removed after."""
    import profile_stages

    proposer, _ = tiny_models
    embedding = proposer.embed(tiny_image)
    points = matching.point_grid(3, proposer.image_size)
    before = {name: getattr(*profile_stages.decoder_part(name)) for name in profile_stages.DECODER_PARTS}
    text = profile_stages._decoder_parts(
        lambda: proposer.decode_points(embedding, points, batch_size=4, iou_threshold=-1.0), len(points)
    )
    assert text.startswith("whole decode: ")
    for name in profile_stages.DECODER_PARTS:
        assert getattr(*profile_stages.decoder_part(name)) is before[name]
        line = next(line for line in text.splitlines() if line.startswith(name + " "))
        assert float(line.split()[1]) > 0
