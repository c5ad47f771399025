"""A copy of a run's training state in host memory, to roll back to: the model's parameters
and buffers, each optimizer's state (moments, step counts, param groups) and each
scheduler's, as they were at one step boundary.

The copy is a plain tree of dicts, lists and host tensors (never pickled: it does not leave
the process). On CUDA the tensors go to pinned host memory through non-blocking copies on a
side stream, which waits for the training stream first, so taking a snapshot does not stall
training; `Snapshot.ready()` says when the copies have landed, and a restore waits for them.
A restore writes back in place: the parameters keep their identity (the optimizers and any
DDP wrapper hold them), and `load_state_dict` puts each optimizer's state back onto its
parameters' devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Snapshot:
    """Training state at the step boundary before `step` (the state `step` starts from)."""

    step: int
    model: dict[str, torch.Tensor]
    optimizers: list[dict[str, Any]]
    schedulers: list[dict[str, Any]]
    nbytes: int
    events: list[torch.cuda.Event] = field(default_factory=list)

    def ready(self) -> bool:
        """Whether every device-to-host copy has landed (at once on CPU)."""
        return all(bool(e.query()) for e in self.events)

    def wait(self) -> None:
        for event in self.events:
            event.synchronize()


def state_bytes(model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> int:
    """Host bytes a snapshot of `model` and `optimizers` takes now (their tensors' sizes)."""
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    for opt in optimizers:
        for state in opt.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


class Copier:
    """Copies tensors to the host: clones on CPU; on CUDA pinned buffers filled on a side stream."""

    def __init__(self) -> None:
        self._stream: Any = None
        self.events: list[torch.cuda.Event] = []
        self.nbytes = 0

    def __call__(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._tensor(value)
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self(v) for v in value)
        return value  # numbers, strings, None: immutable

    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        self.nbytes += t.numel() * t.element_size()
        if t.device.type != "cuda":
            return t.clone()
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=t.device)
            self._stream.wait_stream(torch.cuda.current_stream(t.device))
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        with torch.cuda.stream(self._stream):
            host.copy_(t, non_blocking=True)
            t.record_stream(self._stream)  # the caching allocator must not reuse t before the copy ran
        return host

    def finish(self) -> list[torch.cuda.Event]:
        if self._stream is not None:
            event = torch.cuda.Event()
            event.record(self._stream)
            self.events.append(event)
        return self.events


def take(
    step: int, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer], schedulers: Sequence[Any] = ()
) -> Snapshot:
    """A snapshot of the state `step` starts from (take it before that step's `optimizer.step()`)."""
    copy = Copier()
    weights = {k: copy(v) for k, v in model.state_dict().items()}
    opts = [copy(opt.state_dict()) for opt in optimizers]
    scheds = [copy(s.state_dict()) for s in schedulers]
    return Snapshot(step, weights, opts, scheds, copy.nbytes, copy.finish())


def restore(
    snap: Snapshot,
    model: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any] = (),
    *,
    keep_groups: bool = False,
) -> None:
    """Put `snap` back: parameters and buffers in place, optimizer and scheduler state loaded.

    With `keep_groups` the optimizers' param-group settings (learning rate, betas, weight
    decay...) stay as they are now: the loop's schedule goes on, only the state is rewound.
    """
    snap.wait()
    if len(optimizers) != len(snap.optimizers) or len(schedulers) != len(snap.schedulers):
        raise ValueError("the snapshot was taken of other optimizers or schedulers")
    with torch.no_grad():
        model.load_state_dict(snap.model)
    for opt, state in zip(optimizers, snap.optimizers, strict=True):
        groups = list(opt.param_groups)
        # load_state_dict keeps references to what it is given for non-tensor values: give it a copy,
        # so a second restore from the same snapshot starts from the same state.
        opt.load_state_dict(Copier()(state))
        # It makes new group dicts: put the old ones back, which the probe's control, a scheduler's
        # tensor lr and the loop may hold.
        for old, new in zip(groups, opt.param_groups, strict=True):
            if not keep_groups:
                old.update({k: v for k, v in new.items() if k != "params"})
        opt.param_groups[:] = groups
    for sched, state in zip(schedulers, snap.schedulers, strict=True):
        sched.load_state_dict(Copier()(state))
