"""The memory file: one safetensors file, and the one validation of what it holds.

A memory bank (:class:`refseg.memory.MemoryBank`) is written to, and read from, ONE
safetensors file (no pickle): its tensors and json metadata.

Tensors:
    ``reference_features``: (R, C) float32, one row per reference, in reference order.
    ``reference_labels``: (R,) int64, each reference's index in ``classes`` (-1: a background
    negative, one that belongs to no class).

Metadata (strings):
    ``format`` ("refseg.memory"), ``format_version``, ``refseg_version``;
    ``encoder``: json ``{name, revision, input_size, feature_dim, fingerprint}`` (``fingerprint``
    of kind :data:`~refseg.models.base.LEGACY_FINGERPRINT_KIND`);
    ``encoder_fingerprints`` (optional, since 0.2): json ``{kind: hex digest}``, e.g. the hash of
    all weights;
    ``classes``: json ``[{name, category_id, references[, negatives]}]`` (``references`` counts
    the positive references);
    ``references``: json ``[{ref_id, class, source[, negative]}]`` (``class`` null: background);
    ``next_id``; ``context_ratio`` (optional json number: refseg 0.1.0 wrote none);
    ``reference_crop`` (optional json string, since 0.2: the crop convention of the features,
    ``"research"`` or ``"refseg"``; a file without it was cropped the ``"refseg"`` way, the
    only one before).

Versions: a bank without negative references is written as format version 1, which refseg
0.1.0 reads; a bank with negatives as version 2, which 0.1.0 refuses ("upgrade refseg")
instead of reading the negatives as positives. Both are read here.

Every file read goes through :func:`read_memory_file`, the one place its metadata and tensors
are checked: any problem is an :class:`~refseg.errors.InvalidInputError` naming the file and
the problem, never a later ``KeyError`` or a silent run that finds nothing.
"""

from __future__ import annotations

import json
import math
import os
import struct
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .errors import InvalidInputError
from .files import atomic_write
from .models.base import EncoderIdentity
from .presets import SETTING_CHOICES

FORMAT_NAME = "refseg.memory"
#: Written for a bank without negative references (what refseg 0.1.0 reads).
FORMAT_VERSION = 1
#: Written for a bank with negative references (refseg 0.1.0 refuses it instead of misreading it).
FORMAT_VERSION_NEGATIVES = 2
#: The newest version this refseg reads.
READABLE_VERSION = FORMAT_VERSION_NEGATIVES

#: ``reference_labels`` value of a background negative (a negative of no class).
BACKGROUND_LABEL = -1


@dataclass
class ReferenceRecord:
    """What the bank remembers of one reference besides its feature.

    Attributes:
        ref_id: the reference's id (unique in its bank).
        class_name: its class; None for a background negative (an example of nothing to find).
        source: free-form provenance (file, annotation id, the prompt it was marked with...).
        negative: True for an example of what is NOT ``class_name`` (or of no class at all).
    """

    ref_id: int
    class_name: str | None
    source: dict = field(default_factory=dict)
    negative: bool = False


@dataclass
class MemoryContents:
    """What a memory file holds, checked.

    Attributes:
        encoder: the identity of the encoder that made the features.
        classes: class names in class order (each has at least one positive reference).
        category_ids: class name -> category id, for every class.
        records: the references, in feature order.
        features: (R, C) float32, finite, no all-zero row.
        next_id: the id the next added reference gets (above every ``ref_id``).
        context_ratio: the references' crop margin; None when the file records none (0.1.0).
        reference_crop: the references' crop convention; None when the file records none
            (written before 0.2's conventions: ``"refseg"``).
    """

    encoder: EncoderIdentity
    classes: list[str]
    category_ids: dict[str, int]
    records: list[ReferenceRecord]
    features: torch.Tensor
    next_id: int
    context_ratio: float | None
    reference_crop: str | None = None


# --------------------------------------------------------------------------- class names


def check_class_name(class_name: object) -> str:
    """The one check of a class name, for references added and files read: a non-empty string of
    printable text. Returns it without surrounding spaces.

    Raises:
        InvalidInputError: not a string, empty, not encodable as UTF-8 (a lone surrogate, as an
            undecodable byte of a folder name becomes in Python) or holding a control character.
    """
    if not isinstance(class_name, str) or not class_name.strip():
        raise InvalidInputError(f"A class name must be a non-empty string, not {ascii(class_name)}.")
    try:
        class_name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(
            f"The class name {ascii(class_name)} is not valid text: it holds a lone surrogate (an "
            "undecodable byte, e.g. from a folder name in another encoding). Rename it with UTF-8 text."
        ) from None
    if any(unicodedata.category(character) == "Cc" for character in class_name):
        raise InvalidInputError(
            f"The class name {ascii(class_name)} holds a control character (a newline, tab...): "
            "use printable text."
        )
    return class_name.strip()


# --------------------------------------------------------------------------- writing


def write_memory_file(path: str | os.PathLike, contents: MemoryContents, refseg_version: str) -> Path:
    """Write ``contents`` to ONE safetensors file (:func:`refseg.files.atomic_write`).

    Version 1 when no reference is negative, else version 2 (the module docstring). Linear in
    the number of classes and references.
    """
    has_negatives = any(record.negative for record in contents.records)
    positives = Counter(r.class_name for r in contents.records if not r.negative)
    negatives = Counter(r.class_name for r in contents.records if r.negative)
    classes = []
    for name in contents.classes:
        entry: dict[str, Any] = {
            "name": name,
            "category_id": contents.category_ids[name],
            "references": positives[name],
        }
        if has_negatives:
            entry["negatives"] = negatives[name]
        classes.append(entry)
    references = []
    for record in contents.records:
        entry = {"ref_id": record.ref_id, "class": record.class_name, "source": record.source}
        if record.negative:
            entry["negative"] = True
        references.append(entry)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION_NEGATIVES if has_negatives else FORMAT_VERSION),
        "refseg_version": refseg_version,
        "encoder": json.dumps(contents.encoder.as_dict()),
        "classes": json.dumps(classes),
        "references": json.dumps(references),
        "next_id": str(contents.next_id),
    }
    if contents.encoder.fingerprints:
        metadata["encoder_fingerprints"] = json.dumps(dict(contents.encoder.fingerprints))
    if contents.context_ratio is not None:
        metadata["context_ratio"] = json.dumps(contents.context_ratio)
    if contents.reference_crop is not None:
        metadata["reference_crop"] = json.dumps(contents.reference_crop)
    index = {name: i for i, name in enumerate(contents.classes)}
    labels = [BACKGROUND_LABEL if r.class_name is None else index[r.class_name] for r in contents.records]
    tensors = {
        "reference_features": contents.features.float().contiguous(),
        "reference_labels": torch.tensor(labels, dtype=torch.int64),
    }
    # written as bytes: any path the system takes
    return atomic_write(
        path, lambda temporary: temporary.write_bytes(save_tensors(tensors, metadata=metadata))
    )


# --------------------------------------------------------------------------- reading


def read_memory_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The raw metadata of a memory file, without loading its tensors (not checked).

    Raises:
        InvalidInputError: the file cannot be read, or is not a safetensors file.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = _header_size(handle.read(8))
            return _header_metadata(handle.read(size))
    except OSError as error:
        raise InvalidInputError(f"Cannot read {path}: {error.strerror or error}") from error
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise InvalidInputError(f"{path} is not a refseg memory file (safetensors): {error}") from error


def _header_size(first_bytes: bytes) -> int:
    """The json header's size: a safetensors file starts with it, 8 bytes little-endian."""
    if len(first_bytes) != 8:
        raise ValueError("the file is shorter than a safetensors header")
    (size,) = struct.unpack("<Q", first_bytes)
    if size > 100_000_000:
        raise ValueError(f"a header of {size} bytes")
    return size


def _header_metadata(header: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors json header."""
    try:
        parsed = json.loads(header)
    except RecursionError:
        raise ValueError("its header is nested too deep") from None
    metadata = parsed.get("__metadata__") if isinstance(parsed, dict) else None
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("its __metadata__ is not a map of strings")
    return metadata


def read_memory_file(path: str | os.PathLike) -> MemoryContents:
    """Read and check a memory file written by any refseg version.

    Checked: the format and its version; the encoder entry (types); every class (a valid name,
    an integer category id, no duplicate, at least one positive reference); every reference (an
    integer id, no duplicate, a class among the classes, or none for a background negative); the
    next id; the context ratio; the features ((R, C) with R references and the encoder's C,
    finite, no all-zero row) and labels (agreeing with the references). The file is read as
    bytes, so any path the system takes works (safetensors' own reader wants UTF-8 paths).

    Raises:
        InvalidInputError: the file is missing, not a memory file, written by a newer refseg, or
            any check fails; the message names the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"Memory file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InvalidInputError(f"Cannot read {path}: {error.strerror or error}") from error
    try:
        metadata = _header_metadata(data[8 : 8 + _header_size(data[:8])])
        tensors = load_tensors(data)
    except Exception as error:  # json, struct and safetensors' own SafetensorError (not exported everywhere)
        raise InvalidInputError(f"{path} is not a refseg memory file (safetensors): {error}") from error
    return _Reader(path, metadata, tensors).contents()


class _Reader:
    """The checks of :func:`read_memory_file`, one method per part of the file."""

    def __init__(self, path: Path, metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
        self.path = path
        self.metadata = metadata
        self.tensors = tensors

    def damaged(self, problem: str) -> InvalidInputError:
        return InvalidInputError(
            f"{self.path}: {problem}. The memory file is damaged or was edited by hand: rebuild it "
            "with `refseg memory` (or the Python API)."
        )

    def json_entry(self, key: str, *, required: bool = True) -> Any:
        text = self.metadata.get(key)
        if text is None:
            if required:
                raise self.damaged(f"its metadata has no {key!r} entry")
            return None
        try:
            return json.loads(text)
        except ValueError as error:
            raise self.damaged(f"its {key!r} entry is not json ({error})") from None
        except RecursionError:  # json nested thousands deep: no refseg file holds that
            raise self.damaged(f"its {key!r} entry is nested too deep") from None

    def contents(self) -> MemoryContents:
        if self.metadata.get("format") != FORMAT_NAME:
            raise InvalidInputError(f"{self.path} is a safetensors file but not a refseg memory bank.")
        version = self.version()
        encoder = self.encoder()
        classes, category_ids, declared = self.classes()
        records = self.references(classes, version)
        self.check_class_counts(classes, records, declared)
        features = self.features(encoder, records)
        self.check_labels(classes, records)
        return MemoryContents(
            encoder=encoder,
            classes=classes,
            category_ids=category_ids,
            records=records,
            features=features,
            next_id=self.next_id(records),
            context_ratio=self.context_ratio(),
            reference_crop=self.reference_crop(),
        )

    def version(self) -> int:
        text = self.metadata.get("format_version")
        try:
            version = int(str(text))
        except ValueError:
            raise self.damaged(f"format_version {text!r} is not a whole number") from None
        if version > READABLE_VERSION:
            raise InvalidInputError(
                f"{self.path} was written by a newer refseg (memory format {version}); upgrade refseg to read it."
            )
        if version < 1:
            raise self.damaged(f"format_version {version} does not exist")
        return version

    def encoder(self) -> EncoderIdentity:
        entry = self.json_entry("encoder")
        if not isinstance(entry, dict):
            raise self.damaged("its encoder entry is not a json object")
        for key, kind, what in (
            ("name", str, "string"),
            ("revision", str, "string"),
            ("input_size", int, "whole number"),
            ("feature_dim", int, "whole number"),
        ):
            if not _is(entry.get(key), kind):
                raise self.damaged(f"the encoder's {key} is {entry.get(key)!r}, not a {what}")
        for key in ("input_size", "feature_dim"):
            if entry[key] <= 0:
                raise self.damaged(f"the encoder's {key} is {entry[key]}, not a positive number")
        fingerprint = entry.get("fingerprint", "")
        if not isinstance(fingerprint, str):
            raise self.damaged(f"the encoder's fingerprint is {fingerprint!r}, not a string")
        kinds = self.json_entry("encoder_fingerprints", required=False) or {}
        if not isinstance(kinds, dict) or not all(isinstance(v, str) for v in kinds.values()):
            raise self.damaged("its encoder_fingerprints entry is not a json object of strings")
        return EncoderIdentity(
            name=entry["name"],
            revision=entry["revision"],
            input_size=entry["input_size"],
            feature_dim=entry["feature_dim"],
            fingerprint=fingerprint,
            fingerprints=tuple(sorted(kinds.items())),
        )

    def classes(self) -> tuple[list[str], dict[str, int], dict[str, tuple[Any, Any]]]:
        """Class names, category ids, and the (references, negatives) counts the file declares."""
        entries = self.json_entry("classes")
        if not isinstance(entries, list):
            raise self.damaged(f"its classes entry is a {type(entries).__name__}, not a list")
        names: list[str] = []
        category_ids: dict[str, int] = {}
        declared: dict[str, tuple[Any, Any]] = {}
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise self.damaged(f"class entry {position} is {ascii(entry)[:60]}, not a json object")
            name = self.class_name(entry.get("name"), f"class entry {position}")
            category_id = entry.get("category_id")
            if not _is(category_id, int):
                raise self.damaged(f"class {name!r} has category_id {category_id!r}, not a whole number")
            if name in category_ids:
                raise self.damaged(f"class {name!r} is listed twice")
            names.append(name)
            category_ids[name] = category_id
            declared[name] = (entry.get("references"), entry.get("negatives"))
        return names, category_ids, declared

    def class_name(self, value: object, where: str) -> str:
        try:
            return check_class_name(value)
        except InvalidInputError as error:
            raise self.damaged(f"{where} has an unusable class name ({error})") from None

    def references(self, classes: list[str], version: int) -> list[ReferenceRecord]:
        entries = self.json_entry("references")
        if not isinstance(entries, list):
            raise self.damaged(f"its references entry is a {type(entries).__name__}, not a list")
        known = set(classes)
        records: list[ReferenceRecord] = []
        seen: set[int] = set()
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise self.damaged(f"reference entry {position} is {ascii(entry)[:60]}, not a json object")
            ref_id = entry.get("ref_id")
            if not _is(ref_id, int) or ref_id < 0:
                raise self.damaged(
                    f"reference entry {position} has ref_id {ref_id!r}, not a whole number >= 0"
                )
            if ref_id in seen:
                raise self.damaged(f"reference id {ref_id} is used twice")
            seen.add(ref_id)
            negative = entry.get("negative", False)
            if not isinstance(negative, bool):
                raise self.damaged(f"reference {ref_id} has negative {negative!r}, not true or false")
            raw_class = entry.get("class")
            if raw_class is None and negative:
                class_name = None
            else:
                class_name = self.class_name(raw_class, f"reference {ref_id}")
                if class_name not in known:
                    raise self.damaged(
                        f"reference {ref_id} is of class {class_name!r}, which is not in its classes"
                    )
            source = entry.get("source", {})
            if not isinstance(source, dict):
                raise self.damaged(f"reference {ref_id} has a source that is not a json object")
            records.append(ReferenceRecord(ref_id, class_name, source, negative))
        return records

    def check_class_counts(
        self, classes: list[str], records: list[ReferenceRecord], declared: dict[str, tuple[Any, Any]]
    ) -> None:
        positives = Counter(r.class_name for r in records if not r.negative)
        negatives = Counter(r.class_name for r in records if r.negative)
        for name in classes:
            if positives[name] == 0:
                raise self.damaged(
                    f"class {name!r} has no positive reference (a class is defined by its examples)"
                )
            references, negative_count = declared[name]
            if references is not None and references != positives[name]:
                raise self.damaged(
                    f"class {name!r} declares {references!r} references but the file holds {positives[name]}"
                )
            if negative_count is not None and negative_count != negatives[name]:
                raise self.damaged(
                    f"class {name!r} declares {negative_count!r} negatives but the file holds {negatives[name]}"
                )

    def features(self, encoder: EncoderIdentity, records: list[ReferenceRecord]) -> torch.Tensor:
        features = self.tensors.get("reference_features")
        if features is None:
            raise self.damaged("it has no reference_features tensor")
        expected = (len(records), encoder.feature_dim)
        if features.dim() != 2 or not features.dtype.is_floating_point or tuple(features.shape) != expected:
            raise self.damaged(
                f"reference_features is a {features.dim()}-d {features.dtype} tensor of shape "
                f"{tuple(features.shape)}, not float ({expected[0]} references, {expected[1]} encoder features)"
            )
        features = features.float()
        for problem, bad in (
            ("is not finite (NaN or infinite)", ~torch.isfinite(features).all(dim=1)),
            ("is all zeros", (features == 0).all(dim=1)),
        ):
            rows = torch.nonzero(bad).flatten().tolist()
            if rows:
                record = records[rows[0]]
                more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
                raise self.damaged(
                    f"the feature of reference {record.ref_id} ({record.class_name}) {problem}{more}"
                )
        return features.contiguous()

    def check_labels(self, classes: list[str], records: list[ReferenceRecord]) -> None:
        labels = self.tensors.get("reference_labels")
        if labels is None:  # redundant with the references' classes: not required
            return
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.shape[0] != len(records):
            raise self.damaged(f"reference_labels has shape {tuple(labels.shape)} and type {labels.dtype}")
        index = {name: i for i, name in enumerate(classes)}
        expected = [BACKGROUND_LABEL if r.class_name is None else index[r.class_name] for r in records]
        if labels.tolist() != expected:
            raise self.damaged("reference_labels disagree with the references' classes")

    def next_id(self, records: list[ReferenceRecord]) -> int:
        text = self.metadata.get("next_id")
        if text is None:
            return 1 + max((r.ref_id for r in records), default=-1)
        try:
            next_id = int(text)
        except ValueError:
            raise self.damaged(f"next_id {text!r} is not a whole number") from None
        highest = max((r.ref_id for r in records), default=-1)
        if next_id <= highest:
            raise self.damaged(f"next_id {next_id} is not above the largest reference id {highest}")
        return next_id

    def context_ratio(self) -> float | None:
        ratio = self.json_entry("context_ratio", required=False)
        if ratio is None:
            return None
        if not _is(ratio, float) or not math.isfinite(ratio) or ratio < 0:
            raise self.damaged(f"context_ratio {ratio!r} is not a number >= 0")
        return float(ratio)

    def reference_crop(self) -> str | None:
        convention = self.json_entry("reference_crop", required=False)
        choices = SETTING_CHOICES["reference_crop"]
        if convention is not None and convention not in choices:
            raise self.damaged(f"reference_crop {convention!r} is not one of {list(choices)}")
        return convention


def _is(value: object, kind: type) -> bool:
    """``value`` is a ``kind`` as json gives it: bools are not numbers, ints are floats too."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)
