#!/usr/bin/env python
"""The web page's speed with the ``fast`` preset's models: live previews and a large reference.

Random-weight checkpoints of the real architectures (SAM2.1 Hiera-T and DINOv2-S, built by
``bench_models.py``; every timing is the real model's, only the masks are meaningless) stand
behind the page, as ``refseg app --preset fast`` serves it. Two things are measured, each on
the server alone (the page's own functions, in this process) and end to end in headless
Chromium (Debian's /usr/bin/chromium through Playwright; skipped without them):

1. **Preview latency.** A picture is uploaded (SAM2 embeds it once), then prompts are given one
   after another (points, shift+click negatives, a box): each one's time from the mouse button
   going up to the new mask shown over the picture (browser), and the handler's work alone
   (server: decode against the kept embedding, mask at the preview's size, overlay PNG).
2. **A large reference.** An 8000x6000 JPEG (photo-like grain, ~16 MB): upload -> ready to
   click (read, preview, SAM2 embedding), one click -> preview, Accept -> added (SAM2's mask at
   full size, the DINOv2 feature of its crop, thumbnail, memory file), and the total; the same
   picture marked by its mask file (a 400x400 square) for what a real object costs.

The server side runs in a worker thread, as gradio runs the page's handlers (see
:func:`in_worker_thread`: on a loaded machine it is not the same).

    python benchmarks/bench_page.py                         # both, ~2 minutes here
    python benchmarks/bench_page.py --no-browser --clicks 20 --json page.json

Timings on a shared machine move with its load; the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import script_env  # noqa: F401  (before torch: offline, huge pages, refseg on the path)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # chromium.py: how refseg starts headless Chromium

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_models import PRESET_MODELS, checkpoint_dir  # noqa: E402
from chromium import CHROMIUM, free_port, open_page  # noqa: E402
from PIL import Image  # noqa: E402

from refseg import Segmenter, runtime  # noqa: E402
from refseg.app import draft, pictures, views  # noqa: E402
from refseg.app import session as actions  # noqa: E402

PICTURE = HERE / "data" / "coffee.png"
# (kind, x, y) as fractions of the picture, or ("box", x1, y1, x2, y2): what a person does
# while marking: a point, refinements on and off the object, a box.
PROMPTS: list[tuple] = [
    ("pos", 0.50, 0.55), ("neg", 0.20, 0.30), ("pos", 0.45, 0.62), ("neg", 0.80, 0.20),
    ("box", 0.25, 0.30, 0.75, 0.85), ("pos", 0.55, 0.50),
]  # fmt: skip


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 1),
        "p90_ms": round(ordered[int(0.9 * (len(values) - 1))], 1),
        "max_ms": round(max(values), 1),
    }


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def prompt_sequence(count: int) -> list[tuple]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(count)]


def event(prompt: tuple) -> dict[str, Any]:
    if prompt[0] == "box":
        return dict(zip(("kind", "x1", "y1", "x2", "y2"), prompt, strict=True))
    return dict(zip(("kind", "x", "y"), prompt, strict=True))


def large_picture(folder: Path) -> Path:
    """An 8000x6000 JPEG with photo-like grain and a green square at x 6000..6400, y 1000..1400
    (its mask beside it, ``big.mask.png``)."""
    rng = np.random.default_rng(0)
    big = np.zeros((6000, 8000, 3), np.uint8)
    big[:] = np.linspace(60, 200, 8000, dtype=np.uint8)[None, :, None]
    big += rng.integers(0, 40, big.shape, dtype=np.uint8)
    big[1000:1400, 6000:6400] = (30, 200, 60)
    path = folder / "big.jpg"
    Image.fromarray(big).save(path, quality=90)
    mask = np.zeros((6000, 8000), np.uint8)
    mask[1000:1400, 6000:6400] = 255
    Image.fromarray(mask).save(folder / "big.mask.png")
    return path


# --------------------------------------------------------------------------- server side


def server_previews(segmenter: Segmenter, path: Path, clicks: int) -> dict[str, Any]:
    """What the page's prompt handler does per prompt, timed on its own."""
    proposer = segmenter.proposer
    picture = pictures.read_picture(path)
    embed_s, marking = timed(lambda: draft.start_draft(proposer, picture))
    preview_shape = picture.preview.shape[:2]
    per_prompt: list[float] = []
    for prompt in prompt_sequence(clicks):
        start = time.perf_counter()
        marking.add(draft.prompt_from_event(event(prompt), picture.width, picture.height))
        mask = draft.draft_mask(proposer, marking, preview_shape)
        views.prompt_view(marking, mask, seq=len(per_prompt) + 1)
        per_prompt.append(1000 * (time.perf_counter() - start))
    return {
        "picture": f"{path.name} ({picture.width}x{picture.height})",
        "embed_once_s": round(embed_s, 2),
        "per_prompt": summary(per_prompt),
        "raw_ms": [round(v, 1) for v in per_prompt],
    }


def server_large_reference(segmenter: Segmenter, path: Path) -> dict[str, float]:
    """The page's steps for one large reference, timed on their own."""
    models = actions.SharedModels(segmenter)
    state = actions.SessionState(workdir=tempfile.mkdtemp(prefix="bench-page-"))
    read_s, picture = timed(lambda: pictures.read_picture(path))
    embed_s, marking = timed(lambda: draft.start_draft(segmenter.proposer, picture))
    marking.add(draft.Prompt("pos", 6200.0, 1200.0))
    preview_s, _ = timed(
        lambda: views.prompt_view(
            marking, draft.draft_mask(segmenter.proposer, marking, picture.preview.shape[:2]), 1
        )
    )
    mask_s, mask = timed(lambda: draft.draft_mask(segmenter.proposer, marking))
    source = {**draft.describe_prompts(marking.prompts, picture.width, picture.height), "file": picture.name}
    add_s, _ = timed(
        lambda: actions.add_reference(models, state, "green", picture.pixels, mask, source=source)
    )
    file_s, _ = timed(lambda: actions.memory_file(state))
    # Random weights make a mask of any size, and an add costs more the larger the object's crop
    # (its pixels are resized to DINOv2's input). The picture's real object, the 400x400 square,
    # costs what a trained SAM2's mask of it would.
    square = np.zeros_like(mask)
    square[1000:1400, 6000:6400] = True
    square_s, _ = timed(
        lambda: actions.add_reference(models, state, "green", picture.pixels, square, source=source)
    )
    first = read_s + embed_s + preview_s + mask_s + file_s
    return {
        "read_and_preview_s": round(read_s, 2),
        "sam2_embedding_s": round(embed_s, 2),
        "one_preview_s": round(preview_s, 2),
        "full_size_mask_s": round(mask_s, 2),
        f"add_reference_s (SAM2's mask: {mask.mean():.0%} of the picture)": round(add_s, 2),
        "add_reference_s (the 400x400 square)": round(square_s, 2),
        "memory_file_s": round(file_s, 2),
        "total_s (SAM2's mask)": round(first + add_s, 2),
        "total_s (the square)": round(first + square_s, 2),
    }


def in_worker_thread(function: Callable[[], Any]) -> Any:
    """Run ``function`` in a thread of its own, as gradio runs the page's handlers.

    It matters on a loaded machine: here (load average ~9 on 2 cores) SAM2's decoder took 1.2 s
    per prompt in the main thread and 0.2 s in a worker thread, both with torch's 2 threads.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 (re-raised in the caller)
            outcome["error"] = error

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --------------------------------------------------------------------------- in the browser

# Time from the mouse button going up to the frame after the new overlay is decoded.
INSTRUMENT = """() => {
  window.__latency = [];
  const root = document.querySelector('#reference-canvas .pc-root');
  const stage = root.querySelector('.pc-stage');
  const overlay = root.querySelector('.pc-overlay');
  stage.addEventListener('pointerup', () => { window.__t0 = performance.now(); }, true);
  new MutationObserver(() => {
    const t0 = window.__t0;
    if (t0 === undefined) return;
    window.__t0 = undefined;
    const done = () => requestAnimationFrame(() => window.__latency.push(performance.now() - t0));
    overlay.decode().then(done, done);
  }).observe(root, {attributes: true, attributeFilter: ['data-shown-seq']});
}"""


def browser_run(segmenter: Segmenter, picture: Path, big: Path, clicks: int) -> dict[str, Any]:
    from playwright.sync_api import expect

    from refseg.app import build_app, launch

    demo = build_app(segmenter)
    url = launch(demo, port=free_port(), block=False, quiet=True)
    record: dict[str, Any] = {}
    try:
        with open_page(url, timeout_ms=300_000) as page:
            page.wait_for_selector("#reference-canvas .pc-root")
            root = page.locator("#reference-canvas .pc-root")
            message = page.locator("#message .msg")

            def upload(path: Path) -> float:
                start = time.perf_counter()
                page.locator("#reference-upload input[type=file]").set_input_files(str(path))
                expect(message).to_contain_text(f"{path.name}: click the object")
                return time.perf_counter() - start

            def prompt(spec: tuple) -> None:
                image = page.locator("#reference-canvas .pc-picture")
                image.scroll_into_view_if_needed()
                box = image.bounding_box()
                shown = int(root.get_attribute("data-shown-seq") or 0)
                at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])  # noqa: E731
                if spec[0] == "box":
                    page.mouse.move(*at(spec[1], spec[2]))
                    page.mouse.down()
                    page.mouse.move(*at(spec[3], spec[4]), steps=5)
                    page.mouse.up()
                else:
                    if spec[0] == "neg":
                        page.keyboard.down("Shift")
                    page.mouse.click(*at(spec[1], spec[2]))
                    if spec[0] == "neg":
                        page.keyboard.up("Shift")
                expect(root).to_have_attribute("data-shown-seq", str(shown + 1))

            record["upload_to_ready_s"] = round(upload(picture), 2)
            page.evaluate(INSTRUMENT)
            for spec in prompt_sequence(clicks):
                prompt(spec)
            page.wait_for_function(f"() => window.__latency.length >= {clicks}")
            latencies = page.evaluate("window.__latency")
            record["click_to_mask_shown"] = summary(latencies)
            record["raw_ms"] = [round(v, 1) for v in latencies]

            start = time.perf_counter()
            ready = upload(big)
            before = time.perf_counter()
            prompt(("pos", 6200 / 8000, 1200 / 6000))
            preview = time.perf_counter() - before
            page.locator("#class-name textarea, #class-name input").first.fill("green")
            before = time.perf_counter()
            page.locator("#accept").click()
            expect(message).to_contain_text("Added reference")
            accepted = time.perf_counter() - before
            marked = page.locator("#references .rl-row").first.inner_text()
            record["large_8000x6000"] = {
                "file_mb": round(big.stat().st_size / 1e6, 1),
                "upload_to_ready_s": round(ready, 2),
                "click_to_preview_s": round(preview, 2),
                "accept_to_added_s": round(accepted, 2),
                "total_s (no think time)": round(time.perf_counter() - start, 2),
                "reference": " ".join(marked.split()),
            }
            # The same picture marked by its mask file (the square): what a real object costs.
            start = time.perf_counter()
            ready = upload(big)
            page.get_by_role("tab", name="Image + mask file").click()
            page.locator("#mask-upload input[type=file]").set_input_files(str(big.with_name("big.mask.png")))
            expect(message).to_contain_text("big.mask.png read")
            page.locator("#add-masked").click()
            expect(message).to_contain_text("Added reference #1")
            record["large_8000x6000_mask_file"] = {
                "upload_to_ready_s": round(ready, 2),
                "total_s (no think time)": round(time.perf_counter() - start, 2),
                "preview_sent_px": page.locator("#reference-canvas .pc-picture").evaluate(
                    "i => [i.naturalWidth, i.naturalHeight]"
                ),
            }
    finally:
        demo.close()
    return record


# --------------------------------------------------------------------------- main


def load_segmenter(args: argparse.Namespace) -> Segmenter:
    sam2_name, encoder_name = PRESET_MODELS["fast"]
    sam2 = args.sam2 or checkpoint_dir(sam2_name)
    encoder = args.encoder or checkpoint_dir(encoder_name)
    return Segmenter.from_pretrained("fast", sam2=sam2, encoder=encoder, device="cpu")


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Machine: {report['machine']}, torch {report['torch']} ({report['threads']} threads); "
        f"load average before {report['load_before']}, after {report['load_after']}",
        f"Models: {report['models']}",
        f"Command: `{report['command']}`",
        "",
        "| what | median | p90 | max |",
        "|---|---:|---:|---:|",
    ]
    server = report["server"]["previews"]["per_prompt"]
    lines.append(f"| server: one prompt -> preview mask + overlay | {server['median_ms']} ms | {server['p90_ms']} ms "
                 f"| {server['max_ms']} ms |")  # fmt: skip
    if "browser" in report:
        shown = report["browser"]["click_to_mask_shown"]
        lines.append(f"| browser: mouse up -> mask shown | {shown['median_ms']} ms | {shown['p90_ms']} ms | "
                     f"{shown['max_ms']} ms |")  # fmt: skip
    lines += ["", f"SAM2 embedding once per picture: {report['server']['previews']['embed_once_s']} s.", ""]
    lines += ["Large reference (8000x6000 JPEG):", "", "| step | seconds |", "|---|---:|"]
    for key, value in report["server"]["large"].items():
        lines.append(f"| server: {key} | {value} |")
    for key, value in report.get("browser", {}).get("large_8000x6000", {}).items():
        lines.append(f"| browser, a click: {key} | {value} |")
    for key, value in report.get("browser", {}).get("large_8000x6000_mask_file", {}).items():
        lines.append(f"| browser, the square's mask file: {key} | {value} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clicks", type=int, default=12, help="prompts given one after another (default 12)")
    parser.add_argument(
        "--picture", type=Path, default=PICTURE, help="the picture marked (default coffee.png)"
    )
    parser.add_argument("--sam2", help="a SAM2 checkpoint directory instead of the random Hiera-T")
    parser.add_argument("--encoder", help="a DINOv2 checkpoint directory instead of the random ViT-S")
    parser.add_argument("--no-browser", action="store_true", help="time the server side only")
    parser.add_argument("--json", type=Path, help="write the report here (and a .md beside it)")
    args = parser.parse_args(argv)
    runtime.tune_cpu_memory()
    report: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": "python benchmarks/bench_page.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "load_before": [round(v, 1) for v in os.getloadavg()],
    }
    segmenter = load_segmenter(args)
    report["models"] = f"fast preset: {segmenter.proposer!r}, DINOv2 {segmenter.encoder.identity.name}"
    with tempfile.TemporaryDirectory(prefix="bench-page-") as folder:
        big = large_picture(Path(folder))
        report["server"] = {
            "previews": in_worker_thread(lambda: server_previews(segmenter, args.picture, args.clicks)),
            "large": in_worker_thread(lambda: server_large_reference(segmenter, big)),
        }
        if not args.no_browser:
            if CHROMIUM.exists():
                report["browser"] = browser_run(segmenter, args.picture, big, args.clicks)
            else:
                print(f"no browser run: {CHROMIUM} not found", file=sys.stderr)
    report["load_after"] = [round(v, 1) for v in os.getloadavg()]
    text = markdown(report)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        args.json.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
