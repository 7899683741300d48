"""Compare two fidelity dumps (FORMAT.md) stage by stage and print the agreement.

    python benchmarks/fidelity/compare.py DUMP_A DUMP_B [--inputs benchmarks/fidelity/inputs] [--json OUT]

A is taken as the reference (the research code's dump), B as the candidate (refseg's).
The thresholds are those of issue 10: features/prototypes cosine >= 0.9999, per-prompt mask
IoU >= 0.99 and predicted IoU within 1e-4, final instances one-to-one at mask IoU >= 0.99
with the same label and score within 1e-4.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dumpformat as fmt
import numpy as np

COS_OK, MASK_IOU_OK, IOU_OK, SCORE_OK = 0.9999, 0.99, 1e-4, 1e-4


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of (N, H, W) bool masks (1 where both are empty)."""
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def q(values, qs=(0.0, 0.5, 1.0)) -> str:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return "n/a"
    return "/".join(f"{v:.6g}" for v in np.quantile(values, qs))


def compare_sampler(a: Path, b: Path, report: dict) -> None:
    sa, sb = json.loads((a / "sampler.json").read_text()), json.loads((b / "sampler.json").read_text())
    same = {k: sa.get(k) == sb.get(k) for k in sorted(set(sa) | set(sb))}
    report["sampler"] = {"identical": all(same.values()), "per_category": same, "a": sa, "b": sb}
    print(
        f"[sampler] picks identical: {all(same.values())}  ({', '.join(f'{k}: {v}' for k, v in same.items())})"
    )


def compare_references(a: Path, b: Path, report: dict) -> None:
    ra, rb = fmt.load_npz(a / "references.npz"), fmt.load_npz(b / "references.npz")
    ib = {int(i): n for n, i in enumerate(rb["annotation_ids"])}
    rows = []
    for n, ann in enumerate(ra["annotation_ids"]):
        m = ib.get(int(ann))
        if m is None:
            continue
        rows.append(
            {
                "annotation_id": int(ann),
                "crop_a": ra["crop_boxes"][n].tolist(),
                "crop_b": rb["crop_boxes"][m].tolist(),
                "crop_same": bool(np.array_equal(ra["crop_boxes"][n], rb["crop_boxes"][m])),
                "input_max_diff": float(
                    np.abs(ra["encoder_input_stats"][n] - rb["encoder_input_stats"][m]).max()
                ),
                "input_min_a": float(ra["encoder_input_stats"][n][:, 2].min()),
                "input_min_b": float(rb["encoder_input_stats"][m][:, 2].min()),
                "weights_max_diff": float(
                    np.abs(
                        ra["patch_weights"][n].astype(np.float32) - rb["patch_weights"][m].astype(np.float32)
                    ).max()
                ),
                "feature_cosine": float(cosine(ra["features"][n], rb["features"][m])),
            }
        )
    cos = [r["feature_cosine"] for r in rows]
    report["references"] = rows
    print(
        f"[references] {len(rows)} matched; crop boxes identical: {sum(r['crop_same'] for r in rows)}/{len(rows)}; "
        f"pooled-feature cosine min/median/max {q(cos)}; >= {COS_OK}: {sum(c >= COS_OK for c in cos)}/{len(rows)}"
    )
    pa, pb = fmt.load_npz(a / "prototypes.npz"), fmt.load_npz(b / "prototypes.npz")
    order = [list(pb["category_ids"]).index(c) for c in pa["category_ids"]]
    pcos = cosine(pa["prototypes"], pb["prototypes"][order])
    report["prototypes"] = {int(c): float(v) for c, v in zip(pa["category_ids"], pcos, strict=True)}
    print(
        f"[prototypes] cosine per category {report['prototypes']}; all >= {COS_OK}: {bool((pcos >= COS_OK).all())}"
    )


def match_final(ta: dict, tb: dict) -> tuple[list[tuple[int, int, float]], np.ndarray, np.ndarray]:
    size = tuple(ta["image_size"])
    ma, mb = fmt.decode_masks(ta["final_mask_rle"], size), fmt.decode_masks(tb["final_mask_rle"], size)
    if len(ma) == 0 or len(mb) == 0:
        return [], ma, mb
    ious = pairwise_iou(ma, mb)
    pairs, used = [], set()
    for i in np.argsort(-ious.max(1)):
        for j in np.argsort(-ious[i]):
            if j in used:
                continue
            if ious[i, j] >= MASK_IOU_OK and ta["final_labels"][i] == tb["final_labels"][j]:
                pairs.append((int(i), int(j), float(ious[i, j])))
                used.add(j)
            break
    return pairs, ma, mb


def compare_target(a: Path, b: Path, image_id: int) -> dict:
    ta, tb = fmt.load_npz(a / f"target_{image_id}.npz"), fmt.load_npz(b / f"target_{image_id}.npz")
    out: dict = {"image_id": image_id, "size": ta["image_size"].tolist()}
    out["sam_input_max_abs"] = float(
        np.abs(ta["sam_input_sample"].astype(np.float32) - tb["sam_input_sample"].astype(np.float32)).max()
    )
    ea, eb = ta["embedding_sample"].astype(np.float32), tb["embedding_sample"].astype(np.float32)
    out["embedding_cosine_min"] = float(cosine(ea.reshape(256, -1).T, eb.reshape(256, -1).T).min())
    out["embedding_max_abs"] = float(np.abs(ea - eb).max())
    # prompts (canonical order)
    pa = fmt.decode_masks(ta["prompt_mask_rle"], (256, 256))
    pb = fmt.decode_masks(tb["prompt_mask_rle"], (256, 256))
    iou = mask_iou(pa, pb)
    diou = np.abs(ta["prompt_iou"] - tb["prompt_iou"])
    out["prompts"] = len(iou)
    out["prompt_mask_iou_q"] = q(iou, (0.0, 0.01, 0.5))
    out["prompt_mask_iou_ok"] = int((iou >= MASK_IOU_OK).sum())
    out["prompt_iou_absdiff_q"] = q(diou, (0.5, 0.99, 1.0))
    out["prompt_iou_ok"] = int((diou <= IOU_OK).sum())
    sa, sb = set(ta["survivors"].tolist()), set(tb["survivors"].tolist())
    out["survivors_a"], out["survivors_b"], out["survivors_common"] = len(sa), len(sb), len(sa & sb)
    out["dino_input_max_abs"] = float(
        np.abs(ta["dino_input_sample"].astype(np.float32) - tb["dino_input_sample"].astype(np.float32)).max()
    )
    fa = ta["features_sample"].astype(np.float32).reshape(1024, -1).T
    fb = tb["features_sample"].astype(np.float32).reshape(1024, -1).T
    out["feature_cosine_q"] = q(cosine(fa, fb), (0.0, 0.5))
    # scores and labels on common survivors
    # rows of scores / labels follow each program's own proposal order: map them by prompt id
    order_a = ta.get("survivors_native_order", ta["survivors"])
    ia = {int(p): n for n, p in enumerate(order_a)}
    order_b = tb.get("survivors_native_order", tb["survivors"])
    ib = {int(p): n for n, p in enumerate(order_b)}
    common = sorted(set(ia) & set(ib))
    la = np.array([ta["labels"][ia[p]] for p in common])
    lb = np.array([tb["labels"][ib[p]] for p in common])
    ds = np.abs(
        np.array([ta["scores"][ia[p]] for p in common]) - np.array([tb["scores"][ib[p]] for p in common])
    )
    out["labels_same"] = int((la == lb).sum()) if len(common) else 0
    out["score_absdiff_q"] = q(ds, (0.5, 0.99, 1.0))
    out["scores_ok"] = int((ds <= SCORE_OK).sum())
    out["common_survivors"] = len(common)
    # NMS
    na, nb = ta["nms_kept_positive"].tolist(), tb["nms_kept_positive"].tolist()
    out["nms_a"], out["nms_b"] = len(na), len(nb)
    out["nms_same_set"] = set(na) == set(nb)
    out["nms_same_order"] = na == nb
    out["nms_only_a"], out["nms_only_b"] = len(set(na) - set(nb)), len(set(nb) - set(na))
    # final instances
    pairs, ma, mb = match_final(ta, tb)
    out["final_a"], out["final_b"], out["final_matched"] = len(ma), len(mb), len(pairs)
    dsc = np.array([abs(ta["final_scores"][i] - tb["final_scores"][j]) for i, j, _ in pairs])
    out["final_score_absdiff_q"] = q(dsc, (0.5, 1.0))
    out["final_scores_ok"] = int((dsc <= SCORE_OK).sum()) if len(pairs) else 0
    bd = (
        np.array([tb["final_boxes"][j] - ta["final_boxes"][i] for i, j, _ in pairs])
        if pairs
        else np.zeros((0, 4))
    )
    out["final_box_diff_x1y1x2y2_median"] = np.median(bd, 0).tolist() if len(bd) else []
    out["final_box_diff_max_abs"] = float(np.abs(bd).max()) if len(bd) else 0.0
    return out


NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def plain_pycocotools(gt_path: Path, results: list, image_ids: list[int] | None) -> dict:
    """The research code's way: COCO.loadRes of the results as they are (boxes kept for segm,
    so pycocotools takes segm areas from the boxes), COCOeval summarize, percent."""
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(copy.deepcopy(results))
        for iou_type in ("bbox", "segm"):
            ev = COCOeval(gt, dt, iou_type)
            if image_ids:
                ev.params.imgIds = sorted(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[iou_type] = {
                n: (100 * float(v) if v >= 0 else -1.0) for n, v in zip(NAMES, ev.stats, strict=True)
            }
    return out


def results_from_dump(dump: Path) -> list[dict]:
    """COCO results of a dump's final instances (boxes as the program reported them), for a
    run stopped before it wrote results.json."""
    from refseg.instances import Instances

    results = []
    for image_id in sorted(_target_ids(dump)):
        t = fmt.load_npz(dump / f"target_{image_id}.npz")
        masks = fmt.decode_masks(t["final_mask_rle"], tuple(t["image_size"]))
        labels = np.asarray(t["final_labels"], dtype=np.int64)
        inst = Instances(
            masks, t["final_boxes"].astype(np.float32), t["final_scores"].astype(np.float32), labels
        )
        results += inst.to_coco(image_id, category_ids=list(range(int(labels.max(initial=0)) + 1)))
    return results


def gt_from_dump(dump: Path, inputs: Path, top: int, out: Path) -> Path:
    """A ground truth made of a dump's own top-``top`` final instances per image: evaluating
    both programs against it measures how far B's output is from A's in AP terms (A's own
    results score ~100 by construction)."""
    from pycocotools import mask as mask_utils

    gt = json.loads((inputs / "targets_gt.json").read_text())
    images = [i for i in gt["images"] if int(i["id"]) in set(_target_ids(dump))]
    annotations = []
    for info in images:
        t = fmt.load_npz(dump / f"target_{info['id']}.npz")
        masks = fmt.decode_masks(t["final_mask_rle"][:top], tuple(t["image_size"]))
        for k, mask in enumerate(masks):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(info["id"]), "category_id": int(t["final_labels"][k]),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}, "iscrowd": 0,
                "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            })  # fmt: skip
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": gt["categories"]}))
    return out


def evaluate_both(a: Path, b: Path, inputs: Path, report: dict, gt_path: Path | None = None) -> None:
    from refseg.evaluate import evaluate

    default_gt = gt_path is None
    gt_path = gt_path or inputs / "targets_gt.json"

    rows = {}
    for name, d in (("a", a), ("b", b)):
        res = (
            json.loads((d / "results.json").read_text())
            if (d / "results.json").exists()
            else results_from_dump(d)
        )
        ids = sorted(set(_target_ids(a)) & set(_target_ids(b)))
        mine = evaluate(gt_path, res, image_ids=ids)
        rows[name] = {
            # a dump's own eval.json was computed against the inputs' ground truth only
            "own": json.loads((d / "eval.json").read_text())
            if default_gt and (d / "eval.json").exists()
            else None,
            "refseg_eval": {t: mine[t] for t in ("bbox", "segm")},
            "pycocotools": plain_pycocotools(gt_path, res, ids),
        }
    report["evaluation" if default_gt else "evaluation_against_a"] = rows
    print(f"[eval] ground truth: {gt_path.name}")
    for name in ("a", "b"):
        for how in ("own", "refseg_eval", "pycocotools"):
            r = rows[name][how]
            if r:
                print(
                    f"[eval] {name} results through {how:<11}: bbox AP {r['bbox']['AP']:.3f} AP50 {r['bbox']['AP50']:.3f} "
                    f"APs/m/l {r['bbox']['APs']:.2f}/{r['bbox']['APm']:.2f}/{r['bbox']['APl']:.2f} | segm AP {r['segm']['AP']:.3f} "
                    f"APs/m/l {r['segm']['APs']:.2f}/{r['segm']['APm']:.2f}/{r['segm']['APl']:.2f}"
                )


def _target_ids(dump: Path) -> list[int]:
    return [int(p.stem.split("_")[1]) for p in dump.glob("target_*.npz")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--inputs", type=Path, default=Path(__file__).parent / "inputs")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation stage")
    ap.add_argument(
        "--gt-from-a", type=int, default=20, help="also evaluate against A's top-N instances (0: no)"
    )
    args = ap.parse_args()
    report: dict = {"a": str(args.a), "b": str(args.b)}
    compare_sampler(args.a, args.b, report)
    compare_references(args.a, args.b, report)
    ids = sorted(set(_target_ids(args.a)) & set(_target_ids(args.b)))
    report["targets"] = []
    tot = {}
    for image_id in ids:
        r = compare_target(args.a, args.b, image_id)
        report["targets"].append(r)
        for k in (
            "prompts",
            "prompt_mask_iou_ok",
            "prompt_iou_ok",
            "survivors_a",
            "survivors_b",
            "survivors_common",
            "common_survivors",
            "labels_same",
            "scores_ok",
            "nms_a",
            "nms_b",
            "nms_only_a",
            "nms_only_b",
            "final_a",
            "final_b",
            "final_matched",
            "final_scores_ok",
        ):
            tot[k] = tot.get(k, 0) + r[k]
        print(
            f"[target {image_id} {r['size']}] SAM input max|d| {r['sam_input_max_abs']:.4g}; embedding cos min {r['embedding_cosine_min']:.6f} "
            f"max|d| {r['embedding_max_abs']:.3g}; DINOv2 input max|d| {r['dino_input_max_abs']:.4g}; feature cos min/median {r['feature_cosine_q']}"
        )
        print(
            f"    prompts: mask IoU min/p1/median {r['prompt_mask_iou_q']}, >= {MASK_IOU_OK}: {r['prompt_mask_iou_ok']}/{r['prompts']}; "
            f"|d pred IoU| p50/p99/max {r['prompt_iou_absdiff_q']}, <= {IOU_OK}: {r['prompt_iou_ok']}/{r['prompts']}; "
            f"survivors a/b/common {r['survivors_a']}/{r['survivors_b']}/{r['survivors_common']}"
        )
        print(
            f"    scores: labels same {r['labels_same']}/{r['common_survivors']}, |d score| p50/p99/max {r['score_absdiff_q']}; "
            f"NMS a/b {r['nms_a']}/{r['nms_b']} same set {r['nms_same_set']} same order {r['nms_same_order']} (only a {r['nms_only_a']}, only b {r['nms_only_b']})"
        )
        print(
            f"    final: a {r['final_a']} b {r['final_b']} matched {r['final_matched']} (score within {SCORE_OK}: {r['final_scores_ok']}); "
            f"|d score| p50/max {r['final_score_absdiff_q']}; box b-a median {r['final_box_diff_x1y1x2y2_median']}"
        )
    report["totals"] = tot
    print(f"[totals] {json.dumps(tot)}")
    if not args.no_eval:
        evaluate_both(args.a, args.b, args.inputs, report)
        if args.gt_from_a:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                gt = gt_from_dump(args.a, args.inputs, args.gt_from_a, Path(tmp) / "gt_from_a.json")
                evaluate_both(args.a, args.b, args.inputs, report, gt)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
