"""Make the documentation pictures in docs/images/ from the shipped example (examples/coins).

    python scripts/make_screenshots.py                      # tiny RANDOM-weight models (offline)
    python scripts/make_screenshots.py --sam2 DIR --encoder DIR [--preset fast]   # real weights

Writes:
- overlay.png: ground truth (left) and refseg's prediction (right) on examples/coins/targets,
  with the one reference coin of examples/coins/references in memory.
- memory.png: the memory picture of that reference (crop + PCA of its DINOv2 patch features).
- app.png: the web app in headless Chromium after adding the reference (a typed box) and
  running on the target (needs /usr/bin/chromium and ``pip install playwright``).

Without --sam2/--encoder the models are tiny and randomly initialised: the pictures then show
how refseg draws things, NOT what it finds, and each picture says so in a banner.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models.py and chromium.py: no side effects on import

from chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

EXAMPLE = ROOT / "examples" / "coins"
REFERENCE = EXAMPLE / "references" / "coin" / "coins_top.png"
REFERENCE_MASK = EXAMPLE / "references" / "coin" / "coins_top.mask.png"
TARGET = EXAMPLE / "targets" / "coins_bottom.png"
GROUND_TRUTH = EXAMPLE / "targets_gt.json"
RANDOM_BANNER = "tiny RANDOM-weight models: this shows how refseg draws results, not what it finds"
logger = logging.getLogger("make_screenshots")


def tiny_random_models(folder: Path) -> tuple[Path, Path]:
    """Save a tiny random SAM2 (real 1024 input) and DINOv2 (518 input) under ``folder``: the
    test suite's tiny configurations (tests/tiny_models.py)."""
    import torch
    from tiny_models import tiny_dinov2_config, tiny_sam2_config
    from transformers import Dinov2Model, Sam2Model

    torch.manual_seed(0)
    Sam2Model(tiny_sam2_config()).save_pretrained(folder / "sam2")
    Dinov2Model(tiny_dinov2_config()).save_pretrained(folder / "dinov2")
    return folder / "sam2", folder / "dinov2"


def with_banner(picture: Image.Image, text: str | None) -> Image.Image:
    """``picture`` with ``text`` in a red strip below it (unchanged if ``text`` is None)."""
    if text is None:
        return picture
    font = ImageFont.load_default(size=max(12, min(22, picture.width // 45)))
    height = int(font.size * 1.8)
    framed = Image.new("RGB", (picture.width, picture.height + height), (190, 20, 40))
    framed.paste(picture.convert("RGB"), (0, 0))
    ImageDraw.Draw(framed).text((8, picture.height + height // 2), text, fill="white", font=font, anchor="lm")
    return framed


def ground_truth_instances(height: int, width: int):
    from refseg import Instances
    from refseg.masks import masks_to_boxes_exclusive as masks_to_boxes
    from refseg.masks import segmentation_to_mask

    data = json.loads(GROUND_TRUTH.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    masks = np.stack([segmentation_to_mask(a["segmentation"], height, width) for a in data["annotations"]])
    classes = list(names.values())
    labels = np.array([classes.index(names[a["category_id"]]) for a in data["annotations"]], dtype=np.int64)
    return Instances(masks, masks_to_boxes(masks), np.ones(len(labels), np.float32), labels, classes)


def mask_box_text(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    return f"{xs.min()}, {ys.min()}, {xs.max() + 1}, {ys.max() + 1}"


def app_screenshot(segmenter, reference_box: str, path: Path, banner: str | None) -> None:
    """Drive the app in headless Chromium: one reference by box, one run; screenshot the page."""
    from playwright.sync_api import expect, sync_playwright

    from refseg import Segmenter
    from refseg.app import build_app, launch

    fresh = Segmenter(segmenter.proposer, segmenter.encoder, preset=segmenter.settings)  # empty memory
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = build_app(fresh, score_threshold=0.0 if banner else 0.3)
    url = launch(demo, host="127.0.0.1", port=port, block=False, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(300_000)
            expect.set_options(timeout=300_000)
            page.goto(url, wait_until="load")
            page.wait_for_selector("#run")
            page.locator("#class-name textarea, #class-name input").first.fill("coin")
            page.locator("#reference-editor input[type=file]").set_input_files(str(REFERENCE))
            page.wait_for_timeout(1000)
            page.locator("#reference-box textarea, #reference-box input").first.fill(reference_box)
            page.locator("#add-reference").click()
            expect(page.locator("#memory-summary")).to_contain_text("1 reference(s)")
            page.locator("#targets input[type=file]").set_input_files(str(TARGET))
            expect(page.locator("#targets")).to_contain_text(re.compile(rf"{TARGET.stem}\s*\{TARGET.suffix}"))
            page.locator("#run").click()
            expect(page.locator("#overlays img").first).to_be_visible()
            expect(page.locator("#result-files a")).to_have_count(2)
            page.wait_for_timeout(1000)
            shot = Path(tempfile.mkdtemp()) / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    finally:
        demo.close()
    with_banner(Image.open(shot), banner).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sam2", help="SAM2 hub id or directory (real weights)")
    parser.add_argument("--encoder", help="DINOv2 hub id or directory (real weights)")
    parser.add_argument("--preset", default="fast", help="preset for real weights (default: fast)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="output folder")
    parser.add_argument("--no-app", action="store_true", help="skip the browser screenshot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from refseg import Segmenter
    from refseg.data.images import load_image
    from refseg.references import read_mask
    from refseg.viz import draw_side_by_side, memory_picture

    if (args.sam2 is None) != (args.encoder is None):
        parser.error("give both --sam2 and --encoder (real weights), or neither (tiny random models)")
    if args.sam2 is None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        sam2, encoder = tiny_random_models(Path(tempfile.mkdtemp(prefix="refseg-tiny-")))
        segmenter = Segmenter.from_pretrained("fast", sam2=sam2, encoder=encoder, device="cpu")
        banner: str | None = RANDOM_BANNER
        logger.info("no real weights given: using tiny RANDOM-weight models (pictures carry a banner)")
    else:
        segmenter = Segmenter.from_pretrained(args.preset, sam2=args.sam2, encoder=args.encoder)
        banner = None

    reference = load_image(REFERENCE)
    reference_mask = read_mask(REFERENCE_MASK) > 0
    segmenter.add_reference(reference, "coin", mask=reference_mask, source={"file": str(REFERENCE)})
    target = load_image(TARGET)
    logger.info("predicting %s", TARGET.name)
    predicted = segmenter.predict(target)
    truth = ground_truth_instances(*target.shape[:2])

    args.out.mkdir(parents=True, exist_ok=True)
    sheet = draw_side_by_side(target, predicted, truth, score_threshold=0.0 if banner else 0.3)
    with_banner(sheet, banner).save(args.out / "overlay.png", optimize=True)
    picture = memory_picture(segmenter.encoder, [(reference, reference_mask, "coin")], tile_size=160)
    with_banner(picture, banner and "tiny RANDOM-weight DINOv2: colours mean nothing").save(
        args.out / "memory.png", optimize=True
    )
    logger.info("wrote %s and %s", args.out / "overlay.png", args.out / "memory.png")
    if not args.no_app:
        app_screenshot(segmenter, mask_box_text(reference_mask), args.out / "app.png", banner)
        logger.info("wrote %s", args.out / "app.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
