"""Loading from directories and the hub cache, and the errors when weights are out of reach."""

from __future__ import annotations

import json
import shutil

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Dinov2Model, Dinov2WithRegistersModel, Sam2Model, Sam2VideoModel

from refseg.errors import InvalidInputError, WeightsUnavailableError
from refseg.models.loading import load_encoder, load_proposer, resolve_device, resolve_dtype

# ---------------------------------------------------------------------------- device / dtype


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InvalidInputError, match="Unknown device"):
        resolve_device("tpu-please")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_without_cuda():
    with pytest.raises(InvalidInputError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_resolve_dtype():
    assert resolve_dtype(None) is torch.float32
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("BFloat16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(InvalidInputError, match="Unknown dtype"):
        resolve_dtype("int8")


# ---------------------------------------------------------------------------- loading


def _same_weights(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state, "model has no weights"
    for key, value in state.items():
        assert key in reference, key
        assert torch.equal(value, reference[key]), key


def test_load_sam2_directory(tiny_sam2_dir):
    proposer = load_proposer(tiny_sam2_dir, device="cpu", dtype="float32")
    assert isinstance(proposer.model, Sam2Model)
    assert proposer.dtype is torch.float32
    assert proposer.name == tiny_sam2_dir.name
    _same_weights(proposer.model, Sam2Model.from_pretrained(tiny_sam2_dir).state_dict())
    assert (
        load_proposer(str(tiny_sam2_dir), device="cpu", dtype="bfloat16", decoder="stock").dtype
        is torch.bfloat16
    )


def test_load_sam2_video_checkpoint_as_image_model(tiny_sam2_video_dir, capfd):
    config = json.loads((tiny_sam2_video_dir / "config.json").read_text())
    assert config["model_type"] == "sam2_video"
    capfd.readouterr()
    proposer = load_proposer(tiny_sam2_video_dir, device="cpu")
    logged = "".join(capfd.readouterr())
    assert "not used" not in logged and "newly initialized" not in logged and "UNEXPECTED" not in logged
    assert type(proposer.model) is Sam2Model
    assert proposer.model.config.model_type == "sam2"

    video_state = Sam2VideoModel.from_pretrained(tiny_sam2_video_dir).state_dict()
    _same_weights(proposer.model, video_state)
    assert any(key.startswith("memory_") for key in video_state), (
        "the video model should carry memory weights"
    )
    proposals = proposer.propose(
        torch.rand(3, 1024, 1024), torch.tensor([[512.5, 512.5]]), batch_size=1, iou_threshold=-1
    )
    assert proposals.low_res_logits.shape == (1, 256, 256)


def test_load_sam2_with_rewritten_video_config(tiny_sam2_dir, tmp_path):
    """An image checkpoint whose config.json says sam2_video (as on the hub) loads the same weights."""
    target = tmp_path / "rewritten"
    shutil.copytree(tiny_sam2_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = "sam2_video"
    config["architectures"] = ["Sam2VideoModel"]
    (target / "config.json").write_text(json.dumps(config))
    proposer = load_proposer(target, device="cpu")
    assert proposer.model.config.model_type == "sam2"
    _same_weights(proposer.model, Sam2Model.from_pretrained(tiny_sam2_dir).state_dict())


def test_load_dinov2_with_and_without_registers(tiny_dinov2_dir, tiny_dinov2_registers_dir):
    plain = load_encoder(tiny_dinov2_dir, device="cpu")
    assert type(plain.model) is Dinov2Model
    assert plain.num_register_tokens == 0
    _same_weights(plain.model, Dinov2Model.from_pretrained(tiny_dinov2_dir).state_dict())

    registers = load_encoder(tiny_dinov2_registers_dir, input_size=224, device="cpu", dtype="bf16")
    assert type(registers.model) is Dinov2WithRegistersModel
    assert registers.num_register_tokens == 4
    assert registers.identity.input_size == 224
    assert registers.encode(torch.rand(1, 3, 224, 224)).shape == (1, 32, 16, 16)


def test_hub_cache_gives_id_and_commit(tiny_dinov2_dir, tmp_path, monkeypatch):
    """Offline, a model in the Hugging Face cache loads by id and reports its commit hash."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--refseg-test--tiny-dinov2"
    shutil.copytree(tiny_dinov2_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    import transformers.utils.hub

    monkeypatch.setattr(transformers.utils.hub, "HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", str(tmp_path / "hub"), raising=False)
    encoder = load_encoder("refseg-test/tiny-dinov2", device="cpu")
    assert encoder.identity.name == "refseg-test/tiny-dinov2"
    assert encoder.identity.revision == commit


# ---------------------------------------------------------------------------- errors


def _assert_one_clear_message(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message
    assert error.value.__cause__ is not None or "directory" in message


def test_unknown_id_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsUnavailableError) as error:
        load_proposer("facebook/sam2-made-up-model", device="cpu")
    _assert_one_clear_message(
        error,
        "'facebook/sam2-made-up-model'",
        "no network and not in the Hugging Face cache",
        "hf download facebook/sam2-made-up-model --local-dir DIR",
        "--sam2 DIR",
        "sam2='DIR'",
    )
    assert error.value.__cause__ is not None

    with pytest.raises(WeightsUnavailableError) as error:
        load_encoder("facebook/dinov2-made-up", device="cpu")
    _assert_one_clear_message(error, "DINOv2 model 'facebook/dinov2-made-up'", "--encoder DIR")


def test_empty_directory(tmp_path):
    with pytest.raises(WeightsUnavailableError) as error:
        load_proposer(tmp_path, device="cpu")
    _assert_one_clear_message(error, str(tmp_path), "no config.json", "--sam2 DIR")


def test_missing_directory(tmp_path):
    with pytest.raises(WeightsUnavailableError) as error:
        load_encoder(tmp_path / "nope", device="cpu")
    _assert_one_clear_message(error, "no such directory")


def test_directory_without_weights(tiny_sam2_dir, tmp_path):
    shutil.copy(tiny_sam2_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(WeightsUnavailableError) as error:
        load_proposer(tmp_path, device="cpu")
    _assert_one_clear_message(error, "no weights file")
    assert error.value.__cause__ is not None


def test_corrupt_weights(tiny_dinov2_dir, tmp_path):
    shutil.copy(tiny_dinov2_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsUnavailableError) as error:
        load_encoder(tmp_path, device="cpu")
    _assert_one_clear_message(error, "unreadable or corrupt")
    assert error.value.__cause__ is not None


def test_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WeightsUnavailableError) as error:
        load_encoder(tmp_path, device="cpu")
    _assert_one_clear_message(error, "config.json is unreadable")


def test_weights_missing_tensors(tiny_dinov2_dir, tmp_path):
    shutil.copy(tiny_dinov2_dir / "config.json", tmp_path / "config.json")
    state = load_file(tiny_dinov2_dir / "model.safetensors")
    dropped = sorted(state)[:2]
    save_file(
        {k: v for k, v in state.items() if k not in dropped},
        tmp_path / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(WeightsUnavailableError) as error:
        load_encoder(tmp_path, device="cpu")
    _assert_one_clear_message(error, "lacks or misfits 2 tensors")


def test_wrong_kind_of_model(tiny_sam2_dir, tiny_dinov2_dir):
    with pytest.raises(InvalidInputError, match="'dinov2' model, not SAM2"):
        load_proposer(tiny_dinov2_dir, device="cpu")
    with pytest.raises(InvalidInputError, match="'sam2' model, not DINOv2"):
        load_encoder(tiny_sam2_dir, device="cpu")


# ---------------------------------------------------------------------------- no checkpoint code runs


def _code_folder(folder, marker, model_type: str):
    """A checkpoint folder whose config asks for its own code, which would write ``marker``."""
    folder.mkdir()
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\n"
    code += "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    (folder / "evil.py").write_text(code)
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "auto_map": auto_map}))
    return folder


@pytest.mark.parametrize("model_type", ["evil", None])
def test_a_folder_with_its_own_code_is_refused_without_running_it(tmp_path, model_type):
    marker = tmp_path / "ran.txt"
    folder = _code_folder(tmp_path / "model", marker, model_type)
    with pytest.raises(InvalidInputError, match="runs no code of a checkpoint's own"):
        load_proposer(folder, device="cpu")
    with pytest.raises(InvalidInputError, match="not DINOv2"):
        load_encoder(folder, device="cpu")
    assert not marker.exists()


def test_a_known_model_type_with_an_auto_map_loads_without_its_code(tiny_dinov2_dir, tmp_path):
    marker = tmp_path / "ran.txt"
    folder = _code_folder(tmp_path / "model", marker, "dinov2")
    config = json.loads((tiny_dinov2_dir / "config.json").read_text())
    config["auto_map"] = json.loads((folder / "config.json").read_text())["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(tiny_dinov2_dir / "model.safetensors", folder / "model.safetensors")
    assert load_encoder(folder, device="cpu").identity.feature_dim == config["hidden_size"]
    assert not marker.exists()


def test_the_command_never_asks_to_run_a_checkpoints_code(tmp_path):
    """On a terminal, transformers asked "Do you wish to run the custom code? [y/N]"."""
    import os
    import subprocess
    import sys

    marker = tmp_path / "ran.txt"
    folder = _code_folder(tmp_path / "model", marker, "evil")
    refs = tmp_path / "refs" / "cat"
    refs.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (16, 16)).save(refs / "a.png")
    Image.new("L", (16, 16), 255).save(refs / "a.mask.png")
    completed = subprocess.run(
        [sys.executable, "-m", "refseg", "memory", "--folder", str(tmp_path / "refs"), "-o",
         str(tmp_path / "m.safetensors"), "--sam2", str(folder), "--encoder", str(folder), "--device", "cpu"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert completed.returncode == 1, completed.stderr
    assert "Error: " in completed.stderr and "Traceback" not in completed.stderr
    assert "runs no code of a checkpoint's own" in completed.stderr
    assert "custom code" not in completed.stdout + completed.stderr
    assert not marker.exists()
