"""One entry point under plain ``python`` and under ``torchrun`` (DDP).

``setup()`` reads the variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``): with ``WORLD_SIZE`` > 1 it joins the process group (NCCL on
CUDA, gloo on CPU) and picks ``cuda:LOCAL_RANK``; otherwise it is a single process. Multi-node
works the same way (``torchrun --nnodes N --node_rank i --rdzv-endpoint host:port ...``).
Rank 0 logs, evaluates and saves; every rank trains on its share of each epoch
(``DistributedSampler``), gradients are averaged by DDP, and the global batch is split
across the ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DeviceError", "DistContext", "resolve_device", "setup", "teardown", "env_world_size"]


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # setup() created the process group (teardown destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


class DeviceError(ValueError):
    """A device that does not exist here (one-line message)."""

    user_error = True


def autocast(device: torch.device, amp: str | None):
    """Mixed precision ("fp16" or "bf16") on ``device`` (CUDA or the CPU); a no-op with amp
    None/"none". The model keeps its heads and losses in fp32 itself."""
    if amp in (None, "none"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def resolve_device(device: str | None) -> torch.device:
    """``device`` as a torch device (None/"auto": CUDA when available); a clear error for a
    device this machine lacks."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type not in ("cpu", "cuda"):  # torch knows mps, xpu, meta, ...: r2 is built and tested on these two
        raise DeviceError(f"--device {device}: r2 trains and predicts on cpu or cuda (cuda:1, ...)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: CUDA is not available here (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def setup(device: str | None = None) -> DistContext:
    """The process's rank, world size and device (see the module docstring).

    ``device``: "cpu", "cuda", "cuda:1", or None/"auto" (CUDA when available). Under DDP a
    CUDA device becomes ``cuda:LOCAL_RANK``.
    """
    world = env_world_size()
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(0, 1, 0, resolve_device(device), False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        # rank 0 evaluates while the others wait: allow an hour before a collective times out
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None,
                                timeout=datetime.timedelta(minutes=60))
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class UnusedParameters:
    """The ``params`` that the autograd graph of ``loss`` reaches on no rank. A DDP step gives
    them a zero gradient (DDP waits for every parameter); after ``backward`` the caller sets the
    gradient of :meth:`collect`'s parameters back to None, so that AdamW leaves them alone as
    one process does.

    This rank's part is a walk over the graph (about 800 nodes for the R² model, under 1 ms);
    the ranks agree through one all-reduce of a flag per parameter, started here without
    waiting (it queues before backward's own all-reduces, in the same order on every rank) and
    waited for in :meth:`collect`, after ``backward``: no device-to-host wait before it."""

    def __init__(self, loss: torch.Tensor, params: list[torch.Tensor]):
        reached, seen, todo = set(), set(), [loss.grad_fn]
        while todo:
            fn = todo.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            variable = getattr(fn, "variable", None)  # AccumulateGrad: a leaf tensor's gradient
            if variable is not None:
                reached.add(id(variable))
            todo.extend(next_fn for next_fn, _ in fn.next_functions)
        self.params = params
        self.used = torch.tensor([id(p) in reached for p in params], dtype=torch.uint8, device=loss.device)
        self._work = None
        if dist.is_available() and dist.is_initialized():
            self._work = dist.all_reduce(self.used, op=dist.ReduceOp.MAX, async_op=True)

    def collect(self) -> list[torch.Tensor]:
        """The parameters no rank used (waits for the all-reduce)."""
        if self._work is not None:
            self._work.wait()
        return [p for p, u in zip(self.params, self.used.tolist()) if not u]
