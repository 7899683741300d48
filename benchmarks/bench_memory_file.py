#!/usr/bin/env python
"""What a memory file with many classes costs: save, load (with its validation) and describe.

Banks of K classes with one reference each (DINOv2-S sized features, 384-d) are built in
memory, then saved, loaded and described (what ``refseg memory info`` prints), each timed once
per size; the fastest of the repeats is printed.

    python benchmarks/bench_memory_file.py                       # 1,000 and 10,000 classes
    python benchmarks/bench_memory_file.py --classes 100000 --repeats 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import script_env  # noqa: F401  (before torch: offline, huge pages, refseg on the path)
import torch  # noqa: E402

from refseg.memory import MemoryBank  # noqa: E402
from refseg.models.base import EncoderIdentity  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'classes':>8} {'add':>8} {'save':>8} {'load':>8} {'describe':>9}  (seconds, best of {args.repeats})"
    )
    for count in args.classes:
        best = [float("inf")] * 4
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as folder:
                features = torch.rand(count, args.dim) + 0.01
                start = time.perf_counter()
                bank = MemoryBank(EncoderIdentity("enc", "r", 518, args.dim))
                for k in range(count):
                    bank.add(features[k], f"class {k}", {"file": f"{k}.jpg"})
                added = time.perf_counter()
                path = bank.save(Path(folder) / "memory.safetensors")
                saved = time.perf_counter()
                loaded = MemoryBank.load(path)
                read = time.perf_counter()
                loaded.describe()
                described = time.perf_counter()
            times = [added - start, saved - added, read - saved, described - read]
            best = [min(a, b) for a, b in zip(best, times, strict=True)]
        print(f"{count:>8} {best[0]:8.2f} {best[1]:8.2f} {best[2]:8.2f} {best[3]:9.2f}")


if __name__ == "__main__":
    main()
