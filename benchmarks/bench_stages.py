#!/usr/bin/env python
"""Per-stage speed and peak memory of refseg, per preset, optimised vs straightforward path.

Builds random-weight models of the real architectures (SAM2 Hiera-L + DINOv2 ViT-L/14 for
``paper``, SAM2.1 Hiera-T + DINOv2 ViT-S/14 for ``fast``; no download), saves them with
``save_pretrained`` under ``benchmarks/.cache`` and loads them back through
``refseg.models.loading``. Every configuration (preset x dtype x code path) runs in a fresh
subprocess, so its peak RSS is its own. Per image it times SAM2's image embedding, the
point-grid decoding, the DINOv2 forward, matching (postprocess) and the total of
``Segmenter.predict``.

The optimised path (refseg's fast decoder, the preset's decode batch, fast pooling) and the
straightforward path (the stock transformers decoder, batch 256 as in the paper, dense
pooling) run on identical inputs (same image, same checkpoints, same memory bank); the
report prints their ratios and checks that the outputs are identical (same instances in the
same order, equal masks, scores within 1e-4). bfloat16 runs are compared with float32 by
the share of instances found again (same class, mask IoU >= 0.95).

With random weights SAM2's predicted IoUs are all ~0.52 and NMS leaves few proposals, so
matching is also timed on synthetic proposals with a realistic number of survivors, and the
memory-file size for 20 classes x 30 shots with DINOv2-L is reported.

    python benchmarks/bench_stages.py                          # paper and fast, float32
    python benchmarks/bench_stages.py --dtype float32 bfloat16 --json speed.json
    python benchmarks/bench_stages.py --presets paper --grid 8   # a sub-grid, decode scaled
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
try:  # an installed refseg first, else the checkout's
    import refseg  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "src"))

from bench_compare import Outputs, compare_outputs, match_fraction, numeric_fidelity  # noqa: E402
from bench_run import RunSpec  # noqa: E402

logger = logging.getLogger("bench_stages")

DEFAULT_IMAGE = HERE / "data" / "coffee.png"
GIB = 1024**3

# Issue 5's targets on the 2-core CPU machine (seconds per image, bytes, share matched).
TARGETS = {
    ("paper", "float32"): {"total_s": 30.0, "peak_rss_bytes": 3 * GIB},
    ("fast", "float32"): {"total_s": 5.0},
    ("paper", "bfloat16"): {"total_s": 12.0, "match": 0.99},
}


# ---------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_stages.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Timings on a shared machine are noisy: compare paths within one run (ratios).",
    )
    parser.add_argument("--presets", nargs="+", default=["paper", "fast"], choices=["paper", "fast"])
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16"],
        help="compute dtypes; bfloat16 also runs float32 (optimised) as its reference",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="predictions per configuration; the fastest is kept"
    )
    parser.add_argument(
        "--straightforward-repeats",
        type=int,
        default=None,
        help="repeats of the straightforward path (default: --repeats)",
    )
    parser.add_argument(
        "--image", type=Path, default=DEFAULT_IMAGE, help="target image (default: coffee.png)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--grid",
        type=int,
        default=None,
        help="points per side instead of the preset's: times a sub-grid; decode and total are also scaled",
    )
    parser.add_argument("--skip-straightforward", action="store_true", help="run the optimised path only")
    parser.add_argument(
        "--sam2", type=Path, default=None, help="SAM2 checkpoint directory instead of random weights"
    )
    parser.add_argument(
        "--encoder", type=Path, default=None, help="DINOv2 checkpoint directory instead of random weights"
    )
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache", help="random-weight checkpoints")
    parser.add_argument("--workdir", type=Path, default=None, help="keep predictions and logs here")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per configuration before giving up"
    )
    parser.add_argument(
        "--matching-repeats", type=int, default=3, help="repeats of the synthetic matching timing"
    )
    parser.add_argument("--matching-objects", type=int, default=150, help="objects in the synthetic scene")
    parser.add_argument("--skip-matching", action="store_true", help="no synthetic matching timing")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every configuration in this process (tests; peak RSS then mixes configurations)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the full report as JSON")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- jobs


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Do one job in this process: "prepare" (checkpoints + memory), "run" or "matching"."""
    kind = job["kind"]
    if kind == "prepare":
        return _prepare(job)
    if kind == "run":
        from bench_run import run_configuration

        return run_configuration(RunSpec(**job["spec"]))
    if kind == "matching":
        return _matching(job)
    raise ValueError(f"unknown job kind {kind!r}")


def _prepare(job: dict[str, Any]) -> dict[str, Any]:
    from bench_models import PRESET_MODELS, checkpoint_dir, parameter_count
    from bench_run import prepare_memory

    from refseg.presets import get_preset

    sam2_arch, encoder_arch = PRESET_MODELS[job["preset"]]
    cache = Path(job["cache_dir"])
    sam2_dir = Path(job["sam2"]) if job.get("sam2") else checkpoint_dir(sam2_arch, cache)
    encoder_dir = Path(job["encoder"]) if job.get("encoder") else checkpoint_dir(encoder_arch, cache)
    input_size = get_preset(job["preset"]).encoder_input_size
    memory = prepare_memory(encoder_dir, job["image"], job["memory"], input_size=input_size)
    return {
        "sam2_dir": str(sam2_dir),
        "encoder_dir": str(encoder_dir),
        "sam2_model": "checkpoint" if job.get("sam2") else f"{sam2_arch} (random weights)",
        "encoder_model": "checkpoint" if job.get("encoder") else f"{encoder_arch} (random weights)",
        "sam2_parameters": parameter_count(sam2_dir),
        "encoder_parameters": parameter_count(encoder_dir),
        "memory": str(memory),
    }


def _matching(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from bench_matching import memory_file_size, synthetic_matching_inputs, time_matching

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    inputs = synthetic_matching_inputs(
        n_objects=job["objects"], image_size=tuple(job["image_size"]), channels=job["channels"]
    )
    result = time_matching(inputs, repeats=job["repeats"])
    if job.get("memory_file"):
        result["memory_file_bytes"] = memory_file_size(job["memory_file"], 20, 30, 1024)
    return result


def _worker_main(job_path: Path) -> int:
    job = json.loads(job_path.read_text())
    result = run_job(job)
    Path(job["result"]).write_text(json.dumps(result, indent=1))
    return 0


def run_job_isolated(job: dict[str, Any], workdir: Path, name: str, timeout: float) -> dict[str, Any]:
    """Run a job in a fresh Python process; errors come back as ``{"error": ...}``."""
    job = dict(job, result=str(workdir / f"{name}.result.json"))
    job_path = workdir / f"{name}.job.json"
    job_path.write_text(json.dumps(job, indent=1))
    log_path = workdir / f"{name}.log"
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(job_path)]
    try:
        with open(log_path, "w") as log:
            completed = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout
            )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if completed.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        return {"error": f"exit code {completed.returncode}: " + " | ".join(tail)}
    return json.loads(Path(job["result"]).read_text())


# ---------------------------------------------------------------------------- the whole benchmark


def plan_runs(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(preset, dtype, path) triples in run order."""
    triples = []
    for preset in args.presets:
        dtypes = list(dict.fromkeys(args.dtype))
        if "bfloat16" in dtypes and "float32" not in dtypes:
            dtypes.insert(0, "float32")  # bfloat16 is judged against float32
        for dtype in dtypes:
            triples.append((preset, dtype, "optimised"))
            if dtype == "float32" and not args.skip_straightforward:
                triples.append((preset, dtype, "straightforward"))
    return triples


def run_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run every configuration, compare outputs, time matching; return the report."""

    def execute(job: dict[str, Any], name: str) -> dict[str, Any]:
        logger.info("%s ...", name)
        start = time.perf_counter()
        if args.in_process:
            try:
                result = run_job(job)
            except Exception as error:  # report and go on, as the subprocess path does
                result = {"error": f"{type(error).__name__}: {error}"}
        else:
            result = run_job_isolated(job, workdir, name, args.timeout)
        logger.info("%s done in %.1f s%s", name, time.perf_counter() - start, _error_suffix(result))
        return result

    report: dict[str, Any] = {
        "machine": machine_description(args.device),
        "command": "python benchmarks/bench_stages.py " + " ".join(shlex.quote(a) for a in _argv_of(args)),
        "image": str(args.image),
        "image_size": _image_size(args.image),
        "models": {},
        "runs": [],
        "comparisons": [],
        "bfloat16": [],
        "matching": {},
    }
    prepared: dict[str, dict[str, Any]] = {}
    for preset in args.presets:
        job = {
            "kind": "prepare",
            "preset": preset,
            "cache_dir": str(args.cache_dir),
            "image": str(args.image),
            "memory": str(workdir / f"memory-{preset}.safetensors"),
            "sam2": str(args.sam2) if args.sam2 else None,
            "encoder": str(args.encoder) if args.encoder else None,
        }
        prepared[preset] = execute(job, f"prepare-{preset}")
        report["models"][preset] = prepared[preset]

    outputs: dict[tuple[str, str, str], Path] = {}
    for preset, dtype, path in plan_runs(args):
        models = prepared[preset]
        if "error" in models:
            continue
        repeats = args.repeats
        if path == "straightforward" and args.straightforward_repeats is not None:
            repeats = args.straightforward_repeats
        spec = RunSpec(
            preset=preset,
            path=path,
            dtype=dtype,
            device=args.device,
            image=str(args.image),
            sam2_dir=models["sam2_dir"],
            encoder_dir=models["encoder_dir"],
            memory=models["memory"],
            outputs=str(workdir / f"{preset}-{dtype}-{path}.npz"),
            repeats=repeats,
            threads=args.threads,
            grid=args.grid,
        )
        result = execute({"kind": "run", "spec": vars(spec)}, f"{preset}-{dtype}-{path}")
        result.setdefault("label", spec.label)
        result.setdefault("spec", vars(spec))
        report["runs"].append(result)
        if "error" not in result:
            outputs[(preset, dtype, path)] = Path(spec.outputs)

    for preset in args.presets:
        for dtype in dict.fromkeys(args.dtype):
            a, b = (preset, dtype, "optimised"), (preset, dtype, "straightforward")
            if a in outputs and b in outputs:
                fast, slow = Outputs.load(outputs[a]), Outputs.load(outputs[b])
                comparison = compare_outputs(fast, slow)
                report["comparisons"].append(
                    {
                        "preset": preset,
                        "dtype": dtype,
                        **vars(comparison),
                        "fidelity": numeric_fidelity(fast, slow),
                    }
                )
        reference, candidate = (preset, "float32", "optimised"), (preset, "bfloat16", "optimised")
        if reference in outputs and candidate in outputs:
            ref_out, cand_out = Outputs.load(outputs[reference]), Outputs.load(outputs[candidate])
            report["bfloat16"].append(
                {
                    "preset": preset,
                    "match": match_fraction(ref_out, cand_out),
                    "float32_instances": len(ref_out),
                    "bfloat16_instances": len(cand_out),
                    "fidelity": numeric_fidelity(ref_out, cand_out),
                }
            )

    if not args.skip_matching:
        height, width = report["image_size"]
        for preset in args.presets:
            channels = 1024 if preset == "paper" else 384
            job = {
                "kind": "matching",
                "channels": channels,
                "image_size": [height, width],
                "objects": args.matching_objects,
                "repeats": args.matching_repeats,
                "threads": args.threads,
                "memory_file": str(workdir / "memory-20x30.safetensors")
                if preset == args.presets[0]
                else None,
            }
            report["matching"][preset] = execute(job, f"matching-{preset}")
    report["targets"] = check_targets(report)
    return report


def _error_suffix(result: dict[str, Any]) -> str:
    return f" (FAILED: {result['error']})" if "error" in result else ""


def _argv_of(args: argparse.Namespace) -> list[str]:
    return list(getattr(args, "_argv", []))


def _image_size(path: Path) -> list[int]:
    from PIL import Image

    with Image.open(path) as image:
        return [image.height, image.width]


def machine_description(device: str = "cpu") -> dict[str, Any]:
    """CPU model, core count and relevant ISA flags; GPU name when benchmarking CUDA."""
    import torch

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next(
            (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
        )
        info["isa"] = sorted(
            f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
        )
    except OSError:
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ---------------------------------------------------------------------------- summary


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
        f"Machine: {machine.get('cpu')}, {machine.get('logical_cpus')} logical CPUs "
        f"(ISA: {', '.join(machine.get('isa', [])) or 'n/a'}), torch {machine.get('torch')} "
        f"({machine.get('torch_threads')} threads), transformers {machine.get('transformers', '?')}"
        + (f", GPU {machine['gpu']}" if "gpu" in machine else ""),
        f"Image: {report['image']} ({report['image_size'][1]}x{report['image_size'][0]})",
        f"Command: `{report['command']}`",
        "",
        "| preset | dtype | path | decoder, batch, pooling | SAM2 image s | SAM2 decode s | DINOv2 s "
        "| matching s | other s | total s | CPU s | peak RSS GiB | proposals | instances |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    scaled_any = False
    for run in report["runs"]:
        preset, dtype, path = run["label"].split("/")
        if "error" in run:
            lines.append(f"| {preset} | {dtype} | {path} | FAILED: {run['error']} |" + " |" * 10)
            continue
        stages, cpu = scaled_stages(run), scaled_stages(run, "cpu_stages")
        mark = ""
        if run["grid"] != run["preset_grid"]:
            mark, scaled_any = "~", True
        how = f"{run['decoder']}, {run['batch_size']}, {run['pool']}"
        lines.append(
            f"| {preset} | {dtype} | {path} | {how} | {_seconds(stages['embed'])} | {mark}{_seconds(stages['decode'])} "
            f"| {_seconds(stages['encode'])} | {_seconds(stages['match'])} | {_seconds(stages['other'])} "
            f"| {mark}{_seconds(stages['total'])} | {mark}{_seconds(cpu['total'])} "
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is not None:
        return _worker_main(args.worker)
    args._argv = [a for a in argv if a != "--in-process"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not args.image.is_file():
        print(f"No such image: {args.image}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("--device cuda asked for but no CUDA GPU is available.", file=sys.stderr)
            return 2
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="refseg-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run_benchmark(args, workdir)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    failed = any("error" in r for r in report["runs"]) or any(
        "error" in m for m in report["matching"].values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
