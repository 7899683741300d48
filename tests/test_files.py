"""refseg.files: names from data stay inside their folder, outputs are checked before work, writes are atomic with the umask's permissions
and fail as OutputError, one run per output."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refseg.data.coco import write_json
from refseg.errors import InvalidInputError, OutputError
from refseg.files import (
    atomic_write,
    check_writable,
    check_writable_folder,
    lock_path,
    output_lock,
    safe_child,
    safe_relative,
    save_image,
)
from refseg.memory import MemoryBank
from refseg.models.base import EncoderIdentity


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- names from data


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", "a.jpg"),
        ("sub/a.jpg", "sub/a.jpg"),
        ("../../../victim.jpg", "victim.jpg"),
        ("/etc/passwd", "etc/passwd"),
        ("a/../../b.png", "a/b.png"),
        ("..\\..\\win.png", "win.png"),
        ("C:\\Users\\x.png", "Users/x.png"),
        ("./a//b/./c.png", "a/b/c.png"),
    ],
)
def test_safe_relative_drops_anchors_and_parent_steps(name: str, expected: str) -> None:
    assert safe_relative(name).as_posix() == expected


@pytest.mark.parametrize("name", ["", ".", "..", "/", "../..", "//"])
def test_a_name_that_names_nothing_is_refused(name: str) -> None:
    with pytest.raises(InvalidInputError):
        safe_relative(name)


def test_safe_child_stays_inside_and_refuses_a_link_out(tmp_path: Path) -> None:
    root = tmp_path / "vis"
    assert safe_child(root, "../../x.png") == root / "x.png"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    with pytest.raises(InvalidInputError, match="leads out"):
        safe_child(root, "escape/x.png")


# ----------------------------------------------------------------------------- checks before work


def test_check_writable_names_a_folder_given_as_a_file(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a folder; give a file name such as"):
        check_writable(tmp_path, example="results.json")


def test_check_writable_refuses_a_file_as_the_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable(blocker / "deeper" / "out.json")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable_folder(blocker)


def test_check_writable_accepts_missing_folders_and_creates_nothing(tmp_path: Path) -> None:
    check_writable(tmp_path / "a" / "b" / "out.json")
    check_writable_folder(tmp_path / "c" / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_check_writable_reports_an_unwritable_folder(tmp_path: Path, monkeypatch, code: int) -> None:
    real_open = os.open

    def refuse(path, flags, mode=0o777, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(
        OutputError, match="Cannot write .*out.json: (permission denied|the file system is read-only)"
    ):
        check_writable(tmp_path / "out.json")


# ----------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umask_permissions(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        json_file = write_json({"a": 1}, tmp_path / "out.json")
        picture = save_image(Image.new("RGB", (4, 4)), tmp_path / "pic.png")
        bank = MemoryBank(EncoderIdentity("enc", "r", 518, 8))
        bank.add(torch.ones(8), "cat")
        memory = bank.save(tmp_path / "memory.safetensors")
    finally:
        os.umask(old)
    for path in (json_file, picture, memory):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT])
def test_a_failed_write_is_an_output_error_and_leaves_no_temporary(tmp_path: Path, code: int) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")

    def fail(temporary: Path) -> None:
        temporary.write_text("half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(OutputError, match="Cannot write"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_a_full_disk_while_saving_a_memory_is_an_output_error(tmp_path: Path, monkeypatch) -> None:
    from safetensors import SafetensorError

    import refseg.memory_file as memory_file

    def full(tensors, metadata=None):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(memory_file, "save_tensors", full)
    bank = MemoryBank(EncoderIdentity("enc", "r", 518, 8))
    bank.add(torch.ones(8), "cat")
    with pytest.raises(OutputError, match="memory.safetensors"):
        bank.save(tmp_path / "memory.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_writing_under_a_file_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="file.txt"):
        write_json([], blocker / "out.json")
    with pytest.raises(OutputError):
        save_image(Image.new("RGB", (2, 2)), blocker / "pic.png")


def test_save_image_refuses_an_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="extension"):
        save_image(Image.fromarray(np.zeros((2, 2, 3), np.uint8)), tmp_path / "pic.nothing")


# ----------------------------------------------------------------------------- the output lock


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    with output_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        holder = {"pid": os.getppid(), "host": socket.gethostname()}
        lock.write_text(json.dumps(holder))  # as if a live process held it
        with pytest.raises(OutputError, match=rf"Another refseg run \(pid {os.getppid()} .*is writing"):
            with output_lock(out):
                pass
    assert lock_path(out).exists()  # not ours any more: left alone
    lock_path(out).unlink()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock_path(out).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with output_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock_path(out).exists()
