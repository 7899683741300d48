"""Make the CI golden set's inputs: three of the harness's targets, downscaled by 2.

Targets 1 (astronaut, 512 x 512 -> 256 x 256), 2 (rocket, 427 x 640 -> 214 x 320) and 5
(chelsea, 220 x 300 -> 110 x 150: a side well under SAM2's 256 low-resolution masks, so the
antialiased mask resize, D14, is a real downsampling), Lanczos-resized with Pillow and saved
as PNG (lossless: both programs decode the same pixels); their ground truth scaled alike.
The references are the harness's own (``inputs/references.json``, sampled at 2 shots).

    python benchmarks/fidelity/make_golden_inputs.py   # writes benchmarks/fidelity/golden/inputs/
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "inputs"
OUT = HERE / "golden" / "inputs"
TARGET_IDS = (1, 2, 5)


def main() -> None:
    gt = json.loads((SOURCE / "targets_gt.json").read_text())
    (OUT / "targets").mkdir(parents=True, exist_ok=True)
    images, factors = [], {}
    for info in gt["images"]:
        if info["id"] not in TARGET_IDS:
            continue
        picture = Image.open(SOURCE / "targets" / info["file_name"]).convert("RGB")
        width, height = round(info["width"] / 2), round(info["height"] / 2)
        picture.resize((width, height), Image.LANCZOS).save(OUT / "targets" / info["file_name"])
        factors[info["id"]] = (width / info["width"], height / info["height"])
        images.append({**info, "width": width, "height": height})
    annotations = []
    for ann in gt["annotations"]:
        if ann["image_id"] not in factors:
            continue
        fx, fy = factors[ann["image_id"]]
        polygons = [
            [round(v * (fx if k % 2 == 0 else fy), 2) for k, v in enumerate(p)] for p in ann["segmentation"]
        ]
        x, y, w, h = ann["bbox"]
        annotations.append(
            {
                **ann,
                "segmentation": polygons,
                "bbox": [round(x * fx, 2), round(y * fy, 2), round(w * fx, 2), round(h * fy, 2)],
                "area": round(ann["area"] * fx * fy, 2),
            }
        )
    out = {**gt, "images": images, "annotations": annotations}
    (OUT / "targets_gt.json").write_text(json.dumps(out, indent=1))
    print(f"{len(images)} targets, {len(annotations)} annotations -> {OUT}")


if __name__ == "__main__":
    main()
