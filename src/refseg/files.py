"""Every file refseg writes goes through here: a name from data kept inside its folder, a
writability check before the work starts, atomic writes with the user's permissions, and
failures that say what went wrong.

- :func:`safe_child`: ``root / relative`` for a ``relative`` name that comes from data (a COCO
  ``file_name``, an upload's name), never outside ``root``: anchors, ``..`` and empty parts are
  dropped, and a symbolic link of an existing folder that leads out of ``root`` is refused.

- :func:`check_writable` / :func:`check_writable_folder`: an output can be written (its
  folder exists or can be made, is a folder, lets us create a file; the output is not a
  folder), checked by creating and removing a probe file, so it holds for root, ACLs and
  read-only mounts alike; :func:`check_not_input`: no output is one of the run's inputs.
  Called before any model is loaded or any work is done.
- :func:`output_lock`: ``<output>.lock`` holds the pid and host of the run writing ``output``;
  a second run stops with a message instead of mixing its partial results with the first's.
- :func:`atomic_write`: a temporary file in the output's folder, created with mode 0o666 so the
  umask decides the permissions (as for any file a program creates), written, synced, then
  renamed over the output. A failure (no space, no permission, a read-only disk, a file where a
  folder should be) is an :class:`~refseg.errors.OutputError` naming the output, and the
  temporary is removed. :func:`save_image` and ``refseg.data.coco.write_json`` go through it,
  and so do memory files.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import socket
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .errors import InvalidInputError, OutputError

logger = logging.getLogger(__name__)

_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "the disk quota is used up",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EEXIST: "a file of that name is in the way",
}


def output_error(error: BaseException, path: str | os.PathLike) -> OutputError:
    """An :class:`OutputError` for a failed write of ``path``, with the reason in words."""
    code = getattr(error, "errno", None)
    reason = _REASONS.get(code) if code is not None else None
    if reason is None:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return OutputError(
        f"Cannot write {path}: {reason}. Choose another output path, or free space or fix permissions there."
    )


# ----------------------------------------------------------------------------- names from data


def safe_relative(name: str | os.PathLike) -> PurePosixPath:
    """A name from data as a relative path that stays where it is put.

    Both separators count; anchors (``/``, ``C:\\``), ``.``, ``..`` and empty parts are
    dropped: ``../../victim.jpg`` -> ``victim.jpg``, ``/etc/passwd`` -> ``etc/passwd``.

    Raises:
        InvalidInputError: nothing is left (``..``, ``/``, an empty name).
    """
    text = os.fspath(name).replace("\\", "/")
    parts = [p for p in PureWindowsPath(text).parts if p not in ("", ".", "..")]
    parts = [p for p in parts if not PureWindowsPath(p).anchor and p != "/"]
    if not parts:
        raise InvalidInputError(f"The name {os.fspath(name)!r} names no file.")
    return PurePosixPath(*parts)


def safe_child(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """``root / relative`` for a name from data, guaranteed to lie inside ``root``.

    The name is made relative by :func:`safe_relative`; then, following the symbolic links of
    the folders that exist already, the path must still lie inside ``root``.

    Raises:
        InvalidInputError: nothing is left of the name, or a link leads out of ``root``.
    """
    root = Path(root)
    path = root.joinpath(*safe_relative(relative).parts)
    real_root = root.resolve()
    real = path.resolve()  # strict=False: existing parts' links followed, the rest kept
    if real != real_root and real_root not in real.parents:
        raise InvalidInputError(
            f"The name {os.fspath(relative)!r} leads out of {root} (through a symbolic link): not written."
        )
    return path


# ----------------------------------------------------------------------------- before the work


def check_writable(path: str | os.PathLike, *, example: str = "results.json") -> Path:
    """Raise unless the file ``path`` can be written (created or replaced).

    Args:
        path: the output file.
        example: a file name to suggest when ``path`` is a folder.

    Raises:
        OutputError: ``path`` is a folder, a part of its folder is a file, or no file can be
            created there (permissions, read-only file system).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name such as {path / example}.")
    _probe(_nearest_existing(path.parent), path)
    return path


def check_writable_folder(path: str | os.PathLike) -> Path:
    """Raise unless files can be written in the folder ``path`` (made if missing).

    Raises:
        OutputError: ``path`` or a part of it is a file, or no file can be created there.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"Cannot write into {path}: it is a file, not a folder.")
    _probe(_nearest_existing(path), path)
    return path


def check_not_input(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike | None]) -> None:
    """Raise if an output is one of the run's inputs (the same file, links followed): ``refseg
    sample train.json -o train.json`` or ``eval -o GT.json`` would replace the data set.

    Raises:
        OutputError: naming the output and the input it would overwrite.
    """
    taken = {Path(os.path.realpath(p)): p for p in inputs if p is not None}
    for output in outputs:
        real = Path(os.path.realpath(output))
        if real in taken:
            raise OutputError(
                f"{output} is an input of this run ({taken[real]}): writing it would replace it. "
                "Give another output name."
            )


def _nearest_existing(folder: Path) -> Path:
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _probe(folder: Path, target: Path) -> None:
    """Create and remove a file in ``folder`` (the nearest existing folder of ``target``)."""
    if not folder.is_dir():
        raise OutputError(f"Cannot write {target}: {folder} is a file, not a folder.")
    probe = folder / f".refseg-probe-{secrets.token_hex(6)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        raise output_error(error, target) from None
    probe.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- writing


def make_folder(folder: str | os.PathLike) -> Path:
    """``mkdir -p folder``, a failure as :class:`OutputError`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(error, folder) from None
    return folder


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Write ``path`` by ``write(temporary path)``, then rename the temporary over ``path``.

    The temporary lies in the same folder (made if missing) and is created with mode 0o666, so
    the file gets the umask's permissions. A reader never sees a half-written file; a failed
    write leaves the old file and no temporary.

    Returns:
        ``path``.

    Raises:
        OutputError: the write failed (an ``OSError`` or a safetensors error: no space, no
            permission, a read-only file system, a file where a folder should be).
    """
    from safetensors import SafetensorError

    path = Path(path)
    make_folder(path.parent)
    temporary = None
    try:
        temporary = _new_temporary(path)
        mode = stat.S_IMODE(temporary.stat().st_mode)  # 0o666 less the umask, as the kernel made it
        write(temporary)
        os.chmod(temporary, mode)  # a writer that replaced the file (safetensors does) made it 0o600
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        temporary = None
    except (OSError, SafetensorError) as error:
        raise output_error(error, path) from None
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
    return path


def _new_temporary(path: Path) -> Path:
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise OSError(errno.EEXIST, "no free temporary name", str(path))


def picture_format(path: str | os.PathLike) -> str:
    """The Pillow format of a picture file name (``.png`` -> ``PNG``).

    Raises:
        InvalidInputError: an extension Pillow cannot write.
    """
    from PIL import Image

    suffix = Path(path).suffix.lower()
    found = Image.registered_extensions().get(suffix)
    if found is None or found not in Image.SAVE:
        raise InvalidInputError(
            f"{path}: cannot write a picture with extension {suffix!r}; use .png or .jpg."
        )
    return found


def save_image(image: Any, path: str | os.PathLike) -> Path:
    """Save a PIL image atomically (:func:`atomic_write`), in the format its extension says."""
    fmt = picture_format(path)
    picture = image.convert("RGB") if fmt == "JPEG" and image.mode not in ("RGB", "L") else image
    return atomic_write(path, lambda temporary: picture.save(temporary, format=fmt))


# ----------------------------------------------------------------------------- one run per output


def lock_path(output: str | os.PathLike) -> Path:
    """``<output>.lock``."""
    output = Path(output)
    return output.with_name(output.name + ".lock")


@contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<output>.lock`` while writing ``output``.

    The lock file holds ``{"pid", "host"}``. A lock left by a process that is gone (same host,
    no such pid: a killed run) is taken over.

    Raises:
        OutputError: another live run holds the lock, or the lock cannot be written.
    """
    lock = lock_path(output)
    mine = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        if _try_create(lock, mine):
            break
        holder = _read_lock(lock)
        if holder is not None and _is_stale(holder, mine):
            logger.warning("Taking over %s: its run (pid %s) is gone", lock, holder.get("pid"))
            lock.unlink(missing_ok=True)
            continue
        who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "unknown process"
        raise OutputError(
            f"Another refseg run ({who}) is writing {output}. Wait for it to finish, or give another "
            f"output; if no such run is going, remove {lock}."
        )
    else:  # pragma: no cover - three takeovers lost in a row
        raise OutputError(f"Cannot take {lock}: other runs keep taking it.")
    try:
        yield lock
    finally:
        if _read_lock(lock) == mine:
            lock.unlink(missing_ok=True)


def _try_create(lock: Path, content: dict[str, Any]) -> bool:
    """Create ``lock`` with ``content`` in one step (a hard link of a written file); False if it exists."""
    make_folder(lock.parent)
    staged = lock.with_name(f".{lock.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        staged.write_text(json.dumps(content), encoding="utf-8")
        try:
            os.link(staged, lock)
        except FileExistsError:
            return False
        except OSError as error:  # a file system without hard links: create, then write
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(content))
        return True
    except OSError as error:
        raise output_error(error, lock) from None
    finally:
        staged.unlink(missing_ok=True)


def _read_lock(lock: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return content if isinstance(content, dict) else None


def _is_stale(holder: dict[str, Any], mine: dict[str, Any]) -> bool:
    """Whether the run that wrote the lock is gone: same host and no process with its pid."""
    pid = holder.get("pid")
    if holder.get("host") != mine["host"] or not isinstance(pid, int) or pid <= 0 or pid == mine["pid"]:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (another user's process)
        return False
    return False
