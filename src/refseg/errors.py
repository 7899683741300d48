"""The one exception family a user can cause.

Every error a user can trigger (bad path, unreadable image, empty mask, unknown class,
weights not reachable, a memory file built with another encoder) is a :class:`RefsegError`
whose message says what to do. The CLI prints the message and exits non-zero; it never
shows a traceback for these.
"""

from __future__ import annotations


class RefsegError(Exception):
    """Base class for errors caused by input or environment, with a user-facing message."""


class WeightsUnavailableError(RefsegError):
    """A model's weights could not be loaded (no network, wrong id, missing files)."""


class InvalidInputError(RefsegError):
    """An image, mask, box, class name or file given by the user is unusable."""


class EncoderMismatchError(RefsegError):
    """A memory bank was built with a different encoder than the one asked to use it."""


class OutputError(RefsegError):
    """An output cannot be written: no permission, a read-only or full disk, a folder where a
    file should be (or the reverse), or another run writing the same output."""
