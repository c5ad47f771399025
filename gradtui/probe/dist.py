"""torch.distributed support: global statistics from sharded gradients, and commands
applied on every rank at the same step.

Every sampled step gathers one small per-rank vector (ONE collective); rank 0 combines
it. Contributions are masked so that a sharded gradient (FSDP, a sharded DTensor)
counts on every rank and a replicated one (DDP: the gradients are already reduced)
counts once, on rank 0: the sum over ranks is then exactly the global value.
Commands travel from rank 0 to the others as msgpack bytes in a fixed buffer broadcast
over a CPU (gloo) group at every step boundary; never pickle.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack
import torch
import torch.distributed as dist
from torch import nn

from gradtui.model.commands import Command
from gradtui.wire import codec as wire

CONTROL_BYTES = 4096
"""Size of the per-step command broadcast; commands that do not fit wait a step (one that
could never fit is refused: the server takes none over `gate.MAX_COMMAND_BYTES`)."""


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (the tensor itself otherwise)."""
    to_local = getattr(t, "to_local", None)
    if to_local is not None and type(t).__name__ == "DTensor":
        out: torch.Tensor = to_local()
        return out
    return t


def _dtensor_sharded(p: torch.Tensor) -> bool:
    if type(p).__name__ != "DTensor":
        return False
    from torch.distributed.tensor import Shard

    return any(isinstance(pl, Shard) for pl in p.placements)  # type: ignore[attr-defined]


def _fsdp1_sharded_params(model: nn.Module) -> set[int]:
    """Parameters managed by a classic FSDP wrapper that shards them."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    except ImportError:  # pragma: no cover - torch without distributed
        return set()
    out: set[int] = set()
    for module in model.modules():
        if isinstance(module, FullyShardedDataParallel) and module.sharding_strategy != ShardingStrategy.NO_SHARD:
            out.update(id(p) for p in module.parameters())
    return out


@dataclass
class DistContext:
    """What the probe needs to know about the process group."""

    rank: int
    world_size: int
    control_group: Any
    sharded: list[bool]
    """Per watched parameter: its gradient is sharded across ranks."""

    @property
    def primary(self) -> bool:
        return self.rank == 0

    @classmethod
    def detect(cls, model: nn.Module, params: list[nn.Parameter]) -> DistContext | None:
        """The context of an initialised process group with more than one rank, else None."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        fsdp1 = _fsdp1_sharded_params(model)
        sharded = [_dtensor_sharded(p) or id(p) in fsdp1 for p in params]
        backend = dist.get_backend()
        # Commands must not force a GPU sync at every step: they go over a CPU group.
        control = None if backend == "gloo" else dist.new_group(backend="gloo")
        return cls(dist.get_rank(), dist.get_world_size(), control, sharded)

    def mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Per-parameter weight: 1 where this rank's contribution counts, else 0."""
        values = [1.0 if s or self.primary else 0.0 for s in self.sharded]
        return torch.tensor(values, dtype=dtype, device=device)

    def gather(self, vec: torch.Tensor) -> torch.Tensor:
        """(world_size, len) matrix of every rank's vector, on vec's device."""
        out = [torch.empty_like(vec) for _ in range(self.world_size)]
        dist.all_gather(out, vec)
        return torch.stack(out)

    def all_true(self, flag: torch.Tensor) -> bool:
        """Whether `flag` (a 0/1 tensor) is 1 on every rank (ONE collective, then a host read)."""
        t = flag.reshape(1).to(torch.float32)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0.5)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    def broadcast_commands(self, commands: list[Command]) -> tuple[list[Command], list[Command], list[Command]]:
        """Send rank 0's commands to every rank; returns (to apply now, left for the next step,
        refused as too large for the buffer on their own).

        Every rank must call this at every step boundary. On ranks other than 0,
        `commands` is ignored and the commands received are returned. A command that could
        never fit is refused rather than held, so it cannot block the ones after it.
        """
        buf = torch.zeros(CONTROL_BYTES, dtype=torch.uint8)
        left: list[Command] = []
        too_big: list[Command] = []
        if self.primary:
            sent: list[dict[str, Any]] = []
            size = 1  # the msgpack array header, at most 5 bytes below
            for cmd in commands:
                packed = msgpack.packb(wire.encode_message(cmd), use_bin_type=True)
                if 4 + 5 + len(packed) > CONTROL_BYTES:
                    too_big.append(cmd)
                elif left or 4 + 5 + size + len(packed) > CONTROL_BYTES:
                    left.append(cmd)  # keeps the order: the rest go next step
                else:
                    sent.append(wire.encode_message(cmd))
                    size += len(packed)
            if sent:
                body: bytes = msgpack.packb(sent, use_bin_type=True)
                buf[:4] = torch.frombuffer(bytearray(struct.pack("<I", len(body))), dtype=torch.uint8)
                buf[4 : 4 + len(body)] = torch.frombuffer(bytearray(body), dtype=torch.uint8)
        dist.broadcast(buf, src=0, group=self.control_group)
        raw = buf.numpy().tobytes()
        (length,) = struct.unpack_from("<I", raw)
        if length == 0:
            return [], left, too_big
        payloads = msgpack.unpackb(raw[4 : 4 + length], raw=False)
        return [wire.decode_command(p) for p in payloads], left, too_big
