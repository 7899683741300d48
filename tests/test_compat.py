"""Files written by earlier refseg versions keep working."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refseg import MemoryBank, Segmenter
from refseg.data.images import load_image
from refseg.models.loading import load_encoder

V010 = Path(__file__).parent / "data" / "memory-0.1.0"


@pytest.fixture(scope="module")
def v010_encoder():
    return load_encoder(V010 / "tiny-dinov2", device="cpu")


def test_a_0_1_0_memory_file_loads_with_its_classes_ids_and_sources() -> None:
    bank = MemoryBank.load(V010 / "memory.safetensors")
    assert bank.class_names == ["coin", "background"]
    assert bank.category_ids == {"coin": 1, "background": 7}
    assert bank.counts() == {"coin": 2, "background": 1}
    assert [r.ref_id for r in bank.references] == [0, 1, 2]
    assert bank.references[0].source["mask_file"].endswith("coins_top.mask.png")
    assert bank.references[1].source["prompt"] == "box"
    assert bank.reference_features.shape == (3, 32)
    assert "coin" in bank.describe()


def test_a_0_1_0_memory_file_predicts_with_its_encoder(tiny_models, v010_encoder) -> None:
    proposer, _ = tiny_models
    bank = MemoryBank.load(V010 / "memory.safetensors")
    segmenter = Segmenter(proposer, v010_encoder, memory=bank, preset="fast")
    image = load_image(Path(__file__).parents[1] / "examples/coins/targets/coins_bottom.png")
    instances = segmenter.predict(image)
    assert instances.image_size == image.shape[:2]
    assert set(instances.names) <= {"coin", "background"}
    assert np.isfinite(instances.scores).all()


def test_a_0_1_0_memory_file_is_refused_by_another_encoder(tiny_models, tiny_dinov2_registers_dir) -> None:
    from refseg import EncoderMismatchError

    proposer, _ = tiny_models
    other_encoder = load_encoder(tiny_dinov2_registers_dir, device="cpu")
    bank = MemoryBank.load(V010 / "memory.safetensors")
    with pytest.raises(EncoderMismatchError):
        Segmenter(proposer, other_encoder, memory=bank)


def test_a_0_1_0_memory_file_has_the_assumed_context_ratio(tmp_path) -> None:
    from click.testing import CliRunner

    from refseg.cli import cli

    bank = MemoryBank.load(V010 / "memory.safetensors")
    assert bank.context_ratio == 0.2 and bank.context_ratio_assumed
    info = CliRunner().invoke(cli, ["memory", "info", str(V010 / "memory.safetensors")])
    assert info.exit_code == 0 and "context ratio: 0.2 (assumed" in info.output
    # Saved again (e.g. by the app), the ratio stays what it was: assumed, not recorded as known.
    again = MemoryBank.load(bank.save(tmp_path / "again.safetensors"))
    assert again.context_ratio == 0.2 and again.context_ratio_assumed
