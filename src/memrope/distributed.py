"""Data-parallel generation of many prompts under ``torchrun`` (one video per prompt, one GPU per rank).

Launch one process per GPU, e.g. ``torchrun --nproc_per_node 8 my_script.py prompts.txt``, and in
the script::

    with DistributedContext() as dist:
        for index, prompt in dist.shard(prompts):
            ...  # generate on dist.device, write result number `index`
        done = dist.gather_object(my_indices)  # the list of every rank's object on rank 0, else None

Outside ``torchrun`` (no ``RANK``/``WORLD_SIZE`` in the environment) the same code runs as a single
process that takes every item. :meth:`DistributedContext.shard` deals the items round-robin: item
``i`` goes to rank ``i % world_size``, so every index is taken by exactly one rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from typing_extensions import Self

from memrope._validation import check_int

__all__ = ["BACKENDS", "DistributedContext", "DistributedEnv", "shard_indices"]

BACKENDS = ("gloo", "nccl", "mpi", "ucc")
ItemT = TypeVar("ItemT")


def _env_int(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    text = environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(
            f"environment variable {name} must be an integer >= {minimum}, got {text!r}"
        ) from None
    if value < minimum:
        raise ValueError(f"environment variable {name} must be an integer >= {minimum}, got {value}")
    return value


def _check_rank(name: str, rank: int, size_name: str, size: int) -> None:
    if rank >= size:
        raise ValueError(f"{name}={rank} must be smaller than {size_name}={size} (ranks count from 0)")


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits in a ``torchrun`` job (single-process defaults).

    Attributes:
        rank: global rank, ``0 .. world_size-1`` (``RANK``).
        world_size: number of processes in the job (``WORLD_SIZE``).
        local_rank: rank on this node, ``0 .. local_world_size-1`` (``LOCAL_RANK``); picks the GPU.
        local_world_size: processes on this node (``LOCAL_WORLD_SIZE``; default ``world_size``).
        master_addr, master_port: rendezvous of the process group (``MASTER_ADDR``, ``MASTER_PORT``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None

    def __post_init__(self) -> None:
        for name in ("rank", "world_size", "local_rank", "local_world_size"):
            value = getattr(self, name)
            minimum = 1 if name.endswith("size") else 0
            check_int(value, name, minimum)
        _check_rank("RANK", self.rank, "WORLD_SIZE", self.world_size)
        _check_rank("LOCAL_RANK", self.local_rank, "LOCAL_WORLD_SIZE", self.local_world_size)
        if self.local_world_size > self.world_size:
            raise ValueError(
                f"LOCAL_WORLD_SIZE={self.local_world_size} cannot exceed WORLD_SIZE={self.world_size}"
            )

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DistributedEnv:
        """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
        ``MASTER_PORT`` (``os.environ`` by default), as ``torchrun`` sets them.

        Raises:
            ValueError: a variable is not a valid integer, ``RANK >= WORLD_SIZE``, ``LOCAL_RANK >=
                LOCAL_WORLD_SIZE``, or a multi-process job misses one of the variables it needs.
        """
        environ = os.environ if environ is None else environ
        if "RANK" in environ and "WORLD_SIZE" not in environ:
            raise ValueError("RANK is set but WORLD_SIZE is not; launch with torchrun or set both")
        world_size = _env_int(environ, "WORLD_SIZE", 1, 1)
        if world_size > 1:
            missing = [
                name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in environ
            ]
            if missing:
                raise ValueError(
                    f"WORLD_SIZE={world_size} needs {', '.join(missing)} in the environment; "
                    "launch with torchrun"
                )
        port = environ.get("MASTER_PORT")
        return cls(
            rank=_env_int(environ, "RANK", 0, 0),
            world_size=world_size,
            local_rank=_env_int(environ, "LOCAL_RANK", 0, 0),
            local_world_size=_env_int(environ, "LOCAL_WORLD_SIZE", world_size, 1),
            master_addr=environ.get("MASTER_ADDR"),
            master_port=None if port is None else _env_int(environ, "MASTER_PORT", 0, 1),
        )


def shard_indices(count: int, rank: int, world_size: int) -> range:
    """Indices ``0 .. count-1`` taken by ``rank`` of ``world_size``: ``rank, rank + world_size, ...``.

    Over all ranks every index appears exactly once; shares differ by at most one item, and ranks
    past ``count`` get none.
    """
    for name, value, minimum in (("count", count, 0), ("rank", rank, 0), ("world_size", world_size, 1)):
        check_int(value, name, minimum)
    _check_rank("rank", rank, "world_size", world_size)
    return range(rank, count, world_size)


def _default_device(local_rank: int) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK={local_rank} has no GPU: {count} CUDA device(s) visible; "
            "launch at most one process per GPU (--nproc_per_node) or pass device="
        )
    return torch.device("cuda", local_rank)


def _check_backend(backend: str | None, device: torch.device) -> str:
    if backend is None:
        return "nccl" if device.type == "cuda" else "gloo"
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {BACKENDS} or None (nccl on CUDA, else gloo), got {backend!r}"
        )
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(
            f"backend='nccl' needs a CUDA device, but this rank's device is {device}; use 'gloo'"
        )
    return backend


class DistributedContext:
    """One rank of a data-parallel job: its device, its share of the work, and the process group.

    Use it as a context manager: entering initialises ``torch.distributed`` when ``world_size > 1``
    (unless the program already did) and selects the rank's CUDA device; leaving destroys the
    process group it created. A single process needs no group: :meth:`gather_object` and
    :meth:`barrier` then work locally.

    Args:
        env: where this process sits (default: :meth:`DistributedEnv.from_environ`).
        backend: ``"nccl"``, ``"gloo"``, ... (default: nccl on CUDA, gloo on the CPU).
        device: this rank's device (default: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU).
        timeout: collective timeout passed to ``init_process_group`` (default: torch's).
        init_method: passed to ``init_process_group`` (default ``env://``: the rendezvous is read
            from ``MASTER_ADDR`` and ``MASTER_PORT`` in ``os.environ``, as ``torchrun`` sets them).
    """

    def __init__(
        self,
        env: DistributedEnv | None = None,
        *,
        backend: str | None = None,
        device: torch.device | str | None = None,
        timeout: timedelta | None = None,
        init_method: str | None = None,
    ) -> None:
        self.env = DistributedEnv.from_environ() if env is None else env
        self.device = _default_device(self.env.local_rank) if device is None else torch.device(device)
        self.backend = _check_backend(backend, self.device)
        self.timeout = timeout
        self.init_method = init_method
        self._owns_group = False

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def local_rank(self) -> int:
        return self.env.local_rank

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that gathers results and writes summaries."""
        return self.env.rank == 0

    def __enter__(self) -> Self:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.env.is_distributed and not dist.is_initialized():
            options: dict[str, Any] = {} if self.timeout is None else {"timeout": self.timeout}
            dist.init_process_group(
                self.backend,
                init_method=self.init_method,
                rank=self.env.rank,
                world_size=self.env.world_size,
                **options,
            )
            self._owns_group = True
        if self.env.is_distributed:
            self._check_group()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    def _check_group(self) -> None:
        group = (dist.get_rank(), dist.get_world_size())
        if group != (self.env.rank, self.env.world_size):
            raise RuntimeError(
                f"the initialised process group has (rank, world_size) = {group}, "
                f"but the environment says {(self.env.rank, self.env.world_size)}"
            )

    def _require_group(self, operation: str) -> None:
        if self.env.is_distributed and not dist.is_initialized():
            raise RuntimeError(
                f"{operation}() with WORLD_SIZE={self.env.world_size} needs the process group: "
                "use `with DistributedContext() as ctx:`"
            )

    def shard(self, items: Iterable[ItemT]) -> list[tuple[int, ItemT]]:
        """This rank's ``(global_index, item)`` pairs: items ``rank, rank + world_size, ...``.

        Across ranks every index appears exactly once, for any number of items (ranks past the
        last item get an empty list). Needs no process group.
        """
        rank, world_size = self.env.rank, self.env.world_size
        return [(index, item) for index, item in enumerate(items) if index % world_size == rank]

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing to wait for in a single process)."""
        self._require_group("barrier")
        if not self.env.is_distributed:
            return
        if self.backend == "nccl":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            dist.barrier(device_ids=[index])
        else:
            dist.barrier()

    def gather_object(self, obj: Any) -> list[Any] | None:
        """Every rank's picklable ``obj`` as a list in rank order on rank 0; ``None`` on other ranks."""
        self._require_group("gather_object")
        if not self.env.is_distributed:
            return [obj]
        gathered: list[Any] | None = [None] * self.env.world_size if self.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered
