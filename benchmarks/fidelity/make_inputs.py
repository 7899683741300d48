"""Make the fidelity harness's inputs: target images, reference images and COCO jsons.

Natural photos from scikit-image's sample data (public domain / CC0, see INPUTS.md), cut and
saved as PNG (lossless, so both programs decode the same pixels). Objects are hand-made
ellipse polygons: with random weights only geometry and pixels matter, not semantics.
Deterministic; needs ``pip install scikit-image`` (not a refseg dependency).

    python benchmarks/fidelity/make_inputs.py   # writes benchmarks/fidelity/inputs/
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent / "inputs"
CATEGORIES = [{"id": 3, "name": "alpha"}, {"id": 7, "name": "beta"}, {"id": 11, "name": "gamma"}]


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> list[float]:
    poly = []
    for k in range(n):
        t = 2 * math.pi * k / n
        poly += [round(cx + rx * math.cos(t), 2), round(cy + ry * math.sin(t), 2)]
    return poly


def annotation(ann_id: int, image_id: int, category_id: int, poly: list[float], iscrowd: int = 0) -> dict:
    xs, ys = poly[0::2], poly[1::2]
    x, y = min(xs), min(ys)
    w, h = max(xs) - x, max(ys) - y
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": [poly],
        "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
        "area": round(math.pi * w * h / 4, 2),
        "iscrowd": iscrowd,
    }


def sample(name: str) -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    return np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]


def main() -> None:
    (OUT / "targets").mkdir(parents=True, exist_ok=True)
    (OUT / "references").mkdir(parents=True, exist_ok=True)
    # ---- targets: five sizes and aspect ratios, one under 256 px on a side
    targets = {
        "astronaut.png": sample("astronaut"),  # 512 x 512
        "rocket.png": sample("rocket"),  # 427 x 640
        "coins.png": sample("coins"),  # 303 x 384, grey
        "coffee.png": sample("coffee"),  # 400 x 600
        "chelsea_small.png": sample("chelsea")[40:260, 100:400],  # 220 x 300
    }
    rng = np.random.default_rng(10)
    images, anns = [], []
    for image_id, (name, pixels) in enumerate(targets.items(), start=1):
        Image.fromarray(pixels).save(OUT / "targets" / name)
        h, w = pixels.shape[:2]
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for _ in range(4):
            rx, ry = rng.uniform(0.06, 0.16) * w, rng.uniform(0.06, 0.16) * h
            cx, cy = rng.uniform(rx + 2, w - rx - 2), rng.uniform(ry + 2, h - ry - 2)
            cat = CATEGORIES[int(rng.integers(3))]["id"]
            anns.append(annotation(len(anns) + 1, image_id, cat, ellipse(cx, cy, rx, ry)))
    gt = {"images": images, "annotations": anns, "categories": CATEGORIES}
    (OUT / "targets_gt.json").write_text(json.dumps(gt, indent=1))

    # ---- references: 7 crops of other photos, three objects each (one per class), plus
    # annotations the sampler must skip (small, near the border, crowd)
    sources = [("chelsea", (0, 300, 0, 451)), ("hubble_deep_field", (0, 600, 0, 700)), ("coffee", (0, 400, 0, 600)),
               ("astronaut", (100, 512, 0, 512)), ("rocket", (0, 427, 100, 640)), ("retina", (400, 1000, 300, 1100)),
               ("hubble_deep_field", (200, 872, 300, 1000))]  # fmt: skip
    images, anns = [], []
    for image_id, (name, (y0, y1, x0, x1)) in enumerate(sources, start=1):
        pixels = sample(name)[y0:y1, x0:x1]
        file_name = f"ref{image_id}_{name}.png"
        Image.fromarray(np.ascontiguousarray(pixels)).save(OUT / "references" / file_name)
        h, w = pixels.shape[:2]
        images.append({"id": 100 + image_id, "file_name": file_name, "height": h, "width": w})
        for cat in CATEGORIES:
            rx, ry = rng.uniform(0.08, 0.2) * w, rng.uniform(0.08, 0.2) * h
            cx, cy = rng.uniform(rx + 12, w - rx - 12), rng.uniform(ry + 12, h - ry - 12)
            anns.append(annotation(1000 + len(anns), 100 + image_id, cat["id"], ellipse(cx, cy, rx, ry)))
        cat = CATEGORIES[image_id % 3]["id"]
        anns.append(annotation(1000 + len(anns), 100 + image_id, cat, ellipse(40, 40, 10, 12)))  # too small
        anns.append(
            annotation(1000 + len(anns), 100 + image_id, cat, ellipse(w - 40, h / 2, 36, 40))
        )  # border
        anns.append(
            annotation(1000 + len(anns), 100 + image_id, cat, ellipse(w / 2, h / 2, 30, 30), iscrowd=1)
        )
    refs = {"images": images, "annotations": anns, "categories": CATEGORIES}
    (OUT / "references.json").write_text(json.dumps(refs, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
