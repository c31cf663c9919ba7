"""Data-parallel training over several processes (`accelerate launch` / `torchrun`): ranks, gradient averaging.

The network is attached to the host by hooks and never called as a module, so DistributedDataParallel (which
synchronises in the wrapped module's forward) does not fit it. Instead accelerate's Accelerator sets up the process
group (gloo on CPU, NCCL on CUDA) from the launcher's RANK/WORLD_SIZE/LOCAL_RANK, and after each backward pass the
gradients are averaged over the ranks with one all-reduce of a flattened buffer: the same update DDP would make.
Every rank starts from the same seed (same initial network), reads its own share of the batches, and only rank 0
writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import TrainingError


@dataclass
class Distributed:
    """This process's place in a run: rank, world size, and the accelerate Accelerator when there are several."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    accelerator: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, *, cpu: bool) -> Distributed:
        """One process unless a launcher set WORLD_SIZE > 1; then an Accelerator joins the process group."""
        world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world_size <= 1:
            return cls()
        try:
            from accelerate import Accelerator
        except ImportError as error:
            raise TrainingError(f"several processes need the `accelerate` package ({error})") from error
        accelerator = Accelerator(cpu=cpu)
        if accelerator.num_processes != world_size:
            raise TrainingError(f"the launcher started {world_size} processes but accelerate joined "
                                f"{accelerator.num_processes}; use `accelerate launch` or `torchrun`")
        return cls(accelerator.process_index, accelerator.num_processes, accelerator.local_process_index,
                   accelerator)

    @property
    def device(self) -> torch.device | None:
        return None if self.accelerator is None else self.accelerator.device

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks (missing gradients count as zeros)."""
        if not self.active:
            return
        params = [p for p in parameters if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for param, grad in zip(params, grads):
            count = grad.numel()
            param.grad = flat[offset:offset + count].view_as(grad).to(grad.dtype)
            offset += count

    def min_int(self, value: int) -> int:
        """The smallest `value` over the ranks (so every rank runs the same number of steps)."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self._collective_device())
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
        return int(tensor.item())

    def any_true(self, flag: bool) -> bool:
        """True when `flag` is true on any rank (a stop asked on one rank stops them all)."""
        if not self.active:
            return flag
        tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self._collective_device())
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return bool(tensor.item())

    def broadcast_int(self, value: int) -> int:
        """Rank 0's `value` on every rank (e.g. a seed chosen at random)."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self._collective_device())
        torch.distributed.broadcast(tensor, src=0)
        return int(tensor.item())

    def check_in_sync(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """TrainingError unless every rank holds the same weights (compared by their sum and sum of squares)."""
        if not self.active:
            return
        values = [p.detach().double() for p in parameters]
        summary = torch.stack([sum(v.sum() for v in values), sum((v * v).sum() for v in values)]).to(
            self._collective_device())
        high, low = summary.clone(), summary.clone()
        torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
        torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
        if not torch.equal(high, low):
            raise TrainingError(f"the processes' weights drifted apart (sums {low.tolist()} … {high.tolist()})")

    def barrier(self) -> None:
        if self.active:
            self.accelerator.wait_for_everyone()

    def _collective_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return self.device if backend == "nccl" and self.device is not None else torch.device("cpu")
