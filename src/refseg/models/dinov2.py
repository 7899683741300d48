"""DINOv2 as a dense patch-feature encoder."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from transformers import Dinov2Model, Dinov2WithRegistersModel

from ..errors import InvalidInputError
from .base import EncoderIdentity
from .inputs import autocast_context, imagenet_normalize


class Dinov2Encoder:
    """Patch features from a ``transformers`` DINOv2 model (with or without registers).

    Implements :class:`refseg.models.base.Encoder`. Inputs are moved to the model's device;
    features come back float32 on the CPU.

    Args:
        model: ``Dinov2Model`` or ``Dinov2WithRegistersModel``; put in eval mode and moved
            to ``device``.
        name: hub id or directory name of the weights (part of :attr:`identity`).
        revision: commit hash of the weights if known, else ``"local"`` or the revision asked
            for (part of :attr:`identity`).
        input_size: side S of the square input; a multiple of the patch size (518 -> 37x37
            patches with patch 14).
        device: where to run (default: the model's current device).
        dtype: ``torch.float32`` (exact) or ``torch.bfloat16``/``torch.float16`` (autocast).
    """

    def __init__(
        self,
        model: Dinov2Model | Dinov2WithRegistersModel,
        *,
        name: str,
        revision: str = "local",
        input_size: int = 518,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        patch_size = model.config.patch_size
        self.patch_size = int(patch_size if isinstance(patch_size, int) else patch_size[0])
        if input_size <= 0 or input_size % self.patch_size:
            raise InvalidInputError(
                f"The encoder input size must be a positive multiple of the patch size "
                f"{self.patch_size} (e.g. {37 * self.patch_size}), not {input_size}."
            )
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.eval().to(self.device)
        self.dtype = dtype
        self.num_register_tokens = int(getattr(model.config, "num_register_tokens", 0) or 0)
        self.identity = EncoderIdentity(
            name=name,
            revision=revision,
            input_size=int(input_size),
            feature_dim=int(model.config.hidden_size),
            fingerprint=weights_fingerprint(self.model),
            fingerprints=((ALL_WEIGHTS_FINGERPRINT_KIND, all_weights_fingerprint(self.model)),),
        )

    def __repr__(self) -> str:
        return f"Dinov2Encoder({self.identity}, device={str(self.device)!r}, dtype={self.dtype})"

    @property
    def grid_size(self) -> int:
        """Patches per side of the feature map (S // patch)."""
        return self.identity.input_size // self.patch_size

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features after the final LayerNorm, CLS and register tokens dropped.

        Args:
            images: (B, 3, S, S) float in [0, 1], S = ``identity.input_size``, not normalised.

        Returns:
            (B, C, S // patch, S // patch) float32 on the CPU.
        """
        size = self.identity.input_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected (B, 3, {size}, {size}) images, got {tuple(images.shape)}")
        pixels = imagenet_normalize(images.to(self.device, torch.float32))
        with autocast_context(self.device, self.dtype):
            tokens = self.model(pixel_values=pixels).last_hidden_state
        patch_tokens = tokens[:, 1 + self.num_register_tokens :]
        batch, grid = images.shape[0], self.grid_size
        features = patch_tokens.reshape(batch, grid, grid, -1).permute(0, 3, 1, 2)
        return features.float().contiguous().cpu()


#: The kind of :func:`all_weights_fingerprint` (recorded beside the digest in memory files).
ALL_WEIGHTS_FINGERPRINT_KIND = "all-weights-sha256-v1"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """The legacy fingerprint (kind :data:`~refseg.models.base.LEGACY_FINGERPRINT_KIND`): a short
    hash of the first and last weight tensors only, as refseg 0.1.0 wrote it. Still computed, so
    files that record only this kind are compared like with like; :func:`all_weights_fingerprint`
    is the one that notices any changed weight."""
    parameters = list(model.parameters())
    digest = hashlib.sha256()
    for tensor in (parameters[0], parameters[-1]):
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def all_weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every tensor of the model's state dict (kind :data:`ALL_WEIGHTS_FINGERPRINT_KIND`).

    In state-dict order, each tensor contributes its name, its shape and its values as float32
    little-endian bytes, so the same weights agree whether loaded from a hub id or a local copy,
    and any changed value, shape or name does not. Cost: one pass over the weights
    (``benchmarks/bench_fingerprint.py`` measures it on a DINOv2-L).

    Returns:
        64 hex digits.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(values.shape)};".encode())
        digest.update(memoryview(np.ascontiguousarray(values.numpy().reshape(-1), dtype="<f4")).cast("B"))
    return digest.hexdigest()
