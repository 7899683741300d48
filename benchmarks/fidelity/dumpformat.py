"""The array format of a fidelity dump (see FORMAT.md): writers and readers shared by
dump_refseg.py, compare.py and any other program's hooks that write the same format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

GRID = 32  # prompts per side; canonical prompt order is row-major, x fastest
FEATURE_STRIDE = 3  # target feature maps are stored at [:, ::3, ::3] (13 x 13 of 37 x 37)
PROJECTION_DIM = 64  # object features are stored projected on 64 fixed random directions


def projection(dim: int) -> np.ndarray:
    """(dim, 64) fixed random projection (seed 0), the same in every program."""
    return np.random.default_rng(0).standard_normal((dim, PROJECTION_DIM)).astype(np.float32) / np.sqrt(dim)


def stats(array: np.ndarray) -> np.ndarray:
    """(4,) mean, std, min, max as float64."""
    a = np.asarray(array, dtype=np.float64)
    return np.array([a.mean(), a.std(), a.min(), a.max()])


def channel_stats(image: np.ndarray) -> np.ndarray:
    """(C, 4) per-channel stats of a (C, H, W) array."""
    return np.stack([stats(c) for c in image])


def encode_masks(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N,) object array of COCO compressed RLE byte strings."""
    out = np.empty(len(masks), dtype=object)
    if len(masks):
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        for i, rle in enumerate(rles):
            out[i] = rle["counts"]
    return out


def decode_masks(counts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Inverse of encode_masks: (N, H, W) bool."""
    h, w = int(size[0]), int(size[1])
    if len(counts) == 0:
        return np.zeros((0, h, w), dtype=bool)
    rles = [{"size": [h, w], "counts": c} for c in counts]
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def save_npz(path: Path, **arrays) -> None:
    np.savez_compressed(
        path, **{k: np.asarray(v) if not isinstance(v, np.ndarray) else v for k, v in arrays.items()}
    )


def load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=True) as data:
        return {k: data[k] for k in data.files}


def write_json(path: Path, value) -> None:
    Path(path).write_text(json.dumps(value, indent=1, sort_keys=True))


def research_to_canonical(n: int = GRID) -> np.ndarray:
    """Index map for a grid made with meshgrid(indexing='ij') over (x, y): x slowest.

    ``canonical[i] = native index`` of the prompt at canonical position i (x fastest).
    """
    canonical = np.empty(n * n, dtype=np.int64)
    for yi in range(n):
        for xi in range(n):
            canonical[yi * n + xi] = xi * n + yi
    return canonical


# ----------------------------------------------------------------------------- golden (CI) form

MASK_SAMPLE_STRIDE = 4  # golden per-prompt masks are kept at [::4, ::4] (64 x 64 of 256 x 256)
SLIM_DROPPED = ("features_projected", "object_features_projected", "prompt_points")


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, ceil(H * W / 8)) uint8 (numpy ``packbits``: no pickle to read it)."""
    masks = np.asarray(masks, dtype=bool)
    return np.packbits(masks.reshape(len(masks), -1), axis=1)


def unpack_masks(packed: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = int(size[0]), int(size[1])
    return np.unpackbits(packed, axis=1, count=h * w).reshape(len(packed), h, w).astype(bool)


def slim_target(target: dict) -> dict:
    """A target dump in the golden set's form: plain arrays only (loadable without pickle),
    per-prompt masks sampled at every 4th pixel and bit-packed, final masks bit-packed, the
    feature projections dropped (the golden test compares the feature sample)."""
    out = {k: v for k, v in target.items() if k not in SLIM_DROPPED}
    prompt_masks = decode_masks(out.pop("prompt_mask_rle"), (256, 256))
    s = MASK_SAMPLE_STRIDE
    out["prompt_mask_sample"] = pack_masks(prompt_masks[:, ::s, ::s])
    out["final_masks_packed"] = pack_masks(decode_masks(out.pop("final_mask_rle"), tuple(out["image_size"])))
    return out


def slim_dump(source: Path, out: Path) -> None:
    """Write ``source``'s dump in the golden form to ``out`` (json files copied as they are)."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.name.startswith("target_"):
            save_npz(out / path.name, **slim_target(load_npz(path)))
        elif path.suffix in (".npz", ".json"):
            (out / path.name).write_bytes(path.read_bytes())
