"""Make the documentation pictures in docs/images/ from the shipped example (examples/coins).

    python scripts/make_screenshots.py                      # tiny RANDOM-weight models (offline)
    python scripts/make_screenshots.py --sam2 DIR --encoder DIR [--preset fast]   # real weights

Writes:
- overlay.png: ground truth (left) and refseg's prediction (right) on examples/coins/targets,
  with the one reference coin of examples/coins/references in memory.
- memory.png: the memory picture of that reference (crop + PCA of its DINOv2 patch features).
- app-1-points.png ... app-8-message.png: the web app in headless Chromium, one picture per
  step of :data:`APP_STEPS` (marking by clicks and by a box, the reference list, results,
  corrections, a message); needs /usr/bin/chromium and ``pip install playwright``.

Without --sam2/--encoder the models are tiny and randomly initialised: the pictures then show
how refseg draws things, NOT what it finds, and each picture says so in a banner.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models.py and chromium.py: no side effects on import

from chromium import free_port, open_page  # noqa: E402

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


# The steps of the web app pictured in the README: (file, what the picture shows). The order is
# the order a person goes through them.
APP_STEPS = (
    ("app-1-points.png", "a click on the coin and a shift+click beside it: SAM2's mask at once"),
    ("app-2-box.png", "a box dragged around the coin instead"),
    ("app-3-mask-file.png", "the shipped image + mask file pair, the mask over the picture"),
    (
        "app-4-references.png",
        "the reference list (thumbnail, class, how marked, file, remove) after a removal",
    ),
    ("app-5-results.png", "Run: one large view with class colours, tags and legend, and the strip"),
    ("app-6-correct.png", "an instance clicked: Not coin / Background / Missed something"),
    ("app-7-missed.png", "Missed something: a click on the missed object, its mask previewed"),
    ("app-8-message.png", "an unreadable upload: one message, the file's name only"),
)


def _centre(mask: np.ndarray) -> tuple[float, float]:
    """The centre of a mask as fractions (x, y) of its picture."""
    ys, xs = np.nonzero(mask)
    return (xs.mean() + 0.5) / mask.shape[1], (ys.mean() + 0.5) / mask.shape[0]


def app_screenshots(segmenter, reference_mask: np.ndarray, out: Path, banner: str | None) -> list[Path]:
    """Drive the app in headless Chromium through the steps of :data:`APP_STEPS`, one picture each."""
    from playwright.sync_api import expect

    from refseg import Segmenter
    from refseg.app import build_app, launch

    fresh = Segmenter(segmenter.proposer, segmenter.encoder, preset=segmenter.settings)  # empty memory
    demo = build_app(fresh, score_threshold=0.0 if banner else 0.3)
    url = launch(demo, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    shots = Path(tempfile.mkdtemp())
    written = []
    try:
        with open_page(url, width=1280, height=1000, timeout_ms=300_000) as page:
            page.wait_for_selector("#reference-canvas .pc-root")
            message = page.locator("#message .msg")

            def shoot(name: str, column: str) -> None:
                page.wait_for_timeout(400)
                page.locator(f"#{column}").screenshot(path=str(shots / name))
                written.append(out / name)
                with_banner(Image.open(shots / name), banner).save(out / name, optimize=True)

            def click(canvas: str, fx: float, fy: float, modifier: str | None = None) -> None:
                root = page.locator(f"#{canvas} .pc-root")
                picture = page.locator(f"#{canvas} .pc-picture")
                picture.scroll_into_view_if_needed()
                box = picture.bounding_box()
                shown = int(root.get_attribute("data-shown-seq") or 0)
                if modifier:
                    page.keyboard.down(modifier)
                page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
                if modifier:
                    page.keyboard.up(modifier)
                expect(root).to_have_attribute("data-shown-seq", str(shown + 1))

            page.locator("#reference-upload input[type=file]").set_input_files(str(REFERENCE))
            expect(message).to_contain_text("click the object")
            page.locator("#class-name textarea, #class-name input").first.fill("coin")
            fx, fy = _centre(reference_mask)
            click("reference-canvas", fx, fy)
            click("reference-canvas", min(0.98, fx + 0.15), fy, modifier="Shift")
            shoot("app-1-points.png", "references-column")

            page.locator("#clear").click()
            expect(page.locator("#reference-canvas .pc-marks > *")).to_have_count(0)
            ys, xs = np.nonzero(reference_mask)
            height, width = reference_mask.shape
            box = page.locator("#reference-canvas .pc-picture").bounding_box()
            root = page.locator("#reference-canvas .pc-root")
            page.mouse.move(
                box["x"] + (xs.min() - 4) / width * box["width"],
                box["y"] + (ys.min() - 4) / height * box["height"],
            )
            page.mouse.down()
            page.mouse.move(
                box["x"] + (xs.max() + 5) / width * box["width"],
                box["y"] + (ys.max() + 5) / height * box["height"],
                steps=6,
            )
            page.mouse.up()
            expect(root).to_have_attribute("data-shown-seq", "3")
            shoot("app-2-box.png", "references-column")

            page.locator("#accept").click()
            expect(message).to_contain_text("Added reference #0")
            page.get_by_role("tab", name="Image + mask file").click()
            page.locator("#mask-upload input[type=file]").set_input_files(str(REFERENCE_MASK))
            expect(message).to_contain_text(f"{REFERENCE_MASK.name} read")
            shoot("app-3-mask-file.png", "references-column")
            page.locator("#add-masked").click()
            expect(message).to_contain_text("Added reference #1")
            page.locator("#references .rl-row[data-id='0'] .rl-remove").click()  # the box's: keep the file's
            expect(message).to_contain_text("Removed reference #0")
            shoot("app-4-references.png", "references-column")

            page.locator("#targets input[type=file]").set_input_files(str(TARGET))
            expect(message).to_contain_text("ready: press Run")
            page.locator("#run").click()
            expect(message).to_contain_text("Done:")
            shoot("app-5-results.png", "targets-column")

            overlay = page.locator("#result-canvas .pc-overlay").get_attribute("src") or ""
            if overlay.startswith("data:image/png;base64,"):  # click inside the first instance drawn
                alpha = np.asarray(
                    Image.open(io.BytesIO(base64.b64decode(overlay.split(",", 1)[1]))).convert("RGBA")
                )
                rows, cols = np.nonzero(alpha[..., 3] > 0)
                if len(rows):
                    middle = len(rows) // 2
                    click(
                        "result-canvas",
                        (cols[middle] + 0.5) / alpha.shape[1],
                        (rows[middle] + 0.5) / alpha.shape[0],
                    )
            shoot("app-6-correct.png", "targets-column")

            page.locator("#missed").click()
            expect(message).to_contain_text("Click the object refseg missed")
            click("result-canvas", 0.5, 0.5)
            shoot("app-7-missed.png", "targets-column")
            page.locator("#missed-cancel").click()

            bad = shots / "holiday.jpg"
            bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG" + bytes(64))
            page.locator("#reference-upload input[type=file]").set_input_files(str(bad))
            expect(message).to_contain_text("Could not read holiday.jpg")
            page.evaluate("() => window.scrollTo(0, 0)")
            page.wait_for_timeout(300)
            page.screenshot(
                path=str(shots / "message.png"), clip={"x": 0, "y": 0, "width": 1280, "height": 520}
            )
            with_banner(Image.open(shots / "message.png"), banner).save(
                out / "app-8-message.png", optimize=True
            )
            written.append(out / "app-8-message.png")
    finally:
        demo.close()
    return written


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
        for path in app_screenshots(segmenter, reference_mask, args.out, banner):
            logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
