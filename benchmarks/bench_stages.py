#!/usr/bin/env python
"""Per-stage speed and peak memory of refseg, per preset, optimised vs straightforward path.

Builds random-weight models of the real architectures (SAM2 Hiera-L + DINOv2 ViT-L/14 for
``paper``, SAM2.1 Hiera-T + DINOv2 ViT-S/14 for ``fast``; no download), saves them with
``save_pretrained`` under ``benchmarks/.cache`` and loads them back through
``refseg.models.loading``. Every configuration (preset x dtype x code path) runs in a fresh
subprocess, so its peak RSS is its own. Per image it times SAM2's image embedding, the
point-grid decoding, the DINOv2 forward, matching (postprocess) and the total of
``Segmenter.predict``.

The optimised path (refseg's fast decoder, the preset's decode batch, fast pooling, torch's
2 MiB huge pages via THP_MEM_ALLOC_ENABLE=1) and the straightforward path (the stock
transformers decoder, batch 256 as in the paper, dense pooling) run on identical inputs (same image, same checkpoints, same memory bank); the
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
from bench_report import check_targets, format_report  # noqa: E402
from bench_run import PATHS, RunSpec  # noqa: E402

logger = logging.getLogger("bench_stages")

DEFAULT_IMAGE = HERE / "data" / "coffee.png"
# ---------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_stages.py",
        description=__doc__,
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
        "--huge-pages",
        choices=["auto", "on", "off"],
        default="auto",
        help="THP_MEM_ALLOC_ENABLE in the workers: auto = on for the optimised path, off for the "
        "straightforward one (subprocesses only)",
    )
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


def run_job_isolated(
    job: dict[str, Any], workdir: Path, name: str, timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run a job in a fresh Python process (``env`` added to its environment); errors come
    back as ``{"error": ...}``."""
    job = dict(job, result=str(workdir / f"{name}.result.json"))
    job_path = workdir / f"{name}.job.json"
    job_path.write_text(json.dumps(job, indent=1))
    log_path = workdir / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(job_path)]
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1", **(env or {}))
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

    def execute(job: dict[str, Any], name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        logger.info("%s ...", name)
        start = time.perf_counter()
        if args.in_process:
            try:
                result = run_job(job)
            except Exception as error:  # report and go on, as the subprocess path does
                result = {"error": f"{type(error).__name__}: {error}"}
        else:
            result = run_job_isolated(job, workdir, name, args.timeout, env)
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
        huge_pages = {"on": True, "off": False}.get(args.huge_pages, PATHS[path].huge_pages)
        result = execute(
            {"kind": "run", "spec": vars(spec)},
            f"{preset}-{dtype}-{path}",
            env={"THP_MEM_ALLOC_ENABLE": "1" if huge_pages else "0"},
        )
        result.setdefault("label", spec.label)
        result.setdefault("spec", vars(spec))
        report["runs"].append(result)
        if "error" not in result:
            outputs[(preset, dtype, path)] = Path(spec.outputs)

    for preset in args.presets:
        for dtype in dict.fromkeys(d for (_, d, _) in outputs):
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
        total_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        info["memory_gib"] = round(total_kib / 1024**2, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


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
    failed = [
        name
        for name, result in [
            *report["models"].items(),
            *((r["label"], r) for r in report["runs"]),
            *report["matching"].items(),
        ]
        if "error" in result
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
