"""The memory file: versions 1 and 2, and the one validation of what a file holds.

Malformed files are made here from a valid one (never stored); each must end in an
InvalidInputError naming the file and the problem, through the API and through the CLI
(``Error: ...``, exit 1, never a traceback and never "0 instances, exit 0").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from refseg import InvalidInputError, MemoryBank
from refseg.cli import cli
from refseg.memory_file import check_class_name, read_memory_metadata
from refseg.models.base import EncoderIdentity

IDENTITY = EncoderIdentity(
    "enc", "r1", 518, 4, fingerprint="abcd", fingerprints=(("all-weights-sha256-v1", "ef01"),)
)


def small_bank() -> MemoryBank:
    bank = MemoryBank(IDENTITY)
    bank.add(torch.tensor([1.0, 0, 0, 0]), "cat", {"file": "a.png"})
    bank.add(torch.tensor([0.0, 1, 0, 0]), "dog")
    bank.add(torch.tensor([1.0, 1, 0, 0]), "cat")
    bank.set_category_id("dog", 18)
    return bank


def with_negatives() -> MemoryBank:
    bank = small_bank()
    bank.add(torch.tensor([1.0, 0, 1, 0]), "cat", {"file": "n.png"}, negative=True)
    bank.add(torch.tensor([0.0, 0, 0, 1]), None, {"file": "wall.png"}, negative=True)
    return bank


# ---------------------------------------------------------------------------- versions


def test_a_bank_without_negatives_is_written_as_version_1_which_0_1_0_reads(tmp_path: Path) -> None:
    path = small_bank().save(tmp_path / "m.safetensors")
    metadata = read_memory_metadata(path)
    assert metadata["format_version"] == "1"
    # What refseg 0.1.0 reads: an encoder entry of its five fields, classes and references of
    # its keys (it refuses versions above 1 and ignores metadata it does not know).
    assert set(json.loads(metadata["encoder"])) == {
        "name",
        "revision",
        "input_size",
        "feature_dim",
        "fingerprint",
    }
    assert json.loads(metadata["classes"])[0] == {"name": "cat", "category_id": 1, "references": 2}
    assert json.loads(metadata["references"])[1] == {"ref_id": 1, "class": "dog", "source": {}}
    assert json.loads(metadata["encoder_fingerprints"]) == {"all-weights-sha256-v1": "ef01"}
    assert MemoryBank.load(path).encoder == IDENTITY


def test_a_bank_with_negatives_is_version_2_and_round_trips(tmp_path: Path) -> None:
    bank = with_negatives()
    path = bank.save(tmp_path / "m.safetensors")
    metadata = read_memory_metadata(path)
    assert metadata["format_version"] == "2"  # refseg 0.1.0 refuses it: "upgrade refseg"
    assert json.loads(metadata["classes"])[0] == {
        "name": "cat",
        "category_id": 1,
        "references": 2,
        "negatives": 1,
    }
    assert json.loads(metadata["references"])[4] == {
        "ref_id": 4,
        "class": None,
        "source": {"file": "wall.png"},
        "negative": True,
    }
    assert load_file(str(path))["reference_labels"].tolist() == [0, 1, 0, 0, -1]
    loaded = MemoryBank.load(path)
    assert [(r.ref_id, r.class_name, r.negative) for r in loaded.references] == [
        (0, "cat", False),
        (1, "dog", False),
        (2, "cat", False),
        (3, "cat", True),
        (4, None, True),
    ]
    assert torch.equal(loaded.reference_features, bank.reference_features)
    assert torch.equal(loaded.prototypes(), bank.prototypes())
    assert loaded.fingerprint() == bank.fingerprint()
    assert loaded.category_ids == {"cat": 1, "dog": 18}
    # Once its negatives are removed, the bank is written as version 1 again.
    for ref_id in (3, 4):
        loaded.remove_reference(ref_id)
    assert read_memory_metadata(loaded.save(tmp_path / "again.safetensors"))["format_version"] == "1"


# ---------------------------------------------------------------------------- malformed files


def rewrite(path: Path, change: Callable[[dict[str, str], dict[str, torch.Tensor]], None]) -> Path:
    """Rewrite a memory file with ``change(metadata, tensors)`` applied (in place)."""
    metadata, tensors = read_memory_metadata(path), load_file(str(path))
    change(metadata, tensors)
    save_file(tensors, str(path), metadata=metadata)
    return path


def edit_json(key: str, edit: Callable[[object], object]) -> Callable[[dict, dict], None]:
    def change(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
        metadata[key] = json.dumps(edit(json.loads(metadata[key])))

    return change


def set_feature(row: int, value: float) -> Callable[[dict, dict], None]:
    def change(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
        tensors["reference_features"][row] = value

    return change


def set_entry(index: int, key: str, value: object) -> Callable[[object], object]:
    def edit(entries):
        entries[index][key] = value
        return entries

    return edit


MALFORMED: dict[str, tuple[Callable[[dict, dict], None], str]] = {
    "nan feature": (set_feature(1, float("nan")), r"reference 1 \(dog\) is not finite"),
    "inf feature": (set_feature(0, float("inf")), r"reference 0 \(cat\) is not finite"),
    "all-zero feature": (set_feature(2, 0.0), r"reference 2 \(cat\) is all zeros"),
    "class without references": (
        edit_json("classes", lambda c: [*c, {"name": "bird", "category_id": 3, "references": 0}]),
        r"class 'bird' has no positive reference",
    ),
    "duplicated class": (edit_json("classes", lambda c: [*c, c[0]]), r"class 'cat' is listed twice"),
    "category id as text": (
        edit_json("classes", set_entry(1, "category_id", "seven")),
        r"class 'dog' has category_id 'seven', not a whole number",
    ),
    "classes as a string": (edit_json("classes", lambda c: "cat,dog"), r"classes entry is a str, not a list"),
    "next_id as text": (
        lambda m, t: m.update(next_id="abc"),
        r"next_id 'abc' is not a whole number",
    ),
    "next_id not above the ids": (lambda m, t: m.update(next_id="2"), r"next_id 2 is not above"),
    "reference of an unknown class": (
        edit_json("references", set_entry(1, "class", "horse")),
        r"reference 1 is of class 'horse', which is not in its classes",
    ),
    "3-d features": (
        lambda m, t: t.update(reference_features=t["reference_features"][:, :, None]),
        r"reference_features is a 3-d",
    ),
    "features of another size": (
        lambda m, t: t.update(reference_features=t["reference_features"][:, :3].contiguous()),
        r"shape \(3, 3\), not float \(3 references, 4 encoder features\)",
    ),
    "no features": (lambda m, t: t.pop("reference_features"), r"no reference_features tensor"),
    "duplicate ref ids": (
        edit_json("references", set_entry(2, "ref_id", 0)),
        r"reference id 0 is used twice",
    ),
    "ref id as text": (
        edit_json("references", set_entry(0, "ref_id", "0")),
        r"ref_id '0', not a whole number",
    ),
    "version as text": (
        lambda m, t: m.update(format_version="one"),
        r"format_version 'one' is not a whole number",
    ),
    "encoder size as text": (
        edit_json("encoder", lambda e: {**e, "input_size": "518"}),
        r"the encoder's input_size is '518', not a whole number",
    ),
    "encoder as a list": (edit_json("encoder", lambda e: [e]), r"encoder entry is not a json object"),
    "metadata not json": (lambda m, t: m.update(references="[{"), r"'references' entry is not json"),
    "no references entry": (lambda m, t: m.pop("references"), r"no 'references' entry"),
    "labels disagree": (
        lambda m, t: t.update(reference_labels=torch.tensor([1, 1, 0])),
        r"reference_labels disagree",
    ),
    "declared count wrong": (
        edit_json("classes", set_entry(0, "references", 5)),
        r"class 'cat' declares 5 references but the file holds 2",
    ),
    "context ratio as text": (lambda m, t: m.update(context_ratio='"wide"'), r"context_ratio 'wide'"),
    "negative flag as text": (
        edit_json("references", set_entry(0, "negative", "yes")),
        r"reference 0 has negative 'yes'",
    ),
    "class-less positive": (
        edit_json("references", set_entry(1, "class", None)),
        r"reference 1 has an unusable",
    ),
    "lone surrogate class name": (
        edit_json("classes", set_entry(0, "name", "ca\udcfft")),
        r"class entry 0 has an unusable class name .*lone surrogate",
    ),
    "control character in a class name": (
        edit_json("classes", set_entry(0, "name", "c\nat")),
        r"control character",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_memory_file_is_refused_naming_the_file_and_the_problem(
    tmp_path: Path, case: str
) -> None:
    change, problem = MALFORMED[case]
    path = rewrite(small_bank().save(tmp_path / "m.safetensors"), change)
    with pytest.raises(InvalidInputError, match=problem) as raised:
        MemoryBank.load(path)
    assert str(path) in str(raised.value)
    info = CliRunner().invoke(cli, ["memory", "info", str(path)])
    assert info.exit_code == 1 and info.output.startswith("Error: ") and info.exception is not None
    assert isinstance(info.exception, SystemExit)  # a clean exit, not a traceback
    info.output.encode("utf-8")  # printable


def test_predict_refuses_a_malformed_memory_before_loading_models(tmp_path: Path) -> None:
    path = rewrite(small_bank().save(tmp_path / "m.safetensors"), set_feature(1, float("nan")))
    (tmp_path / "t").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "t" / "a.png")
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            "--memory",
            str(path),
            str(tmp_path / "t"),
            "-o",
            str(tmp_path / "r.json"),
            "--sam2",
            "nowhere",
        ],
    )
    assert (
        result.exit_code == 1
        and "is not finite" in result.output
        and isinstance(result.exception, SystemExit)
    )


def test_negatives_in_a_file_must_belong_to_a_class_with_positives(tmp_path: Path) -> None:
    def orphan(entries):
        entries[3]["class"] = "horse"
        return entries

    path = rewrite(with_negatives().save(tmp_path / "m.safetensors"), edit_json("references", orphan))
    with pytest.raises(
        InvalidInputError, match="reference 3 is of class 'horse', which is not in its classes"
    ):
        MemoryBank.load(path)


def test_a_newer_format_asks_for_an_upgrade(tmp_path: Path) -> None:
    path = rewrite(small_bank().save(tmp_path / "m.safetensors"), lambda m, t: m.update(format_version="3"))
    with pytest.raises(InvalidInputError, match="newer refseg.*upgrade refseg"):
        MemoryBank.load(path)


# ---------------------------------------------------------------------------- class names


@pytest.mark.parametrize("name", ["ca\udcfft", "\ud800", "a\tb", "line\nbreak", "", "   ", 7, None])
def test_the_one_class_name_check_refuses_what_cannot_be_printed_or_is_not_a_name(name: object) -> None:
    with pytest.raises(InvalidInputError) as raised:
        check_class_name(name)
    str(raised.value).encode("ascii")  # the message itself prints anywhere
    bank = MemoryBank(IDENTITY)
    if name is not None:  # None is a background negative's class: refused for a positive
        with pytest.raises(InvalidInputError):
            bank.add(torch.ones(4), name)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        bank.add(torch.ones(4), None)  # a positive needs a class


def test_unicode_class_names_are_kept_and_printed(tmp_path: Path) -> None:
    bank = MemoryBank(IDENTITY)
    for name in ("café", "猫", "🐕 dog"):
        bank.add(torch.ones(4), name)
    path = bank.save(tmp_path / "m.safetensors")
    assert MemoryBank.load(path).class_names == ["café", "猫", "🐕 dog"]
    info = CliRunner().invoke(cli, ["memory", "info", str(path)])
    assert info.exit_code == 0 and "猫" in info.output


# ---------------------------------------------------------------------------- many classes


def test_saving_loading_and_describing_10000_classes_is_linear(tmp_path: Path) -> None:
    """Issue 12 item 20: 10,000 classes took 15.7 s to save and 26.5 s to describe (quadratic).
    A generous bound, not a speed figure: linear code takes about a second here."""
    bank = MemoryBank(IDENTITY)
    started = time.perf_counter()
    for k in range(10_000):
        bank.add(torch.tensor([1.0, k, 0, 0]), f"class {k}")
        bank.set_category_id(f"class {k}", k + 100)
    path = bank.save(tmp_path / "m.safetensors")
    loaded = MemoryBank.load(path)
    text = loaded.describe()
    prototypes = loaded.prototypes()
    elapsed = time.perf_counter() - started
    assert len(text.splitlines()) == 3 + 10_000 and prototypes.shape == (10_000, 4)
    assert elapsed < 15.0, f"{elapsed:.1f} s for 10,000 classes"


def test_a_path_that_is_not_utf8_saves_and_loads(tmp_path: Path) -> None:
    """safetensors' own reader wants UTF-8 paths; a memory file is read and written as bytes."""
    path = tmp_path / "m\udcff.safetensors"  # the byte 0xff of a file name in another encoding
    with_negatives().save(path)
    assert MemoryBank.load(path).negative_counts() == {"cat": 1, "dog": 0, None: 1}
    assert read_memory_metadata(path)["format_version"] == "2"
    info = CliRunner().invoke(cli, ["memory", "info", str(path)])
    assert info.exit_code == 0 and "cat" in info.output


def test_a_class_folder_whose_name_is_not_text_is_skipped_with_a_message(
    tmp_path: Path, tiny_sam2_dir: Path, tiny_dinov2_dir: Path
) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    image[10:40, 10:40] = 200
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 10:40] = 255
    for name in ("c\udcffat", "dog"):  # an undecodable byte in a folder name
        (tmp_path / "refs" / name).mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "refs" / name / "a.png")
        Image.fromarray(mask).save(tmp_path / "refs" / name / "a.mask.png")
    models = ["--sam2", str(tiny_sam2_dir), "--encoder", str(tiny_dinov2_dir), "--device", "cpu"]
    out = tmp_path / "memory.safetensors"
    built = CliRunner().invoke(cli, ["memory", "--folder", str(tmp_path / "refs"), "-o", str(out), *models])
    assert built.exit_code == 0, built.output
    assert "is not valid text" in built.stderr and "lone surrogate" in built.stderr
    assert MemoryBank.load(out).class_names == ["dog"]
