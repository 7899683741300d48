#!/usr/bin/env python
"""What the encoder fingerprints cost: the legacy two-tensor hash and the hash of all weights.

Every encoder load computes both (``refseg.models.dinov2``): the legacy one so that memory files
of refseg 0.1.0 are compared like with like, the all-weights one so that an encoder with any
weight changed is refused. This times them on a random-weight DINOv2 of the real architecture
(ViT-L/14 by default, ~304 M parameters: what the ``paper`` preset loads), built in memory, and
prints the fastest of the repeats next to the size hashed.

    python benchmarks/bench_fingerprint.py                   # DINOv2-L, 3 repeats
    python benchmarks/bench_fingerprint.py --model dinov2-small --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import time

import script_env  # noqa: F401  (before torch: offline, huge pages, refseg on the path)
import torch  # noqa: E402
from bench_models import ARCHITECTURES  # noqa: E402
from transformers import Dinov2Model  # noqa: E402

from refseg.models.dinov2 import all_weights_fingerprint, weights_fingerprint  # noqa: E402


def fastest(function, model, repeats: int) -> tuple[float, str]:
    best, value = float("inf"), ""
    for _ in range(repeats):
        start = time.perf_counter()
        value = function(model)
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="dinov2-large", choices=["dinov2-large", "dinov2-small"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Dinov2Model(ARCHITECTURES[args.model].config()).eval()
    state = model.state_dict()
    parameters = sum(t.numel() for t in state.values())
    print(
        f"{args.model}: {len(state)} tensors, {parameters / 1e6:.1f} M values, {parameters * 4 / 2**30:.2f} GiB float32"
    )
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for name, function in (
        ("legacy (2 tensors)", weights_fingerprint),
        ("all weights", all_weights_fingerprint),
    ):
        seconds, digest = fastest(function, model, args.repeats)
        print(f"{name:<20} {seconds * 1000:8.1f} ms  {digest[:16]}...")


if __name__ == "__main__":
    main()
