"""Size single differences at the stage where they act, on one target (measurement only).

For the SAM2 stage: decode the 32 x 32 grid under each combination of the 1024 resize
(refseg's torch bilinear vs Pillow bicubic on uint8, D1) and the no-memory embedding (added
vs not, D6), and compare each prompt's chosen mask and predicted IoU with a reference dump.
For the DINOv2 stage: the target features under each combination of D1 and the 518 resize
(antialias + clamp vs plain bicubic, D2), compared by cosine with the reference dump's sample.

    python benchmarks/fidelity/attribute_stages.py --sam2 DIR --encoder DIR --dump DUMP --image-id 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dumpformat as fmt
import numpy as np
import torch
from compare import cosine, mask_iou

from refseg import matching
from refseg.data.images import load_image
from refseg.models.loading import load_encoder, load_proposer
from refseg.preprocess import encoder_input, proposer_input


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sam2", required=True)
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--dump", type=Path, required=True, help="the reference dump (research code)")
    ap.add_argument("--inputs", type=Path, default=Path(__file__).parent / "inputs")
    ap.add_argument("--image-id", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    gt = json.loads((args.inputs / "targets_gt.json").read_text())
    info = next(i for i in gt["images"] if int(i["id"]) == args.image_id)
    pixels = load_image(args.inputs / "targets" / info["file_name"])
    ref = fmt.load_npz(args.dump / f"target_{args.image_id}.npz")
    ref_masks = fmt.decode_masks(ref["prompt_mask_rle"], (256, 256))
    out: dict = {"image_id": args.image_id, "sam2": {}, "dinov2": {}}
    squares = {resize: proposer_input(pixels, 1024, resize) for resize in ("torch", "pil")}
    proposer = load_proposer(args.sam2, device="cpu")
    points = matching.point_grid(32, 1024)  # x fastest: the dump format's canonical order
    for resize, square in squares.items():
        for add in (True, False):
            with torch.inference_mode():
                embedding = proposer.embed(square[0], no_memory_embedding=add)
                props = proposer.decode_points(embedding, points, batch_size=64, iou_threshold=-1.0)
            iou = mask_iou((props.low_res_logits > 0).numpy(), ref_masks)
            d = np.abs(props.predicted_iou.numpy() - ref["prompt_iou"])
            key = f"resize={resize} no_mem_embed={'added' if add else 'not added'}"
            out["sam2"][key] = {
                "mask_iou_min": float(iou.min()), "mask_iou_ge_0.99": int((iou >= 0.99).sum()),
                "pred_iou_absdiff_max": float(d.max()), "pred_iou_within_1e-4": int((d <= 1e-4).sum()),
                "survivors": int((props.predicted_iou > 0.4).sum()),
            }  # fmt: skip
            print(key, out["sam2"][key], flush=True)
    del proposer
    encoder = load_encoder(args.encoder, device="cpu")
    ref_feats = ref["features_sample"].astype(np.float32).reshape(ref["features_sample"].shape[0], -1).T
    for resize, square in squares.items():
        for dino in ("antialias+clamp", "plain"):
            x = encoder_input(square, 518, antialias=dino == "antialias+clamp")
            with torch.inference_mode():
                f = encoder.encode(x)[0].numpy()
            s = f[:, :: fmt.FEATURE_STRIDE, :: fmt.FEATURE_STRIDE].reshape(f.shape[0], -1).T
            c = cosine(s, ref_feats)
            key = f"resize={resize} dino_input={dino}"
            out["dinov2"][key] = {
                "cos_min": float(c.min()),
                "cos_median": float(np.median(c)),
                "ge_0.9999": int((c >= 0.9999).sum()),
                "n": len(c),
            }
            print(key, out["dinov2"][key], flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
