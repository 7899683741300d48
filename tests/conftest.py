"""Shared fixtures: tiny random-weight models of the real architectures, saved to disk.

No test touches the network: the Hugging Face libraries are put offline before they are
imported. The tiny models keep the real input sizes (SAM2 1024 -> 256x256 low-res masks,
DINOv2 518 with patch 14 -> 37x37) so shapes downstream are the real ones.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import tiny_dinov2_config, tiny_sam2_config, tiny_sam2_video_config  # noqa: E402
from transformers import Dinov2Model, Dinov2WithRegistersModel, Sam2Model, Sam2VideoModel  # noqa: E402

from refseg import runtime  # noqa: E402
from refseg.models.dinov2 import Dinov2Encoder  # noqa: E402
from refseg.models.loading import load_encoder, load_proposer  # noqa: E402
from refseg.models.sam2 import Sam2Proposer  # noqa: E402

SEED = 0

# The test process's own policy, as the refseg command's: the suite decodes SAM2 grids many
# times, and freed temporaries are reused instead of page-faulted in again (refseg.runtime).
runtime.retain_freed_memory()


def _save(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_sam2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ``sam2`` checkpoint directory (config.json + model.safetensors)."""
    torch.manual_seed(SEED)
    return _save(Sam2Model(tiny_sam2_config()), tmp_path_factory.mktemp("tiny-sam2"))


@pytest.fixture(scope="session")
def tiny_sam2_video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ``sam2_video`` checkpoint directory, the format of the hub's SAM2 models."""
    torch.manual_seed(SEED + 1)
    return _save(Sam2VideoModel(tiny_sam2_video_config()), tmp_path_factory.mktemp("tiny-sam2-video"))


@pytest.fixture(scope="session")
def tiny_dinov2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ``dinov2`` checkpoint directory (518 input, patch 14, 32 channels)."""
    torch.manual_seed(SEED + 2)
    return _save(Dinov2Model(tiny_dinov2_config()), tmp_path_factory.mktemp("tiny-dinov2"))


@pytest.fixture(scope="session")
def tiny_dinov2_registers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ``dinov2_with_registers`` checkpoint directory (4 register tokens)."""
    torch.manual_seed(SEED + 3)
    model = Dinov2WithRegistersModel(tiny_dinov2_config(num_register_tokens=4))
    return _save(model, tmp_path_factory.mktemp("tiny-dinov2-registers"))


@pytest.fixture(scope="session")
def tiny_models(tiny_sam2_dir: Path, tiny_dinov2_dir: Path) -> tuple[Sam2Proposer, Dinov2Encoder]:
    """(proposer, encoder) loaded through :mod:`refseg.models.loading`, float32 on the CPU."""
    proposer = load_proposer(tiny_sam2_dir, device="cpu")
    encoder = load_encoder(tiny_dinov2_dir, device="cpu")
    return proposer, encoder


@pytest.fixture(scope="session")
def tiny_image() -> torch.Tensor:
    """A (3, 1024, 1024) float32 image in [0, 1]: smooth blobs, seeded."""
    generator = torch.Generator().manual_seed(SEED)
    coarse = torch.rand((1, 3, 16, 16), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(1024, 1024), mode="bilinear")[0].clamp(0, 1)
