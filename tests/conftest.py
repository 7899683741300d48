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
from transformers import (  # noqa: E402
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    Sam2Config,
    Sam2Model,
    Sam2VideoConfig,
    Sam2VideoModel,
)

from refseg.models.dinov2 import Dinov2Encoder  # noqa: E402
from refseg.models.loading import load_encoder, load_proposer  # noqa: E402
from refseg.models.sam2 import Sam2Proposer  # noqa: E402

SEED = 0
# Larger than the 0.02 default so random predicted IoUs, best-of-3 choices and mask logits
# differ clearly between prompts (with 0.02 every logit is ~1e-6).
TINY_INIT_RANGE = 0.15
TINY_SAM2_HIDDEN = 16


def _tiny_sam2_parts() -> dict[str, dict]:
    """Sub-configs of a tiny SAM2: Hiera with 4 stages (one global-attention block), a
    16-wide FPN / prompt encoder / mask decoder, real 1024 input and 64x64 embedding."""
    hidden = TINY_SAM2_HIDDEN
    backbone = dict(
        model_type="sam2_hiera_det_model",
        hidden_size=8,
        num_attention_heads=1,
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[8, 4, 14, 7],
        global_attention_blocks=[3],
        initializer_range=TINY_INIT_RANGE,
    )
    vision = dict(
        model_type="sam2_vision_model",
        backbone_config=backbone,
        backbone_channel_list=[64, 32, 16, 8],
        fpn_hidden_size=hidden,
        initializer_range=TINY_INIT_RANGE,
    )
    prompt_encoder = dict(hidden_size=hidden, image_size=1024, patch_size=16)
    mask_decoder = dict(
        hidden_size=hidden, mlp_dim=2 * hidden, num_attention_heads=2, iou_head_hidden_dim=hidden
    )
    return dict(vision_config=vision, prompt_encoder_config=prompt_encoder, mask_decoder_config=mask_decoder)


def tiny_sam2_config() -> Sam2Config:
    return Sam2Config(**_tiny_sam2_parts(), initializer_range=TINY_INIT_RANGE)


def tiny_sam2_video_config() -> Sam2VideoConfig:
    """The video flavour (as the ``facebook/sam2*`` hub checkpoints are saved), tiny memory parts."""
    hidden = TINY_SAM2_HIDDEN
    return Sam2VideoConfig(
        **_tiny_sam2_parts(),
        initializer_range=TINY_INIT_RANGE,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=2 * hidden,
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=8,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=2 * hidden,
    )


def tiny_dinov2_config(num_register_tokens: int = 0) -> Dinov2Config | Dinov2WithRegistersConfig:
    common = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=518,
        patch_size=14,
        initializer_range=TINY_INIT_RANGE,
    )
    if num_register_tokens:
        return Dinov2WithRegistersConfig(**common, num_register_tokens=num_register_tokens)
    return Dinov2Config(**common)


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
