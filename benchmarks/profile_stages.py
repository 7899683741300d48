#!/usr/bin/env python
"""Where the time goes inside each stage: torch profiler tables and the fast decoder's parts.

On the paper preset's random-weight models (``benchmarks/.cache``, built on first use), one
image (``coffee.png``):

- ``--stage encoder``: the SAM2 image encoder (lean, or ``--stock`` for transformers' own),
  torch profiler operators by self CPU time;
- ``--stage dinov2``: DINOv2-L, likewise;
- ``--stage decoder``: the fast decoder on ``--prompts`` prompts, operators, then wall time
  per prompt of each of its functions (timers wrapped around them; nested times included).

    python benchmarks/profile_stages.py --stage encoder --stock
    python benchmarks/profile_stages.py --stage decoder --prompts 128
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import time
from pathlib import Path

import script_env  # noqa: F401  (before torch: offline, huge pages, refseg on the path)

HERE = Path(__file__).resolve().parent

import numpy as np  # noqa: E402
from bench_models import checkpoint_dir  # noqa: E402
from PIL import Image  # noqa: E402
from torch.profiler import profile  # noqa: E402

from refseg import matching, runtime  # noqa: E402
from refseg.models.loading import load_encoder, load_proposer  # noqa: E402
from refseg.preprocess import encoder_input, proposer_input  # noqa: E402

# The functions of the fast decoder's default float32 path (low-rank tokens, conv1 chain), as
# module.function in refseg.models.sam2: each is looked up in its module when it is called.
DECODER_PARTS = (
    "image_context.prepare_image",
    "two_way.run_transformer_low_rank",
    "two_way._tokens_to_shared_image",
    "two_way._image_to_tokens_probs",
    "two_way._tokens_to_low_rank_image",
    "two_way._image_to_tokens_values",
    "fast_decoder._upscale_masks",
)


def decoder_part(name: str):
    """(module, function name) of a :data:`DECODER_PARTS` entry."""
    module, function = name.split(".")
    return importlib.import_module(f"refseg.models.sam2.{module}"), function


def _operator_table(run, rows: int) -> str:
    run()  # warm-up: weights paged in, allocator warm
    with profile() as prof:
        run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def _decoder_parts(run, prompts: int) -> str:
    """Wall time per prompt of each fast-decoder function over one run (timers wrapped around
    the functions in their modules for the run, then removed: profiling only)."""
    totals: dict[str, float] = collections.defaultdict(float)
    saved = {name: getattr(*decoder_part(name)) for name in DECODER_PARTS}

    def timed(name, function):
        @functools.wraps(function)
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - start

        return call

    try:
        for name, function in saved.items():
            setattr(*decoder_part(name), timed(name, function))
        start = time.perf_counter()
        run()
        whole = time.perf_counter() - start
    finally:
        for name, function in saved.items():
            setattr(*decoder_part(name), function)
    lines = [f"whole decode: {1000 * whole / prompts:.2f} ms per prompt", ""]
    lines += [f"{name:34s} {1000 * totals[name] / prompts:6.2f} ms per prompt" for name in DECODER_PARTS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="profile_stages.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", choices=["encoder", "dinov2", "decoder"], required=True)
    parser.add_argument("--stock", action="store_true", help="transformers' own SAM2 encoder")
    parser.add_argument("--prompts", type=int, default=64, help="decoder prompts")
    parser.add_argument("--rows", type=int, default=20, help="operators shown")
    parser.add_argument("--image", type=Path, default=HERE / "data" / "coffee.png")
    args = parser.parse_args(argv)
    runtime.retain_freed_memory()  # the refseg command's policy (huge pages: script_env)
    pixels = np.asarray(Image.open(args.image).convert("RGB"))
    if args.stage == "dinov2":
        encoder = load_encoder(checkpoint_dir("dinov2-large"), device="cpu")
        square = proposer_input(pixels, 1024)
        inputs = encoder_input(square, encoder.identity.input_size)
        print(_operator_table(lambda: encoder.encode(inputs), args.rows))
        return 0
    proposer = load_proposer(
        checkpoint_dir("sam2-hiera-large"), device="cpu", encoder="stock" if args.stock else "lean"
    )
    square = proposer_input(pixels, proposer.image_size)[0]
    if args.stage == "encoder":
        print(_operator_table(lambda: proposer.embed(square), args.rows))
        return 0
    embedding = proposer.embed(square)
    side = int(np.ceil(np.sqrt(args.prompts)))
    points = matching.point_grid(side, proposer.image_size)[: args.prompts]

    def run():
        return proposer.decode_points(embedding, points, batch_size=64, iou_threshold=-1.0)

    print(_operator_table(run, args.rows))
    print(_decoder_parts(run, args.prompts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
