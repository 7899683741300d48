"""Dump every stage of refseg's computation (the ``paper`` preset) in the fidelity format.

Calls refseg's own functions stage by stage, in the order ``Segmenter.predict`` and
``Segmenter.add_reference`` call them, so each recorded array is what predict computes:

    sample_references -> per reference: context crop, encoder input, soft mask, pooled
    feature -> prototypes -> per target: proposer input, SAM2 embedding, every prompt's
    three outputs, IoU filter, encoder input and features, pooling, scores and labels,
    NMS, cap, upsampling, soft merging, top-k -> results json -> refseg's evaluation.

The final instances are checked against ``Segmenter.predict`` on every image (same masks,
scores and labels), so the stage dumps cannot drift from what refseg returns.

    python benchmarks/fidelity/dump_refseg.py --sam2 DIR --encoder DIR \
        --inputs benchmarks/fidelity/inputs --out benchmarks/fidelity/dumps/refseg

See FORMAT.md for the files written.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import dumpformat as fmt
import numpy as np
import torch

from refseg import dedup, matching
from refseg.data.images import load_image
from refseg.data.sampling import sample_references
from refseg.evaluate import evaluate
from refseg.instances import Instances
from refseg.masks import decode_mask, masks_to_boxes_inclusive
from refseg.models.inputs import imagenet_normalize
from refseg.models.loading import load_encoder, load_proposer
from refseg.preprocess import encoder_input, proposer_input
from refseg.reference_features import context_crop_box, crop_centre_box, pool_reference, reference_inputs
from refseg.references import annotation_box
from refseg.segmenter import Segmenter

CHECK = True  # run add_reference / predict too and assert the dump equals them (--no-check: half the time)


def dump_references(seg: Segmenter, refs: dict, root: Path, out: Path) -> None:
    ids, cats, boxes, crop_boxes, enc_stats, soft_sums, weights, feats = [], [], [], [], [], [], [], []
    images = {int(i["id"]): i for i in refs["images"]}
    names = {int(c["id"]): c["name"] for c in refs["categories"]}
    size = seg.encoder.identity.input_size
    grid = size // seg.encoder.patch_size
    s = seg.settings
    for ann in refs["annotations"]:
        info = images[int(ann["image_id"])]
        pixels = load_image(root / info["file_name"])
        mask = decode_mask(ann["segmentation"], pixels.shape[:2])
        box = annotation_box(ann)  # what add_coco_references hands add_reference with the mask
        crop, soft = reference_inputs(
            pixels, mask, size, s.context_ratio, box=box, convention=s.reference_crop
        )
        with torch.inference_mode():
            features = seg.encoder.encode(crop[None])[0].float().cpu()
        w37 = torch.nn.functional.interpolate(soft[None, None], size=(grid, grid), mode="nearest")[0, 0]
        feature = pool_reference(features, soft)
        if CHECK:
            seg.add_reference(pixels, names[int(ann["category_id"])], mask=mask, box=box)
            assert torch.equal(seg.memory.reference_features[-1], feature), "dump and add_reference differ"
        else:
            seg.memory.add(feature, names[int(ann["category_id"])], reference_crop=s.reference_crop)
        centre = crop_centre_box(mask, box, s.reference_crop)
        ids.append(int(ann["id"]))
        cats.append(int(ann["category_id"]))
        boxes.append(centre)
        crop_boxes.append(context_crop_box(centre, pixels.shape[:2], s.context_ratio, s.reference_crop))
        enc_stats.append(fmt.channel_stats(crop.numpy()))
        soft_sums.append(float(soft.sum()))
        weights.append(w37.numpy().astype(np.float16))
        feats.append(feature.numpy())
    fmt.save_npz(
        out / "references.npz",
        annotation_ids=np.array(ids),
        category_ids=np.array(cats),
        instance_boxes=np.array(boxes, dtype=np.float64),
        crop_boxes=np.array(crop_boxes, dtype=np.int64),
        encoder_input_stats=np.array(enc_stats),
        soft_mask_sums=np.array(soft_sums),
        patch_weights=np.array(weights),
        features=np.array(feats, dtype=np.float32),
    )


def dump_target(seg: Segmenter, path: Path, image_id: int, category_ids: list[int], out: Path) -> list[dict]:
    s = seg.settings
    pixels = load_image(path)
    height, width = pixels.shape[:2]
    prototypes = seg.memory.prototypes()
    proposer = seg.proposer
    with torch.inference_mode():
        square = proposer_input(pixels, proposer.image_size, s.proposer_resize)
        embedding = proposer.embed(square[0], no_memory_embedding=s.no_memory_embedding)
        points = matching.point_grid(s.points_per_side, proposer.image_size, s.grid_order)
        # every prompt: the best of its three multimask outputs, as the proposer's decoder computes them
        everything = proposer.decode_points(
            embedding, points, batch_size=s.points_batch_size, iou_threshold=-1.0
        )
        all_iou = everything.predicted_iou
        keep = all_iou > s.iou_threshold
        proposals = everything.select(keep.nonzero().squeeze(1))
        dino_in = encoder_input(square, seg.encoder.identity.input_size, antialias=s.encoder_antialias)
        features = seg.encoder.encode(dino_in)[0].float().cpu()
        logits = proposals.low_res_logits.float().cpu()
        binary = logits > 0
        obj = matching.pool_object_features(features, binary)
        scores, labels = matching.score_proposals(obj, prototypes)
        nms = dedup.batched_nms(
            masks_to_boxes_inclusive(binary), proposals.predicted_iou, labels, s.nms_threshold
        )
        capped = nms[: s.max_candidates]
        positive = capped[scores[capped] > 0]
        result = matching.postprocess(
            logits,
            proposals.predicted_iou,
            features,
            prototypes,
            (height, width),
            nms_threshold=s.nms_threshold,
            max_candidates=s.max_candidates,
            merge_exponent=s.merge_exponent,
            max_instances=s.max_instances,
        )
        instances = seg.predict(pixels) if CHECK else None
    if instances is not None:  # the stage dump and predict() agree
        assert np.array_equal(instances.masks, result.masks.numpy()) and np.array_equal(
            instances.scores, result.scores.numpy()
        )
    else:
        instances = Instances(
            masks=result.masks.numpy(),
            boxes=result.boxes.numpy().astype(np.float32),
            scores=result.scores.numpy(),
            labels=result.labels.numpy(),
            class_names=seg.memory.class_names,
        )
    step = (proposer.image_size - 1) / (s.points_per_side - 1)
    cells = np.rint((points.numpy() - 0.5) / step).astype(np.int64)
    prompt_ids = cells[:, 1] * s.points_per_side + cells[:, 0]  # canonical id of each prompt
    canonical = np.argsort(prompt_ids)
    survivors = prompt_ids[np.flatnonzero(keep.numpy())]
    # boxes as the program reports them: refseg's COCO output convention (inclusive in paper)
    reported_boxes = result.boxes.numpy().astype(np.float64)
    if s.box_convention == "inclusive":
        reported_boxes[:, 2:] -= 1.0
    cat = np.array(category_ids)
    proj = fmt.projection(features.shape[0])
    emb = embedding.image_embeddings[0].float().cpu().numpy()
    fmt.save_npz(
        out / f"target_{image_id}.npz",
        image_size=np.array([height, width]),
        sam_input_stats=fmt.channel_stats(imagenet_normalize(square)[0].numpy()),
        sam_input_sample=imagenet_normalize(square)[0, :, ::16, ::16].numpy().astype(np.float16),
        embedding_stats=fmt.channel_stats(emb).mean(0),
        embedding_sample=emb[:, ::4, ::4].astype(np.float16),
        feat_s0_stats=fmt.stats(embedding.feat_s0.float().numpy()),
        feat_s1_stats=fmt.stats(embedding.feat_s1.float().numpy()),
        prompt_points=points.numpy()[canonical],
        prompt_iou=all_iou.numpy()[canonical],
        prompt_mask_rle=fmt.encode_masks((everything.low_res_logits > 0).numpy()[canonical]),
        survivors=np.sort(survivors),
        survivors_native_order=survivors,
        dino_input_stats=fmt.channel_stats(imagenet_normalize(dino_in)[0].numpy()),
        dino_input_sample=imagenet_normalize(dino_in)[0, :, ::8, ::8].numpy().astype(np.float16),
        features_sample=features[:, :: fmt.FEATURE_STRIDE, :: fmt.FEATURE_STRIDE].numpy().astype(np.float16),
        features_projected=np.einsum("chw,cd->dhw", features.numpy(), proj).astype(np.float16),
        object_features_projected=(obj.numpy() @ proj).astype(np.float32),
        scores=scores.numpy(),
        labels=cat[labels.numpy()],
        nms_keep=survivors[nms.numpy()],
        nms_kept_positive=survivors[positive.numpy()],
        final_prompt=survivors[result.indices.numpy()],
        final_labels=cat[result.labels.numpy()],
        final_scores=result.scores.numpy(),
        final_boxes=reported_boxes,
        final_mask_rle=fmt.encode_masks(result.masks.numpy()),
    )
    ids = {name: cid for name, cid in zip(seg.memory.class_names, category_ids, strict=True)}
    return instances.to_coco(image_id, ids, box_convention=s.box_convention)


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``["grid_order=x-fastest", "encoder_antialias=true"]`` -> Preset overrides."""
    overrides: dict[str, object] = {}
    for item in items:
        name, _, text = item.partition("=")
        value: object = {"true": True, "false": False}.get(text.lower(), text)
        if isinstance(value, str):
            try:
                value = float(text) if "." in text else int(text)
            except ValueError:
                pass
        overrides[name] = value
    return overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sam2", required=True)
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--inputs", default=str(Path(__file__).parent / "inputs"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=33)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--images", type=int, default=0, help="only the first N targets (0: all)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one Preset field (e.g. grid_order=x-fastest), to size one convention",
    )
    ap.add_argument("--image-ids", default="", help="only these target image ids (comma-separated)")
    ap.add_argument(
        "--references-from",
        type=Path,
        default=None,
        help="reuse the pooled reference features of an earlier dump",
    )
    ap.add_argument("--no-check", action="store_true", help="skip the add_reference/predict cross-check")
    args = ap.parse_args()
    global CHECK
    CHECK = not args.no_check
    torch.manual_seed(0)
    inputs, out = Path(args.inputs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    proposer = load_proposer(args.sam2, device="cpu")
    encoder = load_encoder(args.encoder, device="cpu")
    seg = Segmenter(proposer, encoder, preset="paper", **parse_overrides(args.set))
    coco = json.loads((inputs / "references.json").read_text())
    names = [c["name"] for c in coco["categories"]]
    picked = sample_references(coco, names, args.shots, args.seed)
    fmt.write_json(
        out / "sampler.json",
        {
            str(c["id"]): [a["id"] for a in picked["annotations"] if a["category_id"] == c["id"]]
            for c in coco["categories"]
        },
    )
    t0 = time.time()
    if args.references_from is not None:  # same sampler picks, features as that run pooled them
        import shutil

        refs = fmt.load_npz(args.references_from / "references.npz")
        by_id = {int(c["id"]): c["name"] for c in coco["categories"]}
        picked_ids = [a["id"] for a in picked["annotations"]]
        assert [int(i) for i in refs["annotation_ids"]] == picked_ids, "another sample than the reused dump"
        for category_id, feature in zip(refs["category_ids"], refs["features"], strict=True):
            seg.memory.add(
                torch.from_numpy(feature), by_id[int(category_id)], reference_crop=seg.settings.reference_crop
            )
        shutil.copy(args.references_from / "references.npz", out / "references.npz")
    else:
        dump_references(seg, picked, inputs / "references", out)
    by_name = {c["name"]: int(c["id"]) for c in coco["categories"]}
    category_ids = [by_name[n] for n in seg.memory.class_names]
    fmt.save_npz(
        out / "prototypes.npz",
        category_ids=np.array(category_ids),
        prototypes=seg.memory.prototypes().numpy(),
    )
    print(f"memory: {len(seg.memory)} references in {time.time() - t0:.0f} s", flush=True)
    gt = json.loads((inputs / "targets_gt.json").read_text())
    results = []
    images = gt["images"][: args.images] if args.images else gt["images"]
    if args.image_ids:
        wanted = {int(i) for i in args.image_ids.split(",")}
        images = [i for i in images if int(i["id"]) in wanted]
    for info in images:
        t0 = time.time()
        results += dump_target(
            seg, inputs / "targets" / info["file_name"], int(info["id"]), category_ids, out
        )
        print(f"image {info['id']}: {time.time() - t0:.0f} s", flush=True)
    (out / "results.json").write_text(json.dumps(results))
    summary = evaluate(inputs / "targets_gt.json", results, image_ids=[int(i["id"]) for i in images])
    fmt.write_json(out / "eval.json", {t: summary[t] for t in ("bbox", "segm")})
    fmt.write_json(
        out / "meta.json",
        {
            "program": "refseg",
            "preset": "paper",
            "overrides": args.set,
            "seed": args.seed,
            "shots": args.shots,
            "images": [int(i["id"]) for i in images],
        },
    )


if __name__ == "__main__":
    main()
