"""One process per device under ``torchrun``: rank, device and process group for every command.

``torchrun --nproc-per-node N -m dpslm_utils <command> ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set. Each process then works on its own device: on CUDA rank r of
a machine uses ``cuda:LOCAL_RANK`` (NCCL), on CPU every rank uses the CPU (gloo). Without torchrun
(``WORLD_SIZE`` unset or 1) nothing is initialised and the requested device is used as given.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """Where this process runs: ``rank`` of ``world_size`` processes, on ``device``, with ``backend`` (None alone)."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes shared outputs (checkpoints, logs, summaries)."""
        return self.rank == 0

    @property
    def prefix(self) -> str:
        return f"[rank {self.rank}/{self.world_size}] " if self.enabled else ""


def resolve(device: str | torch.device | None, env: Mapping[str, str] = os.environ,
            cuda_available: bool | None = None) -> Distributed:  # fmt: skip
    """Decide rank, device and backend from the torchrun variables in ``env`` (no side effects).

    ``device`` None means CUDA when available, else CPU. Under torchrun a CUDA request ("cuda" or
    "cuda:0") always means each rank's own GPU ``cuda:LOCAL_RANK``; another index is refused, as two
    ranks would share it (choose GPUs with CUDA_VISIBLE_DEVICES instead).
    """
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    world_size, rank, local_rank = (int(env.get(name, default)) for name, default in
                                    (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))  # fmt: skip
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"inconsistent torchrun variables: RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world_size}")
    requested = torch.device(device) if device is not None else torch.device("cuda" if cuda_available else "cpu")
    if requested.type == "cuda" and not cuda_available:
        raise ValueError(f"device {device!r} was requested but CUDA is not available")
    if world_size == 1:
        return Distributed(0, 0, 1, requested, None)
    if requested.type == "cuda":
        if requested.index not in (None, 0, local_rank):
            raise ValueError(f"under torchrun every rank uses its own GPU (cuda:LOCAL_RANK); got device {device!r}. "
                             "Choose the GPUs with CUDA_VISIBLE_DEVICES and pass --device cuda")
        return Distributed(rank, local_rank, world_size, torch.device("cuda", local_rank), "nccl")
    return Distributed(rank, local_rank, world_size, requested, "gloo")


def setup(device: str | torch.device | None = None) -> Distributed:
    """:func:`resolve`, then select this rank's GPU and join the process group (when under torchrun)."""
    dist = resolve(device)
    if dist.device.type == "cuda" and dist.device.index is not None:
        torch.cuda.set_device(dist.device)
    if dist.enabled and not torch.distributed.is_initialized():
        init = dict(device_id=dist.device) if dist.backend == "nccl" else {}
        torch.distributed.init_process_group(dist.backend, rank=dist.rank, world_size=dist.world_size, **init)
    return dist


def teardown(dist: Distributed) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def gather_lists(dist: Distributed, items: list) -> list:
    """Every rank's ``items`` concatenated, in rank order (the list itself when alone)."""
    if not dist.enabled:
        return list(items)
    gathered: list = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def barrier(dist: Distributed) -> None:
    if dist.enabled:
        torch.distributed.barrier()


def on_main(dist: Distributed, work: Callable[..., T], *args) -> T | None:
    """``work(*args)`` on rank 0 alone (writing shared files), then every rank learns whether it succeeded.

    If it raised, every rank raises rank 0's exception (the same type and message), instead of running
    ahead into a collective operation that rank 0 never reaches and waiting there for ever (NCCL), or
    failing with a lost connection that does not say why (gloo). Returns ``work``'s result on rank 0,
    None on the other ranks.
    """
    result, error = None, None
    if dist.is_main:
        try:
            result = work(*args)
        except Exception as e:  # noqa: BLE001 (shared with every rank, then raised)
            error = e
    if dist.enabled:
        shared = [_picklable(error)]
        torch.distributed.broadcast_object_list(shared, src=0)
        if not dist.is_main:
            error = shared[0]
    if error is not None:
        raise error
    return result


def _picklable(error: Exception | None) -> Exception | None:
    """``error``, or a RuntimeError with its type and message if it cannot be sent to the other ranks."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(error).__name__}: {error}")
