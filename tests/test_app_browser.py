"""The web app in a real browser: headless Chromium drives the page served on localhost.

Tiny random-weight SAM2 and DINOv2 (the conftest fixtures) stand behind the page, so what is
checked is the plumbing (uploads, brush and box references, run, overlays, downloads), not
the quality of the masks. Screenshots go to test-artifacts/.

Needs Debian's chromium (/usr/bin/chromium) and Playwright for Python (never
``playwright install``); skipped with the reason when either is missing.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS
from PIL import Image

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip(
        "Chromium not found at /usr/bin/chromium: apt-get install -y chromium", allow_module_level=True
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed: pip install playwright"
)

from refseg import MemoryBank, Segmenter  # noqa: E402
from refseg.app import build_app, launch  # noqa: E402

BLUE_BOX = (20, 20, 60, 60)  # the blue square of the reference image, x1, y1, x2, y2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _picture(size: int, disc_centre: tuple[int, int], square: tuple[int, int, int, int]) -> np.ndarray:
    """Grey picture with a red disc (radius 30) and a blue square."""
    rng = np.random.default_rng(size)
    image = np.clip(rng.normal(128, 6, size=(size, size, 3)), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size]
    image[(xx - disc_centre[0]) ** 2 + (yy - disc_centre[1]) ** 2 <= 30**2] = (220, 40, 40)
    x1, y1, x2, y2 = square
    image[y1:y2, x1:x2] = (40, 70, 220)
    return image.round().astype(np.uint8)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("browser-images")
    paths = {"reference": folder / "reference.png", "target": folder / "target.png"}
    # The red disc sits at the image centre: a brush stroke at the canvas centre lands on it.
    Image.fromarray(_picture(200, (100, 100), BLUE_BOX)).save(paths["reference"])
    Image.fromarray(_picture(240, (70, 160), (150, 40, 200, 90))).save(paths["target"])
    return paths


@pytest.fixture(scope="module")
def app_url(tiny_models):
    proposer, encoder = tiny_models
    segmenter = Segmenter(proposer, encoder, preset="fast", points_per_side=8)
    demo = build_app(segmenter, score_threshold=0.0)
    url = launch(demo, host="127.0.0.1", port=_free_port(), block=False, quiet=True)
    yield url
    demo.close()


@pytest.fixture
def page(app_url):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(60_000)
            sync_api.expect.set_options(timeout=60_000)
            page.goto(app_url, wait_until="load")
            page.wait_for_selector("#run")
            yield page
        finally:
            browser.close()


def _screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"app-{name}.png"), full_page=True)


def _fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def _expect_summary(page, text: str) -> None:
    """Wait for the memory summary to say ``text``; on failure, report the page's messages."""
    try:
        sync_api.expect(page.locator("#memory-summary")).to_contain_text(text)
    except AssertionError as error:
        _screenshot(page, "failure")
        messages = page.locator(".toast-body").all_inner_texts()
        raise AssertionError(f"{error}\nmessages in the page: {messages}") from None


def _download(page, link_locator) -> bytes:
    response = page.request.get(link_locator.get_attribute("href"))
    assert response.ok, response.status
    return response.body()


def test_references_run_and_downloads_in_the_browser(page, pictures, tmp_path) -> None:
    expect = sync_api.expect

    # A user error is a message in the page, not a crash.
    page.locator("#add-reference").click()
    expect(page.get_by_text("Upload a reference image first.").first).to_be_visible()

    # Reference 1: typed box (SAM2 makes the mask).
    _fill(page, "class-name", "blue")
    page.locator("#reference-editor input[type=file]").set_input_files(str(pictures["reference"]))
    page.wait_for_timeout(1000)
    _fill(page, "reference-box", ", ".join(str(v) for v in BLUE_BOX))
    page.locator("#add-reference").click()
    _expect_summary(page, "1 reference(s)")

    # Reference 2: a brush stroke over the red disc at the centre of the canvas.
    _fill(page, "class-name", "red")
    page.locator("#reference-editor button[aria-label=Brush]").click()
    canvas = page.locator("#reference-editor canvas").first.bounding_box()
    cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    page.mouse.move(cx - 6, cy - 4)
    page.mouse.down()
    page.mouse.move(cx + 6, cy + 4, steps=6)
    page.mouse.up()
    page.wait_for_timeout(500)
    page.locator("#add-reference").click()
    _expect_summary(page, "2 reference(s) in 2 class(es)")
    expect(page.locator("#reference-gallery img")).to_have_count(2)

    # Reference 3: the picture stays, the stroke is cleared, so a typed box is what counts now.
    _fill(page, "class-name", "blue")
    _fill(page, "reference-box", ", ".join(str(v) for v in BLUE_BOX))
    page.locator("#add-reference").click()
    _expect_summary(page, "3 reference(s) in 2 class(es)")
    expect(page.locator("#reference-gallery img")).to_have_count(3)
    marked_by = re.findall(r"\b(box|mask)\b", page.locator("#reference-table").inner_text())
    assert marked_by == ["box", "mask", "box"]
    _screenshot(page, "references")

    # Targets: upload, run, see an overlay, download the COCO results.
    page.locator("#targets input[type=file]").set_input_files(str(pictures["target"]))
    expect(page.locator("#targets")).to_contain_text(re.compile(r"target\s*\.png"))  # name, extension
    page.locator("#run").click()
    expect(page.locator("#overlays img").first).to_be_visible()
    links = page.locator("#result-files a")
    expect(links).to_have_count(2)
    results = json.loads(_download(page, links.nth(0)))
    images = json.loads(_download(page, links.nth(1)))
    assert isinstance(results, list)
    assert all(r["image_id"] == 1 and r["category_id"] in (1, 2) for r in results)
    assert images["images"][0]["file_name"] == "target.png"
    assert [c["name"] for c in images["categories"]] == ["blue", "red"]
    _screenshot(page, "results")

    # The memory file round-trips.
    page.locator("#save-memory").click()
    memory_link = page.locator("#memory-file a").first
    expect(memory_link).to_be_visible()
    saved = tmp_path / "memory.safetensors"
    saved.write_bytes(_download(page, memory_link))
    bank = MemoryBank.load(saved)
    assert bank.counts() == {"blue": 2, "red": 1}
    assert [r.source["prompt"] for r in bank.references] == ["box", "mask", "box"]
