"""The benchmark's report: scaling of sub-grid runs, ratios, targets, the markdown tables.

Pure functions over the report dict that :func:`bench_stages.run_benchmark` builds.
"""

from __future__ import annotations

from typing import Any

GIB = 1024**3

# Issue 5's targets on the 2-core CPU machine (seconds per image, bytes, share matched).
TARGETS = {
    ("paper", "float32"): {"total_s": 30.0, "peak_rss_bytes": 3 * GIB},
    ("fast", "float32"): {"total_s": 5.0},
    ("paper", "bfloat16"): {"total_s": 12.0, "match": 0.99},
}


def scaled_stages(run: dict[str, Any], key: str = "stages") -> dict[str, float]:
    """The run's stages (``key``: "stages" wall or "cpu_stages"), with decoding (and total)
    scaled to the preset's full grid if a sub-grid was timed (decode time is proportional
    to the number of prompts)."""
    stages = dict(run[key])
    factor = (run["preset_grid"] / run["grid"]) ** 2
    if factor != 1.0:
        extra = stages["decode"] * (factor - 1.0)
        stages["decode"] += extra
        stages["total"] += extra
    return stages


def ratios(report: dict[str, Any]) -> list[dict[str, Any]]:
    """straightforward / optimised per stage, total and peak RSS, per preset and dtype."""
    runs = {r["label"]: r for r in report["runs"] if "error" not in r}
    rows = []
    for label, run in runs.items():
        preset, dtype, path = label.split("/")
        other = runs.get(f"{preset}/{dtype}/straightforward")
        if path != "optimised" or other is None:
            continue
        fast, slow = scaled_stages(run), scaled_stages(other)
        row: dict[str, Any] = {"preset": preset, "dtype": dtype}
        for stage in ("embed", "decode", "encode", "match", "total"):
            row[stage] = slow[stage] / fast[stage] if fast[stage] > 0 else float("nan")
        fast_cpu, slow_cpu = scaled_stages(run, "cpu_stages"), scaled_stages(other, "cpu_stages")
        row["cpu_total"] = slow_cpu["total"] / fast_cpu["total"] if fast_cpu["total"] > 0 else float("nan")
        row["peak_rss"] = other["peak_rss_bytes"] / run["peak_rss_bytes"]
        rows.append(row)
    return rows


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets against the optimised runs (full grid only)."""
    runs = {r["label"]: r for r in report["runs"] if "error" not in r}
    matches = {row["preset"]: row["match"] for row in report["bfloat16"]}
    identical = {(c["preset"], c["dtype"]): c["identical"] for c in report["comparisons"]}
    rows = []
    for (preset, dtype), target in TARGETS.items():
        run = runs.get(f"{preset}/{dtype}/optimised")
        if run is None or run["grid"] != run["preset_grid"]:
            continue
        total = run["stages"]["total"]
        row: dict[str, Any] = {
            "preset": preset,
            "dtype": dtype,
            "total_s": total,
            "target_s": target["total_s"],
            "time_met": total <= target["total_s"],
        }
        if "peak_rss_bytes" in target:
            row["peak_rss_bytes"], row["target_rss_bytes"] = run["peak_rss_bytes"], target["peak_rss_bytes"]
            row["rss_met"] = run["peak_rss_bytes"] <= target["peak_rss_bytes"]
        if "match" in target and preset in matches:
            row["match"], row["target_match"] = matches[preset], target["match"]
            row["match_met"] = matches[preset] >= target["match"]
        if dtype == "float32" and (preset, dtype) in identical:
            row["identical"] = identical[(preset, dtype)]
        rows.append(row)
    return rows


def _seconds(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def format_report(report: dict[str, Any]) -> str:
    """The report as markdown: stage table, ratios, comparisons, matching, memory file, targets."""
    machine = report["machine"]
    lines = [
        f"Machine: {machine.get('cpu')}, {machine.get('logical_cpus')} logical CPUs, "
        f"{machine.get('memory_gib', '?')} GiB RAM "
        f"(ISA: {', '.join(machine.get('isa', [])) or 'n/a'}), torch {machine.get('torch')} "
        f"({machine.get('torch_threads')} threads), transformers {machine.get('transformers', '?')}"
        + (f", GPU {machine['gpu']}" if "gpu" in machine else ""),
        f"Image: {report['image']} ({report['image_size'][1]}x{report['image_size'][0]})",
        f"Command: `{report['command']}`",
        "",
        "| preset | dtype | path | decoder, encoder, batch, pooling, huge pages | SAM2 image s | SAM2 decode s | DINOv2 s "
        "| matching s | other s | total s | CPU s | first of repeats s | peak RSS GiB | proposals | instances |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    scaled_any = False
    for run in report["runs"]:
        preset, dtype, path = run["label"].split("/")
        if "error" in run:
            lines.append(f"| {preset} | {dtype} | {path} | FAILED: {run['error']} |" + " |" * 11)
            continue
        stages, cpu = scaled_stages(run), scaled_stages(run, "cpu_stages")
        mark = ""
        if run["grid"] != run["preset_grid"]:
            mark, scaled_any = "~", True
        how = f"{run['decoder']}, {run.get('encoder', 'stock')}, {run['batch_size']}, {run['pool']}" + (
            ", THP" if run.get("huge_pages") else ""
        )
        lines.append(
            f"| {preset} | {dtype} | {path} | {how} | {_seconds(stages['embed'])} | {mark}{_seconds(stages['decode'])} "
            f"| {_seconds(stages['encode'])} | {_seconds(stages['match'])} | {_seconds(stages['other'])} "
            f"| {mark}{_seconds(stages['total'])} | {mark}{_seconds(cpu['total'])} "
            f"| {'n/a' if mark else _seconds(run['totals'][0])} "
            f"| {run['peak_rss_bytes'] / GIB:.2f} | {run['proposals']} "
            f"| {run['instances']} |"
        )
    if scaled_any:
        grids = {(r["grid"], r["preset_grid"]) for r in report["runs"] if "error" not in r}
        lines.append("")
        lines.append(
            "~ decoding timed on a sub-grid and scaled by the number of prompts "
            + ", ".join(f"({g}x{g} -> {p}x{p})" for g, p in sorted(grids) if g != p)
            + "; proposals and instances are those of the sub-grid."
        )
    rows = ratios(report)
    if rows:
        lines += [
            "",
            "Straightforward / optimised (same run, identical inputs):",
            "",
            "| preset | dtype | SAM2 image | SAM2 decode | DINOv2 | matching | total | total CPU | peak RSS |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['preset']} | {row['dtype']} | {row['embed']:.2f}x | {row['decode']:.2f}x "
                f"| {row['encode']:.2f}x | {row['match']:.2f}x | {row['total']:.2f}x | {row['cpu_total']:.2f}x "
                f"| {row['peak_rss']:.2f}x |"
            )
    peak_rows = [r for r in report["runs"] if "error" not in r and r.get("peak_rss_stage_bytes")]
    if peak_rows:
        lines += [
            "",
            "Peak RSS by stage, GiB (weights stay resident once touched):",
            "",
            "| preset | dtype | path | after loading | SAM2 image | SAM2 decode | DINOv2 | matching | whole run |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for run in peak_rows:
            peaks = run["peak_rss_stage_bytes"]
            cells = " | ".join(
                f"{peaks.get(stage, 0) / GIB:.2f}" for stage in ("embed", "decode", "encode", "match")
            )
            preset, dtype, path = run["label"].split("/")
            lines.append(
                f"| {preset} | {dtype} | {path} | {run['peak_rss_load_bytes'] / GIB:.2f} | {cells} "
                f"| {run['peak_rss_bytes'] / GIB:.2f} |"
            )
    if report["comparisons"] or report["bfloat16"]:
        lines += ["", "Outputs:", ""]
    for c in report["comparisons"]:
        verdict = "IDENTICAL" if c["identical"] else f"DIFFERENT ({c['reason']})"
        fidelity = c.get("fidelity", {})
        lines.append(
            f"- {c['preset']} {c['dtype']}: optimised vs straightforward: {verdict}; "
            f"{c['count'][0]} instances, max score difference {c['max_score_diff']:.1e}; "
            f"proposals {'equal in number' if c['proposals_equal'] else 'DIFFER in number'}, "
            f"max predicted-IoU difference {c['max_predicted_iou_diff']:.1e}"
            + _fidelity_text(fidelity, masks_only=True)
        )
    for b in report["bfloat16"]:
        lines.append(
            f"- {b['preset']} bfloat16 vs float32: {100 * b['match']:.1f}% of {b['float32_instances']} float32 "
            f"instances found (same class, mask IoU >= 0.95); bfloat16 gave {b['bfloat16_instances']}"
            + _fidelity_text(b.get("fidelity", {}))
        )
    if report["matching"]:
        lines += [
            "",
            "Matching on synthetic proposals (realistic survivors; seconds, best of repeats):",
            "",
            "| preset | C | proposals | after NMS | instances | optimised | dense pooling | straightforward "
            "| pooling fast / dense | merge cropped / dense | identical |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for preset, m in report["matching"].items():
            if "error" in m:
                lines.append(f"| {preset} | FAILED: {m['error']} |" + " |" * 9)
                continue
            s, lev = m["seconds"], m["levers"]
            lines.append(
                f"| {preset} | {m['channels']} | {m['proposals']} | {m['survivors']} | {m['instances']} "
                f"| {_seconds(s['optimised'])} | {_seconds(s['dense_pooling'])} | {_seconds(s['straightforward'])} "
                f"| {_seconds(lev['pool_fast'])} / {_seconds(lev['pool_dense'])} "
                f"| {_seconds(lev['merge_cropped'])} / {_seconds(lev['merge_dense'])} "
                f"| {'yes' if m['identical'] and m['merge_identical'] else 'NO'} |"
            )
        for m in report["matching"].values():
            if "memory_file_bytes" in m:
                size = m["memory_file_bytes"]
                lines += [
                    "",
                    f"Memory file, 20 classes x 30 shots, DINOv2-L (1024-d): {size / 1e6:.2f} MB "
                    f"({size / 20 / 1e3:.0f} kB per class)",
                ]
    if report.get("targets"):
        lines += ["", "Targets (issue 5, optimised path, full grid):", ""]
        for t in report["targets"]:
            parts = [
                f"{t['total_s']:.1f} s vs <= {t['target_s']:.0f} s {_met(t['time_met'], t['total_s'], t['target_s'])}"
            ]
            if "rss_met" in t:
                parts.append(
                    f"peak RSS {t['peak_rss_bytes'] / GIB:.2f} GiB vs <= {t['target_rss_bytes'] / GIB:.0f} GiB "
                    + _met(t["rss_met"], t["peak_rss_bytes"], t["target_rss_bytes"])
                )
            if "match_met" in t:
                parts.append(
                    f"{100 * t['match']:.1f}% matched vs >= {100 * t['target_match']:.0f}% "
                    + ("met" if t["match_met"] else "MISSED")
                )
            if "identical" in t:
                parts.append("outputs identical" if t["identical"] else "outputs NOT identical")
            lines.append(f"- {t['preset']} {t['dtype']}: " + "; ".join(parts))
    return "\n".join(lines)


def _fidelity_text(fidelity: dict[str, float], masks_only: bool = False) -> str:
    """Where two runs part, stage by stage (see bench_compare.numeric_fidelity)."""
    if not fidelity or fidelity.get("proposal_mask_match") != fidelity.get("proposal_mask_match"):  # NaN
        return ""
    text = (
        f"; low-res proposal masks with IoU >= 0.95: {100 * fidelity['proposal_mask_match']:.1f}%, "
        f"logits relative error {fidelity['logits_rel_error']:.1e}"
    )
    if masks_only:
        return text
    return text + (
        f" (mean |logit| {fidelity['logits_scale']:.1e}); SAM2 embedding relative error "
        f"{fidelity['embedding_rel_error']:.1e}; DINOv2 feature cosine {fidelity['feature_cosine']:.4f}"
    )


def _met(met: bool, value: float, target: float) -> str:
    return "met" if met else f"MISSED by {100 * (value / target - 1):.0f}%"
