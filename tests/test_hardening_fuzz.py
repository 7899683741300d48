"""Malformed inputs, generated here (never stored), fed to the command line and the Python API.

Every case must end in one of: a :class:`~refseg.errors.RefsegError` (Python), ``Error: ...``
with exit code 1 (command line), or success with the bad item listed as skipped. Never another
exception, never a traceback, and never a file outside the output folder (each command-line
case runs in its own folder, whose tree outside ``out/`` is compared before and after).

Families: memory files, COCO jsons (through sample, memory, predict, eval, boxes-to-masks and
the library), images, and option values. The command line runs with model folders that do not
exist wherever a model would be loaded, so an input that is accepted ends, at the latest, in
``Error: Could not load ...``; what happens to accepted inputs beyond that is run through the
library with synthetic models.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from synthetic import SyntheticEncoder, SyntheticProposer, make_scene

from refseg import Segmenter
from refseg.cli import cli
from refseg.data.boxes import boxes_to_masks
from refseg.data.coco import check_coco
from refseg.data.images import load_image
from refseg.data.sampling import sample_references
from refseg.errors import RefsegError
from refseg.evaluate import evaluate
from refseg.instances import Instances
from refseg.memory import MemoryBank
from refseg.models.base import EncoderIdentity
from refseg.references import add_coco_references

NO_MODELS = ["--sam2", "/nonexistent/sam2", "--encoder", "/nonexistent/dino", "--device", "cpu"]


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` except ``out/``, with its content."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).as_posix().startswith("out/")
    }


def run_cli(root: Path, *args: object) -> Any:
    """Run ``refseg args`` in ``root``: no traceback, exit 0 or 1 with ``Error:``, nothing
    written outside ``root/out``."""
    before = _tree(root)
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        assert "Error: " in result.stderr, result.output
    assert _tree(root) == before, "a file outside the output folder changed"
    return result


def refused_by_library(call: Callable[[], Any]) -> bool:
    """Run ``call``: True if it raised a RefsegError, False if it returned; anything else fails."""
    try:
        call()
    except RefsegError:
        return True
    return False


# ============================================================================= memory files

IDENTITY = EncoderIdentity("enc", "r1", 518, 8, "f" * 16)


def _valid_memory(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    bank = MemoryBank(IDENTITY)
    generator = torch.Generator().manual_seed(0)
    for name in ("cat", "cat", "dog"):
        bank.add(torch.rand(8, generator=generator) + 0.1, name, {"file": f"{name}.png"}, context_ratio=0.2)
    bank.save(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return metadata, tensors


def _classes(value: Any) -> Callable[[dict], None]:
    return lambda m: m.__setitem__("classes", value if isinstance(value, str) else json.dumps(value))


def _references(value: Any) -> Callable[[dict], None]:
    return lambda m: m.__setitem__("references", value if isinstance(value, str) else json.dumps(value))


def _pop(key: str) -> Callable[[dict], None]:
    return lambda m: m.pop(key)


def _set(key: str, value: str) -> Callable[[dict], None]:
    return lambda m: m.__setitem__(key, value)


def _features(change: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[dict], None]:
    def apply(tensors: dict) -> None:
        changed = change(tensors["reference_features"].clone())
        if changed is None:
            del tensors["reference_features"]
        else:
            tensors["reference_features"] = changed

    return apply


def _row(value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def change(features: torch.Tensor) -> torch.Tensor:
        features[1, 3] = value
        return features

    return change


def _zero_row(features: torch.Tensor) -> torch.Tensor:
    features[2] = 0.0
    return features


REFS = [{"ref_id": 0, "class": "cat", "source": {}}, {"ref_id": 1, "class": "cat", "source": {}},
        {"ref_id": 2, "class": "dog", "source": {}}]  # fmt: skip
CLASSES = [
    {"name": "cat", "category_id": 1, "references": 2},
    {"name": "dog", "category_id": 2, "references": 1},
]

# (case, metadata change, tensors change)
MEMORY_CASES: list[tuple[str, Callable | None, Callable | None]] = [
    ("format missing", _pop("format"), None),
    ("format other", _set("format", "other.format"), None),
    ("format_version words", _set("format_version", "abc"), None),
    ("format_version newer", _set("format_version", "99"), None),
    ("encoder missing", _pop("encoder"), None),
    ("encoder not json", _set("encoder", "{not json"), None),
    ("encoder a string", _set("encoder", '"dinov2"'), None),
    ("encoder fields missing", _set("encoder", '{"name": "enc"}'), None),
    (
        "encoder input_size words",
        _set("encoder", json.dumps({**IDENTITY.as_dict(), "input_size": "big"})),
        None,
    ),
    (
        "encoder feature_dim nan",
        _set("encoder", json.dumps({**IDENTITY.as_dict(), "feature_dim": None})),
        None,
    ),
    ("classes missing", _pop("classes"), None),
    ("classes not json", _classes("[{"), None),
    ("classes a string", _classes('"cat"'), None),
    ("classes of strings", _classes(["cat", "dog"]), None),
    ("class name a number", _classes([{**CLASSES[0], "name": 3}, CLASSES[1]]), None),
    ("category_id words", _classes([{**CLASSES[0], "category_id": "seven"}, CLASSES[1]]), None),
    ("category_id missing", _classes([{"name": "cat"}, CLASSES[1]]), None),
    ("duplicate class", _classes([CLASSES[0], CLASSES[0], CLASSES[1]]), None),
    (
        "class with no reference",
        _classes([*CLASSES, {"name": "cow", "category_id": 3, "references": 0}]),
        None,
    ),
    ("classes empty", _classes([]), None),
    ("classes nested too deep", _classes("[" * 100_000 + "]" * 100_000), None),
    ("references missing", _pop("references"), None),
    ("references a string", _references('"refs"'), None),
    ("ref_id words", _references([{**REFS[0], "ref_id": "a"}, *REFS[1:]]), None),
    ("duplicate ref ids", _references([REFS[0], REFS[0], REFS[2]]), None),
    ("reference of unknown class", _references([*REFS[:2], {**REFS[2], "class": "cow"}]), None),
    ("reference without class", _references([*REFS[:2], {"ref_id": 2}]), None),
    ("source not an object", _references([*REFS[:2], {**REFS[2], "source": "x"}]), None),
    ("next_id words", _set("next_id", "abc"), None),
    ("next_id below the ref ids", _set("next_id", "1"), None),
    ("context_ratio words", _set("context_ratio", '"wide"'), None),
    ("context_ratio nan", _set("context_ratio", "NaN"), None),
    ("context_ratio negative", _set("context_ratio", "-1"), None),
    ("features missing", None, _features(lambda f: None)),
    ("feature nan", None, _features(_row(math.nan))),
    ("feature inf", None, _features(_row(math.inf))),
    ("feature all zero", None, _features(_zero_row)),
    ("features 3-D", None, _features(lambda f: f[None])),
    ("features 1-D", None, _features(lambda f: f.reshape(-1))),
    ("features of another size", None, _features(lambda f: torch.cat([f, f], dim=1))),
    ("features fewer than references", None, _features(lambda f: f[:2])),
    ("features more than references", None, _features(lambda f: torch.cat([f, f[:1]]))),
    ("features integers", None, _features(lambda f: (f * 100).to(torch.int64))),
]


def _memory_case_params() -> list[Any]:
    return [pytest.param(meta, tensors, id=name) for name, meta, tensors in MEMORY_CASES]


def _bank_is_refused(path: Path) -> bool:
    def use() -> None:
        bank = MemoryBank.load(path)
        bank.describe(), bank.prototypes(), bank.fingerprint(), bank.counts(), bank.category_ids

    return refused_by_library(use)


@pytest.mark.parametrize(("meta_change", "tensor_change"), _memory_case_params())
def test_a_malformed_memory_file_is_refused(tmp_path: Path, meta_change, tensor_change) -> None:
    metadata, tensors = _valid_memory(tmp_path / "valid.safetensors")
    if meta_change is not None:
        meta_change(metadata)
    if tensor_change is not None:
        tensor_change(tensors)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    assert _bank_is_refused(path), "loaded and used without a word"
    result = run_cli(tmp_path, "memory", "info", path)
    assert result.exit_code == 1


def _pickle_bytes(_: Path) -> bytes:
    return pickle.dumps({"reference_features": np.zeros((2, 8))})


def _truncated(valid: Path) -> bytes:
    return valid.read_bytes()[: len(valid.read_bytes()) // 2]


def _huge_header(_: Path) -> bytes:
    return struct.pack("<Q", 2**60) + b"{}"


MEMORY_FILES: dict[str, Callable[[Path], bytes]] = {
    "empty file": lambda _: b"",
    "pickle": _pickle_bytes,
    "truncated": _truncated,
    "random bytes": lambda _: np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    "json text": lambda _: b'{"classes": []}',
    "header length past the end": _huge_header,
    "header not json": lambda _: struct.pack("<Q", 5) + b"{{{{{",
}


@pytest.mark.parametrize("kind", sorted(MEMORY_FILES))
def test_a_file_that_is_not_a_memory_is_refused(tmp_path: Path, kind: str) -> None:
    _valid_memory(tmp_path / "valid.safetensors")
    path = tmp_path / "bad.safetensors"
    path.write_bytes(MEMORY_FILES[kind](tmp_path / "valid.safetensors"))
    assert _bank_is_refused(path)
    assert run_cli(tmp_path, "memory", "info", path).exit_code == 1
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    result = run_cli(tmp_path, "predict", "--memory", path, tmp_path / "img", "-o", tmp_path / "out" / "r.json",
                     *NO_MODELS)  # fmt: skip
    assert result.exit_code == 1 and "Could not load" not in result.stderr


def test_a_folder_named_like_a_memory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.safetensors").mkdir()
    assert run_cli(tmp_path, "memory", "info", tmp_path / "m.safetensors").exit_code == 1


# ============================================================================= COCO jsons


def _coco() -> dict[str, Any]:
    polygon = [12, 12, 44, 12, 44, 40, 12, 40]
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [12, 12, 32, 28], "area": 896.0, "iscrowd": 0,
             "segmentation": [polygon]},
            {"id": 11, "image_id": 2, "category_id": 8, "bbox": [12, 12, 32, 28], "area": 896.0, "iscrowd": 0,
             "segmentation": [polygon]},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 8, "name": "dog"}],
    }  # fmt: skip


WRONG_VALUES: list[Any] = ["words", None, True, math.nan, -1, [1], {"a": 1}, 1.5, ""]
FIELDS = {
    "images": ["id", "file_name", "width", "height"],
    "annotations": ["id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"],
    "categories": ["id", "name"],
}


def _coco_cases() -> list[tuple[str, Callable[[dict], None]]]:
    cases: list[tuple[str, Callable[[dict], None]]] = []

    def setter(section: str, key: str, value: Any) -> Callable[[dict], None]:
        return lambda d: d[section][0].__setitem__(key, copy.deepcopy(value))

    def dropper(section: str, key: str) -> Callable[[dict], None]:
        return lambda d: d[section][0].pop(key)

    for section, keys in FIELDS.items():
        for key in keys:
            cases.append((f"{section}.{key} missing", dropper(section, key)))
            for value in WRONG_VALUES:
                cases.append((f"{section}.{key}={value!r}", setter(section, key, value)))
        cases.append((f"{section} not a list", lambda d, s=section: d.__setitem__(s, {"0": d[s][0]})))
        cases.append((f"{section} entry not an object", lambda d, s=section: d[s].__setitem__(0, "entry")))
        cases.append((f"{section} missing", lambda d, s=section: d.pop(s)))
    more: dict[str, Callable[[dict], None]] = {
        "duplicate image ids": lambda d: d["images"][1].__setitem__("id", 1),
        "duplicate category ids": lambda d: d["categories"][1].__setitem__("id", 7),
        "duplicate category names": lambda d: d["categories"][1].__setitem__("name", "cat"),
        "duplicate annotation ids": lambda d: d["annotations"][1].__setitem__("id", 10),
        "bbox of 3 numbers": setter("annotations", "bbox", [1, 2, 3]),
        "bbox as a string": setter("annotations", "bbox", "12,12,32,28"),
        "bbox with inf": setter("annotations", "bbox", [1, 2, math.inf, 3]),
        "bbox negative size": setter("annotations", "bbox", [1, 2, -3, 3]),
        "odd polygon": setter("annotations", "segmentation", [[12, 12, 44, 12, 44, 40, 12]]),
        "short polygon": setter("annotations", "segmentation", [[12, 12, 44, 12]]),
        "empty polygon": setter("annotations", "segmentation", [[]]),
        "polygon of words": setter("annotations", "segmentation", [["a"] * 8]),
        "polygon with nan": setter("annotations", "segmentation", [[12, 12, 44, math.nan, 44, 40, 12, 40]]),
        "polygon far away": setter("annotations", "segmentation", [[0, 0, 1e12, 0, 1e12, 1e12]]),
        "rle of the wrong size": setter("annotations", "segmentation", {"size": [10, 10], "counts": [100]}),
        "rle counts not summing": setter("annotations", "segmentation", {"size": [48, 64], "counts": [5, 5]}),
        "rle counts garbage": setter("annotations", "segmentation", {"size": [48, 64], "counts": "!!!"}),
        "rle counts empty": setter("annotations", "segmentation", {"size": [48, 64], "counts": ""}),
        "rle without size": setter("annotations", "segmentation", {"counts": "abc"}),
        "iscrowd yes": setter("annotations", "iscrowd", "yes"),
        "file_name escaping": setter("images", "file_name", "../../../victim.png"),
        "file_name absolute": setter("images", "file_name", "/etc/passwd"),
        "annotation on an unknown image": setter("annotations", "image_id", 999),
        "annotation of an unknown category": setter("annotations", "category_id", 999),
        "top level a list": lambda d: d.clear(),
    }
    cases += list(more.items())
    return cases


COCO_CASES = _coco_cases()


def _write_coco(root: Path, change: Callable[[dict], None]) -> Path:
    data = _coco()
    change(data)
    if not data:
        data = []  # type: ignore[assignment]
    (root / "images").mkdir(exist_ok=True)
    scene = make_scene(7, classes=("red", "green"), per_class=1)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.asarray(scene.image)[:48, :64]).save(root / "images" / name)
    path = root / "coco.json"
    path.write_text(json.dumps(data, allow_nan=True))
    return path


@pytest.mark.parametrize(("name", "change"), COCO_CASES, ids=[name for name, _ in COCO_CASES])
def test_malformed_coco_through_every_verb(tmp_path: Path, name: str, change: Callable[[dict], None]) -> None:
    path = _write_coco(tmp_path, change)
    images, out = tmp_path / "images", tmp_path / "out"
    run_cli(tmp_path, "sample", path, "--classes", "cat", "--shots", 1, "-o", out / "refs.json")
    run_cli(tmp_path, "memory", "--refs", path, "--images", images, "-o", out / "m.safetensors", *NO_MODELS)
    run_cli(tmp_path, "predict", "--coco", path, "--images", images, "--memory", tmp_path / "none.safetensors",
            "-o", out / "r.json", *NO_MODELS)  # fmt: skip
    run_cli(tmp_path, "boxes-to-masks", path, "--images", images, "-o", out / "masks.json", *NO_MODELS[:2])
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps([{"image_id": 1, "category_id": 7, "score": 0.9, "bbox": [12, 12, 32, 28]}])
    )
    run_cli(tmp_path, "eval", "--gt", path, "--results", results, "-o", out / "summary.json")


@pytest.mark.parametrize(("name", "change"), COCO_CASES, ids=[name for name, _ in COCO_CASES])
def test_malformed_coco_through_the_library(
    tmp_path: Path, name: str, change: Callable[[dict], None]
) -> None:
    """What the command line cannot reach without models: the accepted inputs, all the way."""
    path = _write_coco(tmp_path, change)
    data = json.loads(path.read_text())
    images = tmp_path / "images"
    segmenter = Segmenter(SyntheticProposer(image_size=64), SyntheticEncoder())
    refused_by_library(lambda: check_coco(copy.deepcopy(data)))
    refused_by_library(lambda: sample_references(copy.deepcopy(data), "cat", 1, 0))
    refused_by_library(lambda: add_coco_references(segmenter, copy.deepcopy(data), images, progress=False))
    refused_by_library(
        lambda: boxes_to_masks(copy.deepcopy(data), images, SyntheticProposer(64), progress=False)
    )
    result = [{"image_id": 1, "category_id": 7, "score": 0.9, "bbox": [12, 12, 32, 28]}]
    refused_by_library(lambda: evaluate(copy.deepcopy(data), result, iou_types=("bbox",)))
    refused_by_library(lambda: evaluate(copy.deepcopy(data), result, iou_types=("segm",)))
    assert not (tmp_path.parent / "victim.png").exists()


RESULT_CASES: dict[str, Any] = {
    "not a list": {"a": 1},
    "entry not an object": ["result"],
    "image_id words": [{"image_id": "1", "category_id": 7, "score": 0.9, "bbox": [1, 2, 3, 4]}],
    "category_id null": [{"image_id": 1, "category_id": None, "score": 0.9, "bbox": [1, 2, 3, 4]}],
    "score nan": [{"image_id": 1, "category_id": 7, "score": math.nan, "bbox": [1, 2, 3, 4]}],
    "score words": [{"image_id": 1, "category_id": 7, "score": "high", "bbox": [1, 2, 3, 4]}],
    "bbox short": [{"image_id": 1, "category_id": 7, "score": 0.9, "bbox": [1, 2, 3]}],
    "bbox nan": [{"image_id": 1, "category_id": 7, "score": 0.9, "bbox": [1, 2, math.nan, 4]}],
    "no box nor mask": [{"image_id": 1, "category_id": 7, "score": 0.9}],
    "segmentation words": [{"image_id": 1, "category_id": 7, "score": 0.9, "segmentation": "mask"}],
    "rle of another size": [
        {"image_id": 1, "category_id": 7, "score": 0.9, "segmentation": {"size": [10, 10], "counts": "PP"}}
    ],  # fmt: skip
    "rle garbage": [
        {"image_id": 1, "category_id": 7, "score": 0.9, "segmentation": {"size": [48, 64], "counts": "!"}}
    ],
    "odd polygon": [{"image_id": 1, "category_id": 7, "score": 0.9, "segmentation": [[1, 2, 3, 4, 5, 6, 7]]}],
    "unknown image": [{"image_id": 99, "category_id": 7, "score": 0.9, "bbox": [1, 2, 3, 4]}],
    "foreign category ids": [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [1, 2, 3, 4]}],
}


@pytest.mark.parametrize("name", sorted(RESULT_CASES))
def test_malformed_results_in_eval(tmp_path: Path, name: str) -> None:
    gt = _write_coco(tmp_path, lambda d: None)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(RESULT_CASES[name], allow_nan=True))
    for iou_type in ("bbox", "segm"):
        result = run_cli(tmp_path, "eval", "--gt", gt, "--results", results, "--iou-type", iou_type)
        assert result.exit_code == 1 or name == "odd polygon"


# ============================================================================= images


def _png(width: int, height: int, *, cut: int | None = None) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = zlib.compress(b"".join(b"\x00" + b"\x80" * (3 * min(width, 64)) for _ in range(min(height, 64))))
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    return data[:cut] if cut is not None else data


def _grey16(path: Path) -> None:
    Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20).save(path)


IMAGES: dict[str, Callable[[Path], None]] = {
    "0-byte.png": lambda p: p.write_bytes(b""),
    "text.jpg": lambda p: p.write_text("this is not a picture"),
    "truncated.png": lambda p: p.write_bytes(_png(64, 48, cut=60)),
    "bomb.png": lambda p: p.write_bytes(_png(100_000, 100_000)),
    "header-only.png": lambda p: p.write_bytes(_png(64, 48, cut=33)),
    "one-pixel.png": lambda p: Image.new("RGB", (1, 1), (200, 10, 10)).save(p),
    "one-row.png": lambda p: Image.new("RGB", (300, 1)).save(p),
    "grey16.png": _grey16,
    "palette.gif": lambda p: Image.new("P", (20, 10)).save(p),
    "cmyk.jpg": lambda p: Image.new("CMYK", (20, 10), (0, 50, 100, 0)).save(p),
    "rgba.png": lambda p: Image.new("RGBA", (20, 10), (10, 20, 30, 0)).save(p),
    "folder.png": lambda p: p.mkdir(),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_odd_images_are_read_or_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    IMAGES[name](path)
    try:
        image = load_image(path)
    except RefsegError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


class _Segmenter:
    """The runner's side of a segmenter: what matters here is reading the image, not the models."""

    memory = None

    def predict(self, image: np.ndarray) -> Instances:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        return Instances.empty(*image.shape[:2], ["red"])


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_odd_target_images_are_skipped_or_segmented(tmp_path: Path, name: str) -> None:
    """Each odd image beside a good one: the run ends, and the odd one is listed if unreadable."""
    from refseg.runner import predict_files
    from refseg.targets import collect_targets

    targets = tmp_path / "targets"
    targets.mkdir()
    IMAGES[name](targets / name)
    Image.new("RGB", (32, 24), (200, 10, 10)).save(targets / "good.png")
    out = tmp_path / "out" / "r.json"
    summary = predict_files(_Segmenter(), collect_targets([targets]), out, vis_dir=tmp_path / "out" / "vis",
                            progress=False)  # fmt: skip
    assert summary.total == summary.processed + summary.errors
    listed = {e["file_name"] for e in summary.error_records}
    assert listed <= {name} and "good.png" not in listed
    assert {p.name for p in tmp_path.iterdir()} == {"targets", "out"}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_odd_reference_images_are_skipped_or_added(tmp_path: Path, name: str) -> None:
    refs = tmp_path / "refs" / "red"
    refs.mkdir(parents=True)
    IMAGES[name](refs / name)
    stem = Path(name).stem
    mask = Image.new("L", (64, 48))
    mask.paste(255, (10, 10, 40, 30))
    mask.save(refs / f"{stem}.mask.png")
    scene = make_scene(3, classes=("red",), per_class=1)
    Image.fromarray(scene.image).save(refs / "good.png")
    Image.fromarray(scene.masks[0].astype(np.uint8) * 255).save(refs / "good.mask.png")
    from refseg.references import add_folder_references

    segmenter = Segmenter(SyntheticProposer(), SyntheticEncoder())
    report = add_folder_references(segmenter, tmp_path / "refs", progress=False, on_skip=lambda line: None)
    assert report.added >= 1
    if name != "folder.png":  # a folder is no image file: not a reference at all
        assert report.added + len(report.skipped) == 2


# ============================================================================= option values

OPTION_VALUES = ["0", "-1", "nan", "inf", "-inf", "1e999", "words", "", "2.5", "1"]
VERB_OPTIONS: dict[str, list[str]] = {
    "predict": ["--points-per-side", "--batch-size", "--iou-thr", "--nms-thr", "--max-instances", "--score-thr",
                "--limit"],
    "memory": ["--context-ratio"],
    "sample": ["--shots", "--seed"],
    "memory-show": ["--max-per-class", "--tile-size"],
    "reproduce": ["--shots", "--seed", "--limit", "--points-per-side", "--context-ratio"],
    "app": ["--port"],
}  # fmt: skip


def _verb(verb: str, root: Path) -> list[object]:
    out = root / "out"
    return {
        "predict": ["predict", "--memory", root / "m.safetensors", root, "-o", out / "r.json", *NO_MODELS],
        "memory": ["memory", "--folder", root, "-o", out / "m.safetensors", *NO_MODELS],
        "sample": ["sample", root / "coco.json", "--classes", "cat", "-o", out / "refs.json"],
        "memory-show": ["memory", "show", root / "m.safetensors", "-o", out / "m.png"],
        "reproduce": [
            "reproduce",
            "coco-fsod",
            "--coco-root",
            root / "nothing",
            "--out",
            out / "run",
            *NO_MODELS,
        ],
        "app": ["app", *NO_MODELS],
    }[verb]


OPTION_CASES = [
    (verb, flag, value) for verb, flags in VERB_OPTIONS.items() for flag in flags for value in OPTION_VALUES
]


@pytest.mark.parametrize(("verb", "flag", "value"), OPTION_CASES)
def test_option_values_end_in_an_error_or_a_run(tmp_path: Path, verb: str, flag: str, value: str) -> None:
    (tmp_path / "coco.json").write_text(json.dumps(_coco()))
    args = _verb(verb, tmp_path)
    if verb == "sample" and flag != "--shots":
        args += ["--shots", "1"]
    run_cli(tmp_path, *args, flag, value)


SETTINGS = ["points_per_side", "points_batch_size", "iou_threshold", "nms_threshold", "max_instances",
            "context_ratio", "max_candidates", "merge_exponent"]  # fmt: skip


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, "words", b"8", True, 2.5, 10**12, 1e308])
@pytest.mark.parametrize("setting", SETTINGS)
def test_setting_values_through_the_library(setting: str, value: Any) -> None:
    scene = make_scene(3, classes=("red",), size=(96, 96), per_class=1, radius=(10, 14))
    settings = {"points_per_side": 4, setting: value}  # a small grid, unless it is the setting tried

    def run() -> None:
        segmenter = Segmenter(SyntheticProposer(), SyntheticEncoder(), **settings)
        segmenter.add_reference(scene.image, "red", mask=scene.masks[0])
        segmenter.predict(scene.image)

    refused_by_library(run)
