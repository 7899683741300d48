"""Multi-process runs under ``torchrun``.

``torchrun --nproc-per-node N -m refseg predict ...`` starts N processes with the usual
torch.distributed environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). :func:`distributed_context` reads it; when ``WORLD_SIZE > 1`` it starts the
process group (NCCL on CUDA, gloo on CPU) and gives each process its device (``cuda:LOCAL_RANK``
on GPU). The predict runner then splits the targets ``targets[rank::world_size]`` and rank 0
merges the partial files into one results file. Only barriers are exchanged: results travel
through the file system, so every process must see the output folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from .errors import InvalidInputError

logger = logging.getLogger(__name__)

# A barrier waits for the slowest process to finish its share of a long run.
DEFAULT_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run.

    Attributes:
        rank: global rank (0 in a single-process run).
        world_size: number of processes (1 in a single-process run).
        local_rank: rank on this machine; picks the GPU.
        device: the device this process should use (None: let the library choose).
        backend: "nccl", "gloo", or None when no process group was started.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str | None = None
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (does nothing in a single-process run)."""
        if self.backend is None:
            return
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()


def world_from_env(environ: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torch.distributed environment variables.

    Raises:
        InvalidInputError: the variables are not integers or are inconsistent.
    """
    env = os.environ if environ is None else environ
    try:
        world_size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise InvalidInputError(f"Bad torch.distributed environment variable: {error}") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise InvalidInputError(
            f"Inconsistent torch.distributed environment: RANK={rank}, WORLD_SIZE={world_size}, "
            f"LOCAL_RANK={local_rank}; start multi-process runs with torchrun."
        )
    return rank, world_size, local_rank


def pick_backend_and_device(device: str | None, local_rank: int) -> tuple[str, str]:
    """NCCL and ``cuda:LOCAL_RANK`` when CUDA is there and not refused, else gloo on the CPU."""
    wants_cuda = device is None or device.startswith("cuda")
    if wants_cuda and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise InvalidInputError(
                f"LOCAL_RANK {local_rank} has no GPU (this machine has {torch.cuda.device_count()}); "
                "start at most one process per GPU."
            )
        if device not in (None, "cuda", f"cuda:{local_rank}"):
            logger.warning("Ignoring --device %s: process %d uses cuda:%d", device, local_rank, local_rank)
        return "nccl", f"cuda:{local_rank}"
    if device is not None and device.startswith("cuda"):
        raise InvalidInputError(f"--device {device} asked for, but CUDA is not available here.")
    return "gloo", device or "cpu"


@contextmanager
def distributed_context(
    device: str | None = None, timeout_s: float | None = None
) -> Iterator[DistributedContext]:
    """This process's :class:`DistributedContext`; starts and ends the process group if needed.

    Args:
        device: the device asked for (``--device``), or None.
        timeout_s: barrier timeout; default ``REFSEG_DIST_TIMEOUT_S`` or 24 hours.
    """
    rank, world_size, local_rank = world_from_env()
    if world_size == 1:
        yield DistributedContext(device=device)
        return
    import torch.distributed as dist

    backend, process_device = pick_backend_and_device(device, local_rank)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if timeout_s is None:
        timeout_s = float(os.environ.get("REFSEG_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    logger.info("Process %d of %d on %s (%s)", rank, world_size, process_device, backend)
    try:
        yield DistributedContext(rank, world_size, local_rank, process_device, backend)
    finally:
        dist.destroy_process_group()
