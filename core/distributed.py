"""Training on several processes with PyTorch's own distributed stack (`torchrun`).

    torchrun --nproc_per_node 4 -m core train --data my-study/ --out ckpt/

Under torchrun every process runs the same command: `context()` joins the process group (NCCL on GPUs,
one GPU per process; gloo on CPUs). Feature extraction is sharded across the processes (each encodes
every world-th case, rank 0 merges the shards into the cache); training wraps each phase's trainable
step in DistributedDataParallel, every global batch being split between the processes so that the
averaged gradient is the single-process one: the sampling order, the modality masks, the diffusion
noise and time steps are drawn for the whole global batch from generators seeded alike on every
process, each keeping its own rows (`BatchDraws`), and every loss is a mean over the global batch. Only
dropout differs: its masks come from torch's global stream, seeded per process. Validation, early
stopping and calibration run on every process on identical weights (so they agree without messages);
rank 0 alone logs and writes.
Multi-node: the same command with `--nnodes`, `--node_rank` and `--rdzv_endpoint` (torchrun's docs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, rows):
        """This process's share of a global batch (every world-th row)."""
        return rows[self.rank::self.world]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def total(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of `x` over the processes (no gradient flows through it)."""
        if not self.active:
            return x
        x = x.detach().clone()
        dist.all_reduce(x)
        return x

    def agree(self, value: float) -> float:
        """Rank 0's value on every process (early stopping must decide alike everywhere)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return float(box[0])


def context() -> Context:
    """The process group of this run (joined on first call under torchrun), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Context(rank, world, local)


def process_device(ctx: Context, device: str | None) -> str | None:
    """Under torchrun on GPUs each process takes its own GPU."""
    if ctx.active and torch.cuda.is_available() and (device is None or device == "cuda"):
        return f"cuda:{ctx.local_rank}"
    return device


@dataclass(frozen=True)
class BatchDraws:
    """The random draws of one global batch of `size` rows, of which this process holds every world-th.
    Each draw is made for the whole batch and this process keeps its rows, so that two processes draw
    exactly what one process would; the means make this process's part of the global batch's mean
    (DistributedDataParallel averages the parts' gradients over the processes)."""

    generator: torch.Generator
    size: int
    ctx: Context = Context()

    def _mine(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.ctx.rank::self.ctx.world]

    def rand(self, *shape: int) -> torch.Tensor:
        return self._mine(torch.rand((self.size, *shape), generator=self.generator))

    def randn(self, *shape: int) -> torch.Tensor:
        return self._mine(torch.randn((self.size, *shape), generator=self.generator))

    def randint(self, high: int) -> torch.Tensor:
        return self._mine(torch.randint(0, high, (self.size,), generator=self.generator))

    def row_mean(self, per_row: torch.Tensor) -> torch.Tensor:
        """The global batch's mean of a per-row value (this process's part of it)."""
        return per_row.sum() * (self.ctx.world / self.size)

    def ratio(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Sum of `total` over the global batch divided by the sum of `count` (this process's part)."""
        return total * self.ctx.world / self.ctx.total(count.to(total.dtype)).clamp_min(1)
