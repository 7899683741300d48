"""Creating the proposer and the encoder from a Hugging Face id or a local directory.

Every way the weights can be out of reach (no network and not cached, a wrong id, a
directory without weights, corrupt files) ends in one :class:`WeightsUnavailableError`
whose message names the model and says how to use a local copy.

A checkpoint never runs code of its own: its ``config.json`` is read as plain json first and
a ``model_type`` other than the ones refseg knows is refused before transformers sees the
folder, and every transformers call passes ``trust_remote_code=False`` (a folder holding
``.py`` files and an ``auto_map`` would otherwise make transformers ask on a terminal whether
to run them).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import errors as hub_errors
from huggingface_hub import hf_hub_download
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    Dinov2Model,
    Dinov2WithRegistersModel,
    PreTrainedConfig,
    PreTrainedModel,
    Sam2Config,
    Sam2Model,
)

from ..errors import InvalidInputError, WeightsUnavailableError
from .dinov2 import Dinov2Encoder
from .lazy import LazyProposer
from .sam2 import DecoderName, EncoderName, Sam2Options, Sam2Proposer

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# Failures of reading a checkpoint that mean "these weights are not usable here".
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError, KeyError)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``None`` or ``"auto"`` -> CUDA if available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(
            f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"Device {device!r} was asked for but no CUDA GPU is available; use 'cpu'."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"Device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)."
            )
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None = None) -> torch.dtype:
    """Compute dtype from a name: ``None`` -> float32; "bfloat16"/"bf16", "float16"/"fp16"."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
        raise InvalidInputError(f"Unsupported dtype {dtype}; use float32, bfloat16 or float16.")
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise InvalidInputError(
            f"Unknown dtype {dtype!r}; use one of: {', '.join(sorted(_DTYPES))}."
        ) from None


@dataclass(frozen=True)
class _ModelKind:
    """What is being loaded, for messages."""

    label: str  # "SAM2"
    option: str  # CLI flag / Python argument that takes the id or directory
    example_id: str
    model_types: tuple[str, ...]  # the config.json model_type values refseg loads


_SAM2 = _ModelKind("SAM2", "sam2", "facebook/sam2-hiera-large", ("sam2", "sam2_video"))
_DINOV2 = _ModelKind("DINOv2", "encoder", "facebook/dinov2-large", ("dinov2", "dinov2_with_registers"))


@dataclass(frozen=True)
class _Checkpoint:
    """Where a checkpoint is and what it is.

    Attributes:
        source: what ``from_pretrained`` is given (a directory or a hub id).
        name: hub id, or the directory's name.
        revision: commit hash when known, else the revision asked for, else "local".
        is_local: ``source`` is a local directory.
        config: the checkpoint's config.
    """

    source: str
    name: str
    revision: str
    is_local: bool
    config: PreTrainedConfig


def _unavailable(kind: _ModelKind, id_or_dir: str, reason: str, *, is_local: bool) -> WeightsUnavailableError:
    use = f"--{kind.option} DIR (Python: {kind.option}='DIR')"
    if is_local:
        return WeightsUnavailableError(
            f"Could not load the {kind.label} model from '{id_or_dir}' ({reason}). Pass a directory "
            f"holding its config.json and weights, as written by `hf download {kind.example_id} "
            f"--local-dir DIR` or save_pretrained(DIR): {use}."
        )
    return WeightsUnavailableError(
        f"Could not load the {kind.label} model '{id_or_dir}' ({reason}). Download it on a connected "
        f"machine (`hf download {id_or_dir} --local-dir DIR`) and pass the directory: {use}."
    )


def _looks_like_path(id_or_dir: str) -> bool:
    """True for strings that can only be paths (a hub id is ``name`` or ``owner/name``)."""
    return (
        os.path.isabs(id_or_dir)
        or id_or_dir.startswith((".", "~"))
        or id_or_dir.count("/") > 1
        or "\\" in id_or_dir
        or os.path.exists(id_or_dir)
    )


def _hub_reason(error: Exception, revision: str | None) -> str:
    if isinstance(error, hub_errors.LocalEntryNotFoundError):
        return "no network and not in the Hugging Face cache"
    if isinstance(error, hub_errors.GatedRepoError):
        return "a gated model: accept its licence on huggingface.co and log in with `hf auth login`"
    if isinstance(error, hub_errors.RepositoryNotFoundError):
        return "no such model on the Hugging Face Hub"
    if isinstance(error, hub_errors.RevisionNotFoundError):
        return f"no revision '{revision}' of it on the Hugging Face Hub"
    if isinstance(error, hub_errors.EntryNotFoundError):
        return "it has no config.json"
    if isinstance(error, hub_errors.HFValidationError):
        return "neither an existing directory nor a valid Hugging Face model id"
    return f"the Hugging Face Hub could not be reached: {type(error).__name__}"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection (so a missing model fails in seconds,
    not after the hub client's retries)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _cached_or_downloaded_config(repo_id: str, revision: str | None) -> Path:
    """The checkpoint's config.json: from the cache when there, else from the hub if reachable."""
    try:
        return Path(hf_hub_download(repo_id, "config.json", revision=revision, local_files_only=True))
    except hub_errors.LocalEntryNotFoundError:
        if not _hub_reachable():
            raise
    return Path(hf_hub_download(repo_id, "config.json", revision=revision))


def _model_type(kind: _ModelKind, id_or_dir: str, config_file: Path, *, is_local: bool) -> str:
    """The ``model_type`` of a config.json read as plain json, refused unless ``kind`` knows it.

    Raises:
        WeightsUnavailableError: the file is not a json object.
        InvalidInputError: another model type (or none): refseg runs no checkpoint's own code.
    """
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _unavailable(
            kind, id_or_dir, f"its config.json is unreadable: {error}", is_local=is_local
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in kind.model_types:
        raise InvalidInputError(
            f"'{id_or_dir}' is a {model_type!r} model, not {kind.label} (refseg loads "
            f"{' or '.join(kind.model_types)} checkpoints and runs no code of a checkpoint's own); pass a "
            f"{kind.label} checkpoint such as {kind.example_id} to --{kind.option}."
        )
    return str(model_type)


def _locate(kind: _ModelKind, id_or_dir: str | os.PathLike, revision: str | None) -> _Checkpoint:
    """Find the checkpoint's config (downloading it if needed), check its model type and name
    its version."""
    text = os.fspath(id_or_dir)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _unavailable(kind, text, "the directory has no config.json", is_local=True)
        source, name, is_local = str(path), path.resolve().name, True
        resolved_revision = revision or "local"
        config_file = path / "config.json"
    elif _looks_like_path(text):
        reason = "a file, not a directory" if path.exists() else "no such directory"
        raise _unavailable(kind, text, reason, is_local=True)
    else:
        try:
            config_file = _cached_or_downloaded_config(text, revision)
        except (hub_errors.HfHubHTTPError, OSError, ValueError) as error:
            reason = f"{_hub_reason(error, revision)}; nor is it a local directory"
            raise _unavailable(kind, text, reason, is_local=False) from error
        source, name, is_local = text, text, False
        # The cache stores files under .../snapshots/<commit hash>/.
        in_snapshot = config_file.parent.parent.name == "snapshots"
        resolved_revision = config_file.parent.name if in_snapshot else (revision or "unknown")
    _model_type(kind, text, config_file, is_local=is_local)
    try:
        config = AutoConfig.from_pretrained(
            source, revision=None if is_local else resolved_revision, trust_remote_code=False
        )
    except _LOAD_ERRORS as error:
        raise _unavailable(
            kind, text, f"its config.json is unreadable: {error}", is_local=is_local
        ) from error
    return _Checkpoint(source, name, resolved_revision, is_local, config)


def _from_pretrained(
    kind: _ModelKind, id_or_dir: str, checkpoint: _Checkpoint, model_class: type[PreTrainedModel], config
) -> PreTrainedModel:
    """``model_class.from_pretrained`` with our errors; refuses checkpoints missing weights."""
    try:
        model, info = model_class.from_pretrained(
            checkpoint.source,
            config=config,
            revision=None if checkpoint.is_local else checkpoint.revision,
            dtype=torch.float32,
            output_loading_info=True,
            trust_remote_code=False,
        )
    except _LOAD_ERRORS as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "no file named" in message or "does not appear to have a file named" in message:
            reason = "no weights file (model.safetensors)"
        else:
            reason = f"its weights are unreadable or corrupt: {message}"
        raise _unavailable(kind, id_or_dir, reason, is_local=checkpoint.is_local) from error
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(key) for key in (info.get("mismatched_keys") or []))
    if missing or mismatched:
        bad = (missing + mismatched)[:3]
        raise _unavailable(
            kind,
            id_or_dir,
            f"its weights file lacks or misfits {len(missing) + len(mismatched)} tensors, e.g. {bad}",
            is_local=checkpoint.is_local,
        )
    unexpected = info.get("unexpected_keys") or []
    if unexpected:
        logger.debug("%s: %d unused tensors in %s", kind.label, len(unexpected), id_or_dir)
    return model


def sam2_config_from(config: PreTrainedConfig) -> Sam2Config:
    """A ``Sam2Config`` for an image-only ``Sam2Model``, from a SAM2 image or video config.

    The ``facebook/sam2*`` hub checkpoints are saved as ``sam2_video`` models; their image
    encoder, prompt encoder and mask decoder are those of ``Sam2Model``.
    """
    if config.model_type == "sam2":
        return config
    return Sam2Config(
        vision_config=config.vision_config.to_dict(),
        prompt_encoder_config=config.prompt_encoder_config.to_dict(),
        mask_decoder_config=config.mask_decoder_config.to_dict(),
        initializer_range=config.initializer_range,
    )


def load_proposer(
    id_or_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "float32",
    revision: str | None = None,
    decoder: DecoderName = "fast",
    encoder: EncoderName = "lean",
    options: Sam2Options | None = None,
    lazy: bool = False,
) -> Sam2Proposer | LazyProposer:
    """A :class:`Sam2Proposer` from a hub id (``facebook/sam2-hiera-large``) or a directory.

    Args:
        id_or_dir: Hugging Face model id or local directory (``sam2`` or ``sam2_video``).
        device: "auto"/None (CUDA if available), "cpu", "cuda", "cuda:N".
        dtype: compute dtype: "float32" (exact) or "bfloat16"/"float16" (autocast).
        revision: hub branch, tag or commit (ignored for directories).
        decoder: "fast" or "stock" point decoder (same outputs).
        encoder: "lean" or "stock" Hiera forward (same outputs; lean uses less memory).
        options: how the fast decoder and the lean encoder split their work (same outputs).
        lazy: check the checkpoint now (its config), load the weights on first use
            (:class:`~refseg.models.lazy.LazyProposer`): work that never prompts SAM2 never
            loads it.

    Raises:
        WeightsUnavailableError: the weights cannot be reached or read (with ``lazy``: the
            config now, the weights at first use).
        InvalidInputError: the checkpoint is not a SAM2 model, or a bad device/dtype.
    """
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    text = os.fspath(id_or_dir)
    checkpoint = _locate(_SAM2, text, revision)

    def build() -> Sam2Proposer:
        model = _from_pretrained(_SAM2, text, checkpoint, Sam2Model, sam2_config_from(checkpoint.config))
        return Sam2Proposer(
            model,
            device=torch_device,
            dtype=torch_dtype,
            decoder=decoder,
            encoder=encoder,
            options=options,
            name=checkpoint.name,
        )

    return LazyProposer(build, checkpoint.name) if lazy else build()


def load_encoder(
    id_or_dir: str | os.PathLike,
    *,
    input_size: int = 518,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "float32",
    revision: str | None = None,
) -> Dinov2Encoder:
    """A :class:`Dinov2Encoder` from a hub id (``facebook/dinov2-large``) or a directory.

    Args:
        id_or_dir: Hugging Face model id or local directory (``dinov2`` or
            ``dinov2_with_registers``).
        input_size: side of the square input (518 -> 37x37 patches).
        device: "auto"/None (CUDA if available), "cpu", "cuda", "cuda:N".
        dtype: compute dtype: "float32" (exact) or "bfloat16"/"float16" (autocast).
        revision: hub branch, tag or commit (ignored for directories).

    Raises:
        WeightsUnavailableError: the weights cannot be reached or read.
        InvalidInputError: the checkpoint is not DINOv2, or a bad size/device/dtype.
    """
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    text = os.fspath(id_or_dir)
    checkpoint = _locate(_DINOV2, text, revision)
    model_classes: dict[str, type[PreTrainedModel]] = {
        "dinov2": Dinov2Model,
        "dinov2_with_registers": Dinov2WithRegistersModel,
    }
    model_class = model_classes[checkpoint.config.model_type]
    model = _from_pretrained(_DINOV2, text, checkpoint, model_class, checkpoint.config)
    return Dinov2Encoder(
        model,
        name=checkpoint.name,
        revision=checkpoint.revision,
        input_size=input_size,
        device=torch_device,
        dtype=torch_dtype,
    )
