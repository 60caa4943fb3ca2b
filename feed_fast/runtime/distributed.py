"""torchrun / DistributedDataParallel: the process group from the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK), NCCL on GPUs and gloo on CPUs, and the few collectives the engine needs. A plain `python` run is a
world of one.

When a rank dies, the others must not hang: a collective with a dead peer fails at once (its sockets close),
torchrun's agent notices a failed worker within its --monitor-interval and stops the rest (SIGTERM, then
SIGKILL after 30 s), and a peer that hangs without dying fails every collective after PROCESS_GROUP_TIMEOUT.
A failed run leaves the group without its closing barrier, which would wait for the dead rank, and the survivors
report the lost peer in one line (`lost_peer`) instead of gloo's traceback.

Where a run's folder lives: only rank 0 writes it, and every rank reads last.pt from it on a resume, so under
torchrun across machines it must be on storage every node sees (a shared file system)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# Longest a collective waits for a peer: longer than rank 0 writing a checkpoint while the others wait,
# shorter than torch's 30-minute gloo default.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=10)


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), readable before the group exists."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether setup_distributed created the process group (and so tears it down)
    # a gloo group for host-side control messages (the stop flag), so they never sync a CUDA stream
    control_group: Any = field(default=None, compare=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: torch.device) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, store=attempt_store(), rank=rank, world_size=world,
                                timeout=PROCESS_GROUP_TIMEOUT)
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return DistInfo(rank, world, local, owns, control)


def attempt_store() -> dist.Store:
    """The env:// rendezvous store (torchrun's), its keys under this attempt's own prefix. torchrun 2.14 keeps one
    store server across `--max-restarts` restarts, and the restarted workers' process group would otherwise read
    the previous attempt's keys (a dead peer's address: "Connection refused" or a hang in connectFullMesh)."""
    store, _, _ = next(dist.rendezvous("env://", timeout=PROCESS_GROUP_TIMEOUT))
    attempt = f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}-of-{os.environ.get('WORLD_SIZE', '1')}"
    return dist.PrefixStore(f"feed-fast/attempt-{attempt}", store)


def teardown_distributed(info: DistInfo, *, failed: bool = False) -> None:
    """Leave the group we created: after a barrier when the run ended normally, without one when it failed
    (a peer may be dead, and the barrier would wait for it)."""
    if info.owns_group and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a float64 vector of statistics across ranks (a copy on the CPU stays a copy)."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when `flag` is true on any rank (a CPU all-reduce over the control group)."""
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=info.control_group)
    return bool(value.item() > 0)


def agree(values: list[int], info: DistInfo) -> list[int]:
    """The element-wise maximum over the ranks of a few small integers (a CPU all-reduce over the control group):
    between optimizer steps, a stop signal's number on any rank and rank 0's decision to checkpoint travel in one
    message, so every rank takes the same decision after the same step."""
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=info.control_group)
    return tensor.tolist()


def sync_batch_norm(module: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """`module` with its BatchNorm layers as SyncBatchNorm (statistics over every process's micro-batch) under
    torchrun; unchanged in a world of one (nothing to synchronise). The parameters and buffers stay the same
    tensors and the state dict keeps its keys, so checkpoints and exports load into plain BatchNorm. torch's
    SyncBatchNorm runs on CUDA only (`train.sync_bn` is refused on other devices under torchrun)."""
    if not info.enabled:
        return module
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)


PEER_FAILURE = re.compile(r"(Connection (?:closed|reset) by peer[^.]*|Broken pipe|NCCL communicator was aborted"
                          r"|[Ss]ocket [Tt]imeout|Timed out waiting[^.]*|ProcessGroupNCCL[^.]*abort[^.]*)")


def lost_peer(error: BaseException) -> str | None:
    """The short reason when `error` is a collective failing because another process died or hung (gloo's "Read
    error [addr]: Connection reset by peer", NCCL's aborted communicator, a timeout); None for any other error.
    Read from the message alone: by the time the error reaches the command, the process group is gone."""
    if not isinstance(error, RuntimeError):
        return None
    text = str(error)
    match = PEER_FAILURE.search(text)
    if match is None:
        return None
    backend = "gloo" if "gloo" in text.lower() else "nccl" if "nccl" in text.lower() else "torch.distributed"
    return f"{backend}: {match.group(0).strip()}"


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running stats). DDP broadcasts them at the start of each
    forward, so after the last step of an epoch each rank holds its own update; evaluation and checkpoints
    must see one model."""
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
