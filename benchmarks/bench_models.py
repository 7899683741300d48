"""Random-weight checkpoints of the real SAM2 and DINOv2 architectures, for timing.

The configurations follow the published hyper-parameters (SAM 2 / SAM 2.1 model cards and
configs, DINOv2 ViT-L/14 and ViT-S/14). Nothing is downloaded: each model is created with
random weights, saved with ``save_pretrained`` into a cache directory and later loaded back
through :mod:`refseg.models.loading`, so the benchmark times the real loading path. With
random weights every timing is that of the real model; only the outputs are meaningless.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2Model,
    Sam2VisionConfig,
)

logger = logging.getLogger(__name__)

CACHE_DIR = Path(__file__).resolve().parent / ".cache"


def sam2_hiera_large_config() -> Sam2Config:
    """SAM 2 Hiera-L (``facebook/sam2-hiera-large``), image model only: 217 M parameters."""
    backbone = Sam2HieraDetConfig(
        hidden_size=144,
        num_attention_heads=2,
        blocks_per_stage=[2, 6, 36, 4],
        embed_dim_per_stage=[144, 288, 576, 1152],
        num_attention_heads_per_stage=[2, 4, 8, 16],
        global_attention_blocks=[23, 33, 43],
        window_size_per_stage=[8, 4, 16, 8],
        window_positional_embedding_background_size=[7, 7],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone, backbone_channel_list=[1152, 576, 288, 144], fpn_hidden_size=256
    )
    return Sam2Config(vision_config=vision)


def sam2_1_hiera_tiny_config() -> Sam2Config:
    """SAM 2.1 Hiera-T (``facebook/sam2.1-hiera-tiny``), image model only: 31 M parameters."""
    backbone = Sam2HieraDetConfig(
        hidden_size=96,
        num_attention_heads=1,
        blocks_per_stage=[1, 2, 7, 2],
        embed_dim_per_stage=[96, 192, 384, 768],
        num_attention_heads_per_stage=[1, 2, 4, 8],
        global_attention_blocks=[5, 7, 9],
        window_size_per_stage=[8, 4, 14, 7],
        window_positional_embedding_background_size=[7, 7],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone, backbone_channel_list=[768, 384, 192, 96], fpn_hidden_size=256
    )
    return Sam2Config(vision_config=vision)


def dinov2_config(hidden_size: int, layers: int, heads: int) -> Dinov2Config:
    """A DINOv2 ViT/14 at 518 (37x37 patches), no registers."""
    return Dinov2Config(
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        mlp_ratio=4,
        image_size=518,
        patch_size=14,
        layerscale_value=1.0,
    )


@dataclass(frozen=True)
class Architecture:
    """One model architecture: a name (also its cache folder) and how to build it."""

    name: str
    kind: str  # "sam2" or "dinov2"
    hub_id: str  # the released checkpoint with this architecture

    def config(self) -> Sam2Config | Dinov2Config:
        return _CONFIGS[self.name]()

    def fingerprint(self) -> str:
        """Short hash of the configuration and the transformers version (cache key)."""
        import transformers

        text = json.dumps(self.config().to_dict(), sort_keys=True, default=str) + transformers.__version__
        return hashlib.sha256(text.encode()).hexdigest()[:12]


_CONFIGS = {
    "sam2-hiera-large": sam2_hiera_large_config,
    "sam2.1-hiera-tiny": sam2_1_hiera_tiny_config,
    "dinov2-large": lambda: dinov2_config(1024, 24, 16),
    "dinov2-small": lambda: dinov2_config(384, 12, 6),
}

ARCHITECTURES: dict[str, Architecture] = {
    "sam2-hiera-large": Architecture("sam2-hiera-large", "sam2", "facebook/sam2-hiera-large"),
    "sam2.1-hiera-tiny": Architecture("sam2.1-hiera-tiny", "sam2", "facebook/sam2.1-hiera-tiny"),
    "dinov2-large": Architecture("dinov2-large", "dinov2", "facebook/dinov2-large"),
    "dinov2-small": Architecture("dinov2-small", "dinov2", "facebook/dinov2-small"),
}

# Which random-weight architectures stand for each preset's models.
PRESET_MODELS: dict[str, tuple[str, str]] = {
    "paper": ("sam2-hiera-large", "dinov2-large"),
    "fast": ("sam2.1-hiera-tiny", "dinov2-small"),
}


def checkpoint_dir(name: str, cache_dir: Path = CACHE_DIR, seed: int = 0) -> Path:
    """The directory of a random-weight checkpoint, created (and saved) on first use.

    Args:
        name: a key of :data:`ARCHITECTURES`.
        cache_dir: where checkpoints are kept (``benchmarks/.cache`` by default).
        seed: torch seed of the random weights.

    Returns:
        A directory holding ``config.json`` and ``model.safetensors``.
    """
    architecture = ARCHITECTURES[name]
    directory = Path(cache_dir) / f"{name}-{architecture.fingerprint()}-seed{seed}"
    if (directory / "config.json").is_file() and any(directory.glob("*.safetensors")):
        return directory
    logger.info("building random-weight %s in %s", name, directory)
    torch.manual_seed(seed)
    model_class = Sam2Model if architecture.kind == "sam2" else Dinov2Model
    model = model_class(architecture.config()).eval()
    partial = directory.with_name(directory.name + ".partial")
    model.save_pretrained(partial)
    partial.rename(directory)
    return directory


def parameter_count(directory: Path) -> int:
    """Number of weights stored in a checkpoint directory."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                count = 1
                for size in handle.get_slice(key).get_shape():
                    count *= int(size)
                total += count
    return total
