#!/usr/bin/env python
"""Each speed/memory lever of the SAM2 stage on its own: on, off, same process, same inputs.

``bench_stages.py`` compares the whole optimised path with the straightforward one. This
script takes the levers apart where they can be switched independently, on one random-weight
SAM2 (the ``paper`` preset's Hiera-L by default) and one embedded image, alternating the
variants so that a noisy machine affects them alike, and keeping the fastest of the repeats:

- decoder: stock ``Sam2Model.forward`` with all prompts in one call (the paper's way), stock in
  batches of 16, refseg's fast decoder without and with the conv1 chain, with the image tokens
  built per prompt and as low-rank descriptions (models/sam2/low_rank_tokens.py), and the fast
  decoder's prompt chunk sizes;
- image encoder: transformers' forward and refseg's lean one (time and working set, i.e. peak
  resident memory above the weights);
- bfloat16 autocast of the encoder and the decoder;
- with ``--torch-compile`` (needs a C++ compiler; ~20 s of compiling per shape), the fast
  decoder's two-way transformer (8 prompts) and its upscaling (4 prompts) eager and compiled.

glibc malloc retention (refseg/runtime.py; on here, as in the ``refseg`` command) is not among
them: switched off and on inside one process, freed heap chunks from the "on" phases are still
reused, so both variants measured alike (docs/speed.md) while fresh processes show the real
effect. Measure it with the stage benchmark instead, whose configurations each run in a fresh
process: ``REFSEG_RETAIN_FREED_MEMORY=0 python benchmarks/bench_stages.py ...``.

Every decoder variant's proposals are compared with the stock decoder's (max logit and IoU
difference), and the lean encoder's features with the stock encoder's.

    python benchmarks/bench_levers.py                       # Hiera-L, 64 prompts, ~4 minutes here
    python benchmarks/bench_levers.py --prompts 32 --repeats 2 --json levers.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import script_env  # noqa: F401  (before torch: offline, huge pages, refseg on the path)

HERE = Path(__file__).resolve().parent

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from refseg import matching, runtime  # noqa: E402
from refseg.models.loading import load_proposer  # noqa: E402
from refseg.models.sam2 import (  # noqa: E402
    Sam2Options,
    Sam2Proposer,
    decode_points_stock,
    fast_decoder,
    image_context,
    two_way,
)
from refseg.preprocess import proposer_input  # noqa: E402

DEFAULT_IMAGE = HERE / "data" / "coffee.png"


def _status_gib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def timed(run: Callable[[], Any]) -> tuple[float, float | None, Any]:
    """Seconds, peak resident GiB above the starting point (None off Linux), result."""
    runtime.release_freed_memory()
    start = _status_gib("VmRSS")
    _reset_peak()
    begin = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - begin
    peak = _status_gib("VmHWM")
    return seconds, (peak - start) if peak is not None and start is not None else None, result


def alternate(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    """Run every variant ``repeats`` times, interleaved; keep the fastest time and its peak."""
    best: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for name, run in variants.items():
            seconds, peak, result = timed(run)
            if name not in best or seconds < best[name]["seconds"]:
                best[name] = {"seconds": seconds, "peak_gib": peak, "result": result}
    return best


def _decode_with(
    proposer: Sam2Proposer, embedding: Any, points: torch.Tensor, **options: Any
) -> Callable[[], Any]:
    """Decode ``points`` with a proposer that shares ``proposer``'s model and uses these
    :class:`Sam2Options` (prompt_chunk, conv1_chain, low_rank_tokens...)."""
    variant = Sam2Proposer(
        proposer.model, device=proposer.device, decoder="fast", options=Sam2Options(**options), check=False
    )
    return lambda: variant.decode_points(embedding, points, batch_size=64, iou_threshold=-1.0)


def _difference(a: Any, b: Any) -> dict[str, float]:
    if hasattr(a, "low_res_logits"):
        return {
            "max_logit_difference": float((a.low_res_logits - b.low_res_logits).abs().max()),
            "max_iou_difference": float((a.predicted_iou - b.predicted_iou).abs().max()),
            "mask_disagreement": float(((a.low_res_logits > 0) != (b.low_res_logits > 0)).float().mean()),
        }
    return {
        "max_feature_difference": max(
            float((x.float() - y.float()).abs().max()) for x, y in zip(a.as_list(), b.as_list(), strict=True)
        )
    }


def add_compile_rows(
    proposer: Sam2Proposer, embedding: Any, points: torch.Tensor, repeats: int, add: Callable[..., None]
) -> None:
    """torch.compile (inductor, static shapes) of the fast decoder's two parts, on fixed chunks."""
    model = proposer.model
    options = proposer.options
    with torch.inference_mode():
        context = image_context.prepare_image(model, embedding, options)
        chunk = points[: options.prompt_chunk]
        n = chunk.shape[0]
        sparse, _ = model.prompt_encoder(
            input_points=chunk.view(1, n, 1, 2),
            input_labels=torch.ones((1, n, 1), dtype=torch.int32),
            input_boxes=None,
            input_masks=None,
        )
        outputs = [1, *range(3, 2 + model.mask_decoder.num_mask_tokens)]
        queries, keys, trace = two_way.run_transformer(model, context, sparse[0], outputs)
        k = min(n, options.upscale_chunk)
        hyper = torch.randn(
            (k, model.mask_decoder.config.hidden_size // 8), generator=torch.Generator().manual_seed(0)
        )
        rows = slice(0, k)
        parts = {
            "two-way transformer": (
                two_way.run_transformer,
                (model, context, sparse[0], outputs),
                n,
                lambda result: result[0],
            ),
            "upscaling": (
                fast_decoder._upscale_masks,
                (model, context, keys, hyper, trace, rows, options.pixel_tile),
                k,
                lambda r: r,
            ),
        }
        for name, (function, arguments, count, output) in parts.items():
            start = time.perf_counter()
            compiled = torch.compile(function, dynamic=False)
            compiled(*arguments)
            compile_seconds = time.perf_counter() - start
            variants = {
                f"{name}, eager": lambda f=function, a=arguments, o=output: _Tensor(o(f(*a))),
                f"{name}, torch.compile ({compile_seconds:.0f} s to compile)": lambda f=compiled, a=arguments, o=output: (
                    _Tensor(o(f(*a)))
                ),
            }
            add("torch.compile", alternate(variants, repeats), next(iter(variants)), count)


class _Tensor:
    """A tensor result compared like proposals' logits (max difference, sign agreement)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.low_res_logits = tensor.float()
        self.predicted_iou = torch.zeros(1)


def run_levers(
    sam2_dir: Path,
    image: Path,
    prompts: int,
    repeats: int,
    chunks: list[int],
    bfloat16: bool = True,
    torch_compile: bool = False,
) -> dict[str, Any]:
    """All lever comparisons on one SAM2 checkpoint; returns rows and the machine."""
    lean = load_proposer(sam2_dir, device="cpu", decoder="fast", encoder="lean")
    # The lean encoder leaves the model as it is: every variant shares one copy of the weights.
    stock = Sam2Proposer(lean.model, device="cpu", decoder="stock", encoder="stock", check=False)
    pixels = np.asarray(Image.open(image).convert("RGB"))
    square = proposer_input(pixels, stock.image_size)[0]
    points = matching.point_grid(int(np.ceil(np.sqrt(prompts))), stock.image_size)[:prompts]
    embedding = lean.embed(square)

    def stock_decode(batch: int) -> Callable[[], Any]:
        return lambda: decode_points_stock(
            stock.model, embedding, points, batch_size=batch, iou_threshold=-1.0
        )

    def fast_decode() -> Any:
        return lean.decode_points(embedding, points, batch_size=64, iou_threshold=-1.0)

    rows: list[dict[str, Any]] = []

    def add(group: str, results: dict[str, dict[str, Any]], reference: str, per: int | None) -> None:
        base = results[reference]
        for name, entry in results.items():
            row = {
                "group": group,
                "variant": name,
                "seconds": entry["seconds"],
                "per_item_ms": 1000 * entry["seconds"] / per if per else None,
                "peak_gib": entry["peak_gib"],
                "speedup_vs_first": base["seconds"] / entry["seconds"],
            }
            row.update(_difference(entry["result"], base["result"]))
            rows.append(row)

    decoders = {
        f"stock, all {prompts} prompts in one call": stock_decode(prompts),
        "stock, batches of 16": stock_decode(16),
        "fast, conv1 direct": _decode_with(lean, embedding, points, conv1_chain=False),
        "fast, conv1 through the LayerNorm chain, tokens built": _decode_with(
            lean, embedding, points, low_rank_tokens=False
        ),
        "fast, conv1 chain and low-rank tokens (default)": fast_decode,
    }
    add("SAM2 decoder", alternate(decoders, repeats), next(iter(decoders)), prompts)
    chunked = {
        f"fast, prompt chunk {size}": _decode_with(lean, embedding, points, prompt_chunk=size)
        for size in chunks
    }
    add("fast decoder chunk", alternate(chunked, repeats), next(iter(chunked)), prompts)
    encoders = {
        "stock encoder": lambda: stock.embed(square),
        "lean encoder (default)": lambda: lean.embed(square),
    }
    add("SAM2 image encoder", alternate(encoders, repeats), "stock encoder", None)
    if bfloat16:
        half = Sam2Proposer(lean.model, device="cpu", dtype=torch.bfloat16, decoder="fast", encoder="lean")
        precision = {
            "lean encoder, float32": lambda: lean.embed(square),
            "lean encoder, bfloat16": lambda: half.embed(square),
        }
        add("bfloat16 autocast", alternate(precision, repeats), "lean encoder, float32", None)
        precision = {
            "fast decoder, float32": fast_decode,
            "fast decoder, bfloat16": lambda: half.decode_points(
                embedding, points, batch_size=64, iou_threshold=-1.0
            ),
        }
        add("bfloat16 autocast", alternate(precision, repeats), "fast decoder, float32", prompts)
    if torch_compile:
        add_compile_rows(lean, embedding, points, repeats, add)
    return {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "sam2": str(sam2_dir),
        "prompts": prompts,
        "repeats": repeats,
        "rows": rows,
    }


def format_levers(report: dict[str, Any]) -> str:
    lines = [
        f"SAM2 checkpoint: {report['sam2']}; {report['prompts']} prompts; best of {report['repeats']}; "
        f"torch {report['machine']['torch']}, {report['machine']['threads']} threads",
        "",
        "| lever | variant | time s | per prompt ms | x first | peak above start GiB | differs from first by |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        per = f"{row['per_item_ms']:.1f}" if row["per_item_ms"] is not None else ""
        peak = f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "n/a"
        if "max_logit_difference" in row:
            diff = (
                f"logits {row['max_logit_difference']:.1e}, IoU {row['max_iou_difference']:.1e}, "
                f"mask pixels {100 * row['mask_disagreement']:.3f}%"
            )
        else:
            diff = f"features {row['max_feature_difference']:.1e}"
        lines.append(
            f"| {row['group']} | {row['variant']} | {row['seconds']:.2f} | {per} | "
            f"{row['speedup_vs_first']:.2f}x | {peak} | {diff} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_levers.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sam2", type=Path, default=None, help="SAM2 checkpoint directory (default: random Hiera-L)"
    )
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--prompts", type=int, default=64, help="point prompts decoded per variant")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--chunks", type=int, nargs="+", default=[4, 8, 16, 32], help="fast decoder chunk sizes"
    )
    parser.add_argument("--no-bfloat16", action="store_true")
    parser.add_argument(
        "--torch-compile",
        action="store_true",
        help="also time torch.compile of the decoder (needs a C++ compiler)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    runtime.retain_freed_memory()  # the refseg command's policy (huge pages: script_env)
    sam2_dir = args.sam2
    if sam2_dir is None:
        from bench_models import checkpoint_dir

        sam2_dir = checkpoint_dir("sam2-hiera-large")
    report = run_levers(
        sam2_dir,
        args.image,
        args.prompts,
        args.repeats,
        args.chunks,
        not args.no_bfloat16,
        args.torch_compile,
    )
    print(format_levers(report))
    if args.json:
        rows = [{k: v for k, v in row.items()} for row in report["rows"]]
        args.json.write_text(json.dumps({**report, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
