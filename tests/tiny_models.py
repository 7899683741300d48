"""Configurations of the tiny random-weight SAM2 and DINOv2 the tests use.

No side effects on import (unlike conftest.py, which puts the Hugging Face libraries offline),
so scripts/make_screenshots.py builds its tiny models from the same configurations.
"""

from __future__ import annotations

import torch
from transformers import Dinov2Config, Dinov2WithRegistersConfig, Sam2Config, Sam2Model, Sam2VideoConfig

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


def trained_looking_sam2(depth: int) -> Sam2Model:
    """The tiny SAM2 with every decoder parameter random and O(1) (the tiny init gives logits
    ~1e-5) and LayerNorms around 1 with non-zero biases."""
    parts = tiny_sam2_config().to_dict()
    parts["mask_decoder_config"].update(num_hidden_layers=depth)
    torch.manual_seed(11)
    model = Sam2Model(
        Sam2Config(**{k: parts[k] for k in ("vision_config", "prompt_encoder_config", "mask_decoder_config")})
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.mask_decoder.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            fan_in = parameter[0].numel() if parameter.dim() > 1 else 1
            parameter.copy_(noise / fan_in**0.5 if parameter.dim() > 1 else 0.3 * noise)
        for module in model.mask_decoder.modules():
            if isinstance(module, torch.nn.LayerNorm) or module.__class__.__name__.endswith("LayerNorm"):
                module.weight.add_(1.0)
    return model
