"""Memory bank: METHOD.md section 1 against hand computations, editing, file round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from synthetic import SyntheticEncoder, SyntheticProposer, make_scene

from refseg import EncoderMismatchError, InvalidInputError, MemoryBank, Segmenter
from refseg.masks import decode_mask
from refseg.masks import mask_box_exclusive as mask_box
from refseg.memory import context_crop_box as old_home_of_context_crop_box
from refseg.memory_file import read_memory_metadata
from refseg.models.base import EncoderIdentity
from refseg.reference_features import context_crop_box, pool_reference, reference_feature, reference_inputs

IDENTITY = EncoderIdentity("enc", "r1", 518, 4)


def test_mask_box_is_exclusive_and_rejects_empty():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask) == (3, 2, 9, 5)
    with pytest.raises(InvalidInputError, match="empty"):
        mask_box(np.zeros((4, 4), dtype=bool))


def test_context_crop_box_centre_and_side():
    assert old_home_of_context_crop_box is context_crop_box  # still importable from refseg.memory
    # box 40 wide, 20 high, centre (60, 50): side 1.2 * 40 = 48 -> [36, 84) x [26, 74)
    assert context_crop_box((40, 40, 80, 60), (200, 200), 0.2) == (36, 26, 84, 74)
    # fractional bounds: floor the low edge, ceil the high edge
    assert context_crop_box((10, 10, 21, 21), (100, 100), 0.2) == (8, 8, 23, 23)  # centre 15.5, half 6.6


def test_context_crop_box_clipped_at_borders_is_not_square():
    x0, y0, x1, y1 = context_crop_box((0, 90, 30, 100), (100, 200), 0.2)  # side 36, centre (15, 95)
    assert (x0, y0, x1, y1) == (0, 77, 33, 100)
    assert (x1 - x0) != (y1 - y0)


def test_reference_inputs_shapes_and_soft_mask():
    image = np.zeros((100, 120, 3), dtype=np.uint8)
    image[30:70, 40:80] = 255
    mask = np.zeros((100, 120), dtype=bool)
    mask[30:70, 40:80] = True
    crop, soft = reference_inputs(image, mask, 56, 0.2)
    assert crop.shape == (3, 56, 56) and soft.shape == (56, 56)
    assert 0.0 <= float(soft.min()) and float(soft.max()) <= 1.0
    # the mask is bilinear: some values strictly between 0 and 1 on the edge
    assert ((soft > 0.01) & (soft < 0.99)).any()
    # crop [36, 84) x [26, 74): the object covers 40/48 of each side, centred
    assert float(soft.mean()) == pytest.approx((40 / 48) ** 2, abs=0.03)


def test_pool_reference_uses_nearest_weights():
    features = torch.arange(2 * 2 * 2, dtype=torch.float32).reshape(2, 2, 2)
    soft = torch.zeros(4, 4)
    soft[0:2, 0:2] = 1.0  # nearest to 2x2 samples rows/cols 0, 2 -> only patch (0, 0)
    soft[2, 2] = 0.5  # patch (1, 1) sampled at (2, 2) -> weight 0.5
    pooled = pool_reference(features, soft)
    expected = (features[:, 0, 0] * 1.0 + features[:, 1, 1] * 0.5) / 1.5
    assert torch.allclose(pooled, expected)


def test_pool_reference_tiny_object_does_not_give_nan():
    features = torch.randn(3, 4, 4)
    soft = torch.zeros(16, 16)
    soft[1, 1] = 0.7  # nearest sampling to 4x4 looks at 0, 4, 8, 12: misses it
    pooled = pool_reference(features, soft)
    assert torch.isfinite(pooled).all()


def test_prototypes_average_references_equally_then_normalise():
    bank = MemoryBank(IDENTITY)
    bank.add(torch.tensor([2.0, 0, 0, 0]), "a")
    bank.add(torch.tensor([0.0, 1, 0, 0]), "a")
    bank.add(torch.tensor([0.0, 0, 3, 0]), "b")
    protos = bank.prototypes()
    assert bank.class_names == ["a", "b"]
    expected_a = torch.tensor([1.0, 0.5, 0, 0])
    assert torch.allclose(protos[0], expected_a / expected_a.norm())
    assert torch.allclose(protos[1], torch.tensor([0.0, 0, 1, 0]))


def test_incremental_add_and_remove():
    bank = MemoryBank(IDENTITY)
    a = bank.add(torch.tensor([1.0, 0, 0, 0]), "a")
    bank.add(torch.tensor([0.0, 1, 0, 0]), "b")
    before_b = bank.prototypes()[1].clone()
    c = bank.add(torch.tensor([0.0, 0, 1, 0]), "c")
    assert torch.equal(bank.prototypes()[1], before_b)  # adding c leaves b untouched
    assert bank.counts() == {"a": 1, "b": 1, "c": 1}
    bank.remove_reference(a)
    assert bank.class_names == ["b", "c"]
    bank.remove_class("c")
    assert bank.class_names == ["b"] and len(bank) == 1
    with pytest.raises(InvalidInputError):
        bank.remove_reference(c)
    with pytest.raises(InvalidInputError):
        bank.remove_class("zebra")
    with pytest.raises(InvalidInputError):
        MemoryBank(IDENTITY).prototypes()
    with pytest.raises(InvalidInputError):
        bank.add(torch.tensor([1.0, 0, 0]), "b")  # wrong size
    with pytest.raises(InvalidInputError):
        bank.add(torch.tensor([float("nan"), 0, 0, 0]), "b")
    with pytest.raises(InvalidInputError):
        bank.add(torch.tensor([1.0, 0, 0, 0]), "  ")


def test_save_load_round_trip(tmp_path):
    bank = MemoryBank(IDENTITY)
    bank.add(torch.tensor([1.0, 2, 3, 4]), "cat", {"file": "a.jpg", "annotation_id": 7})
    bank.add(torch.tensor([4.0, 3, 2, 1]), "dog")
    bank.add(torch.tensor([0.5, 0, 0, 1]), "cat")
    bank.set_category_id("cat", 17)
    path = bank.save(tmp_path / "m.safetensors")
    loaded = MemoryBank.load(path)
    assert loaded.class_names == ["cat", "dog"]
    assert loaded.category_ids == {"cat": 17, "dog": 2}
    assert loaded.counts() == {"cat": 2, "dog": 1}
    assert loaded.references[0].source == {"file": "a.jpg", "annotation_id": 7}
    assert torch.equal(loaded.reference_features, bank.reference_features)
    assert torch.equal(loaded.prototypes(), bank.prototypes())
    assert loaded.encoder == IDENTITY
    meta = read_memory_metadata(path)
    assert meta["format"] == "refseg.memory" and json.loads(meta["encoder"])["name"] == "enc"
    # ids keep counting after a reload
    new_id = loaded.add(torch.tensor([1.0, 1, 1, 1]), "dog")
    assert new_id == 3
    # no pickle: the file is plain safetensors
    assert path.read_bytes()[8:9] == b"{"


def test_memory_file_size_is_kilobytes_per_class(tmp_path):
    identity = EncoderIdentity("facebook/dinov2-large", "main", 518, 1024)
    bank = MemoryBank(identity)
    for k in range(20):
        for shot in range(30):
            bank.add(torch.randn(1024), f"class{k}", {"file": f"{k}_{shot}.jpg", "annotation_id": shot})
    size = bank.save(tmp_path / "m.safetensors").stat().st_size
    assert size < 3_000_000  # 600 x 1024 float32 = 2.4 MB + metadata (the research code: 3.4 GB)


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        MemoryBank.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InvalidInputError):
        MemoryBank.load(bad)


def test_encoder_mismatch():
    bank = MemoryBank(IDENTITY)
    bank.check_encoder(EncoderIdentity("enc", "r1", 518, 4))
    with pytest.raises(EncoderMismatchError, match="feature size"):
        bank.check_encoder(EncoderIdentity("enc", "r1", 518, 8))
    with pytest.raises(EncoderMismatchError, match="input size"):
        bank.check_encoder(EncoderIdentity("enc", "r1", 224, 4))
    with pytest.raises(EncoderMismatchError):
        bank.check_encoder(EncoderIdentity("other", "r1", 518, 4))
    # same weights from another path: fingerprints agree, names do not matter
    a = EncoderIdentity("facebook/dinov2-small", "main", 518, 4, fingerprint="abc")
    MemoryBank(a).check_encoder(EncoderIdentity("/models/dinov2-small", "local", 518, 4, fingerprint="abc"))
    with pytest.raises(EncoderMismatchError):
        MemoryBank(a).check_encoder(
            EncoderIdentity("facebook/dinov2-small", "main", 518, 4, fingerprint="xyz")
        )


def test_decode_mask_formats_agree():
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:15, 10:25] = True
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle_json = {"size": rle["size"], "counts": rle["counts"].decode()}
    polygon = [[10, 5, 25, 5, 25, 15, 10, 15]]
    uncompressed = {"size": [20, 30], "counts": [int(c) for c in _runs(mask)]}
    assert np.array_equal(decode_mask(mask, (20, 30)), mask)
    assert np.array_equal(decode_mask(mask.astype(np.uint8) * 255, (20, 30)), mask)
    assert np.array_equal(decode_mask(rle_json, (20, 30)), mask)
    assert np.array_equal(decode_mask(uncompressed, (20, 30)), mask)
    assert abs(int(decode_mask(polygon, (20, 30)).sum()) - int(mask.sum())) <= 30
    with pytest.raises(InvalidInputError):
        decode_mask(mask, (21, 30))
    with pytest.raises(InvalidInputError):
        decode_mask([], (20, 30))
    with pytest.raises(InvalidInputError):
        decode_mask({"size": [20, 30]}, (20, 30))


def _runs(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F").astype(np.uint8)
    runs, current, count = [], 0, 0
    for value in flat:
        if value != current:
            runs.append(count)
            current, count = value, 0
        count += 1
    runs.append(count)
    return runs


def test_reference_feature_encodes_the_class():
    scene = make_scene(0)
    encoder = SyntheticEncoder()
    feature = reference_feature(encoder, scene.image, scene.masks[0], 0.2)
    assert feature.shape == (encoder.identity.feature_dim,)
    assert int(feature.argmax()) == 1 + ["red", "green", "blue", "yellow"].index(scene.classes[0])


# ---------------------------------------------------------------------------- context ratio


def test_the_bank_records_its_context_ratio_and_keeps_one(tmp_path):
    bank = MemoryBank(IDENTITY)
    bank.add(torch.ones(4), "cat", context_ratio=0.35)  # an empty bank takes the first reference's
    bank.add(torch.ones(4), "cat", context_ratio=0.35)
    bank.add(torch.ones(4), "dog")  # no ratio given: the bank's, unchecked
    with pytest.raises(
        InvalidInputError, match=r"cropped with context ratio 0\.35.*this reference with 0\.2"
    ):
        bank.add(torch.ones(4), "dog", context_ratio=0.2)
    assert len(bank) == 3
    loaded = MemoryBank.load(bank.save(tmp_path / "m.safetensors"))
    assert loaded.context_ratio == 0.35 and not loaded.context_ratio_assumed
    assert json.loads(read_memory_metadata(tmp_path / "m.safetensors")["context_ratio"]) == 0.35
    assert "context ratio: 0.35" in loaded.describe() and "assumed" not in loaded.describe()
    for record in loaded.references:  # an emptied bank takes a new ratio
        loaded.remove_reference(record.ref_id)
    loaded.add(torch.ones(4), "cat", context_ratio=0.1)
    assert loaded.context_ratio == 0.1


def test_a_segmenter_does_not_mix_context_ratios_in_one_bank():
    scene = make_scene(0, classes=("red", "blue"), size=(96, 96), per_class=1, radius=(10, 14))
    encoder = SyntheticEncoder(input_size=112)
    first = Segmenter(SyntheticProposer(), encoder, context_ratio=0.5)
    first.add_reference(scene.image, "red", mask=scene.masks[0])
    assert first.memory.context_ratio == 0.5
    other = Segmenter(SyntheticProposer(), encoder, memory=first.memory)  # the preset's 0.2
    with pytest.raises(InvalidInputError, match="context ratio 0.5"):
        other.add_reference(scene.image, "blue", mask=scene.masks[1])
    same = Segmenter(SyntheticProposer(), encoder, memory=first.memory, context_ratio=0.5)
    same.add_reference(scene.image, "blue", mask=scene.masks[1])
    assert first.memory.counts() == {"red": 1, "blue": 1}


# ---------------------------------------------------------------------------- encoder fingerprints


def test_an_encoder_with_any_weight_changed_is_refused_but_0_1_0_files_compare_like_with_like(
    tiny_dinov2_dir,
) -> None:
    """The legacy fingerprint hashes two tensors; the all-weights one notices any change. A file
    of refseg 0.1.0 (legacy kind only) is compared on that kind alone."""
    from refseg.models.base import LEGACY_FINGERPRINT_KIND
    from refseg.models.dinov2 import ALL_WEIGHTS_FINGERPRINT_KIND, Dinov2Encoder
    from refseg.models.loading import load_encoder

    original = load_encoder(tiny_dinov2_dir, device="cpu")
    changed_model = load_encoder(tiny_dinov2_dir, device="cpu").model
    parameters = list(changed_model.parameters())
    with torch.no_grad():
        parameters[len(parameters) // 2].add_(0.01)  # neither the first nor the last tensor
    changed = Dinov2Encoder(changed_model, name=original.identity.name, revision="local")
    kinds = original.identity.fingerprints_by_kind()
    assert set(kinds) == {LEGACY_FINGERPRINT_KIND, ALL_WEIGHTS_FINGERPRINT_KIND}
    assert len(kinds[ALL_WEIGHTS_FINGERPRINT_KIND]) == 64
    assert changed.identity.fingerprint == original.identity.fingerprint  # the two tensors agree
    bank = MemoryBank(original.identity)
    bank.check_encoder(load_encoder(tiny_dinov2_dir, device="cpu").identity)  # same weights: accepted
    with pytest.raises(EncoderMismatchError, match=ALL_WEIGHTS_FINGERPRINT_KIND):
        bank.check_encoder(changed.identity)
    # A bank that knows only the legacy kind (a 0.1.0 file) compares that kind: accepted.
    legacy = EncoderIdentity(**original.identity.as_dict())
    assert legacy.fingerprints_by_kind() == {LEGACY_FINGERPRINT_KIND: original.identity.fingerprint}
    MemoryBank(legacy).check_encoder(changed.identity)
    # Another model differs on the legacy kind too.
    other = EncoderIdentity(**{**original.identity.as_dict(), "fingerprint": "0" * 16})
    with pytest.raises(EncoderMismatchError, match=LEGACY_FINGERPRINT_KIND):
        MemoryBank(other).check_encoder(changed.identity)


# ---------------------------------------------------------------------------- negative references


def test_negatives_live_beside_positives_and_leave_prototypes_alone():
    plain = MemoryBank(IDENTITY)
    bank = MemoryBank(IDENTITY)
    for target in (plain, bank):
        target.add(torch.tensor([1.0, 0, 0, 0]), "cat")
        target.add(torch.tensor([0.0, 1, 0, 0]), "dog")
    not_cat = bank.add(torch.tensor([1.0, 1, 0, 0]), "cat", {"file": "fox.png"}, negative=True)
    wall = bank.add(torch.tensor([0.0, 0, 1, 1]), None, negative=True)
    bank.add(torch.tensor([2.0, 0, 0, 1]), "cat")
    plain.add(torch.tensor([2.0, 0, 0, 1]), "cat")
    assert (not_cat, wall) == (2, 3) and len(bank) == 5 and bank.has_negatives and not plain.has_negatives
    assert torch.equal(bank.prototypes(), plain.prototypes())  # negatives never shape a prototype
    assert bank.counts() == plain.counts() == {"cat": 2, "dog": 1}
    assert bank.negative_counts() == {"cat": 1, "dog": 0, None: 1}
    assert bank.class_names == ["cat", "dog"]
    examples = bank.reference_examples()
    assert examples.positive_labels.tolist() == [0, 1, 0] and examples.negative_labels.tolist() == [0, -1]
    assert torch.equal(examples.negative_features[1], torch.tensor([0.0, 0, 1, 1]))
    assert bank.fingerprint() != plain.fingerprint()
    described = bank.describe()
    assert "classes: 2, references: 3 positive, 2 negative" in described
    assert "background negatives (no class): 1" in described
    assert [line.split()[-4:] for line in described.splitlines()[3:5]] == [
        ["2", "positive", "1", "negative"],
        ["1", "positive", "0", "negative"],
    ]
    with pytest.raises(InvalidInputError, match="no positive reference of 'bird' yet"):
        bank.add(torch.ones(4), "bird", negative=True)
    with pytest.raises(InvalidInputError, match="needs a class name"):
        bank.add(torch.ones(4), None)
    with pytest.raises(InvalidInputError, match="all zeros"):
        bank.add(torch.zeros(4), "cat")


def test_removing_a_class_last_positive_removes_the_class_and_its_negatives_not_the_background():
    """Classes are defined by their positives: a "not cat" example means nothing once there is no
    cat, so it goes with the class; a background negative belongs to no class and stays."""
    bank = MemoryBank(IDENTITY)
    first = bank.add(torch.tensor([1.0, 0, 0, 0]), "cat")
    second = bank.add(torch.tensor([1.0, 0.5, 0, 0]), "cat")
    bank.add(torch.tensor([0.0, 1, 0, 0]), "dog")
    not_cat = bank.add(torch.tensor([1.0, 1, 0, 0]), "cat", negative=True)
    not_dog = bank.add(torch.tensor([0.0, 1, 1, 0]), "dog", negative=True)
    wall = bank.add(torch.tensor([0.0, 0, 1, 1]), None, negative=True)
    assert bank.remove_reference(first) == [first]  # cat still has a positive: its negative stays
    assert bank.negative_counts() == {"cat": 1, "dog": 1, None: 1}
    assert bank.remove_reference(second) == [second, not_cat]
    assert bank.class_names == ["dog"] and bank.negative_counts() == {"dog": 1, None: 1}
    assert bank.remove_reference(not_dog) == [not_dog]  # a negative alone: the class stays
    assert bank.class_names == ["dog"]
    assert bank.remove_class("dog") == [2]
    assert bank.class_names == [] and [r.ref_id for r in bank.references] == [wall]
    assert bank.remove_reference(wall) == [wall] and len(bank) == 0
    with pytest.raises(InvalidInputError, match="no class"):
        bank.prototypes()
