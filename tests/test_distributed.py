"""Multi-process prediction: environment parsing, and 2 gloo processes == 1 process, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import refseg
from refseg.distributed import (
    DistributedContext,
    distributed_context,
    pick_backend_and_device,
    world_from_env,
)
from refseg.errors import InvalidInputError
from refseg.models.loading import load_encoder, load_proposer
from refseg.runner import partial_paths, sidecar_path
from refseg.segmenter import Segmenter

SRC = str(Path(refseg.__file__).resolve().parents[1])


def test_world_from_env() -> None:
    assert world_from_env({}) == (0, 1, 0)
    assert world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"WORLD_SIZE": "two"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(InvalidInputError):
            world_from_env(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cpu_processes_use_gloo() -> None:
    assert pick_backend_and_device(None, 1) == ("gloo", "cpu")
    assert pick_backend_and_device("cpu", 0) == ("gloo", "cpu")
    with pytest.raises(InvalidInputError, match="CUDA is not available"):
        pick_backend_and_device("cuda", 0)


def test_single_process_context_starts_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with distributed_context("cpu") as context:
        assert context == DistributedContext(device="cpu")
        context.barrier()  # a no-op
    assert not torch.distributed.is_initialized()


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=SRC, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


@pytest.mark.slow  # two torchrun processes: ~20 s; still run by default and in CI
def test_two_gloo_processes_write_the_single_process_file(
    tmp_path: Path, tiny_sam2_dir: Path, tiny_dinov2_dir: Path
) -> None:
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((80, 60), Image.BILINEAR).save(images / f"im{index}.png")
    (images / "im3.png").write_bytes(b"broken")  # rank 1's second image: reported by the merge

    torch.manual_seed(0)
    segmenter = Segmenter(
        load_proposer(tiny_sam2_dir, device="cpu"), load_encoder(tiny_dinov2_dir, device="cpu")
    )
    reference = np.asarray(Image.open(images / "im0.png").convert("RGB"))
    mask = np.zeros(reference.shape[:2], dtype=bool)
    mask[10:40, 20:60] = True
    segmenter.add_reference(reference, "thing", mask=mask)
    memory = segmenter.memory.save(tmp_path / "memory.safetensors")

    args = ["predict", "--memory", str(memory), str(images), "--sam2", str(tiny_sam2_dir),
            "--encoder", str(tiny_dinov2_dir), "--device", "cpu", "--points-per-side", "4"]  # fmt: skip
    single = _run([sys.executable, "-m", "refseg", *args, "-o", "single/results.json"], tmp_path)
    double = _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "refseg", *args, "-o", "double/results.json"],
        tmp_path,
    )  # fmt: skip

    for kind in (None, "images", "errors"):
        one = tmp_path / "single" / "results.json"
        two = tmp_path / "double" / "results.json"
        if kind is not None:
            one, two = sidecar_path(one, kind), sidecar_path(two, kind)
        expected = one.read_text()
        assert two.read_text() == expected.replace("single", "double")
    assert partial_paths(tmp_path / "double" / "results.json") == []
    assert single.stdout.strip().splitlines()[-1] == "single/results.json"
    assert double.stdout.splitlines().count("double/results.json") == 1  # only rank 0 reports
