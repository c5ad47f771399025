"""A copy of a run's training state in host memory, to roll back to: the model's parameters
and buffers, each optimizer's state (moments, step counts, param groups) and each
scheduler's, as they were at one step boundary.

The copy is a plain tree of dicts, lists and host tensors (never pickled: it does not leave
the process). On CUDA the tensors go to pinned host memory through non-blocking copies on a
side stream, which waits for the training stream first, so taking a snapshot does not stall
training; `Snapshot.ready()` says when the copies have landed, and a restore waits for them.
Tensors on the `meta` device (weights offloaded elsewhere, as accelerate leaves them) hold
no values and are left out.

A snapshot knows whether what it holds is finite: one fused check on the device before the
copies, whose flags travel to the host with them (read once landed: no sync). And it knows
the shape of the run it was taken of (`Layout`): a restore first checks that the run still
has that shape (the same parameters in the same groups, the same tensors with the same
shapes) and touches nothing when it has not (`Stale`), so a rollback is all or nothing.
A restore writes back in place: the parameters keep their identity (the optimizers and any
DDP wrapper hold them), and `load_state_dict` puts each optimizer's state back onto its
parameters' devices.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from gradtui.probe.amp import any_nonfinite
from gradtui.probe.dist import local


class Stale(ValueError):
    """The run has changed shape since the snapshot: it cannot be restored (nothing was touched)."""


class Layout(NamedTuple):
    """The shape of a run a snapshot fits: its model tensors by name, and each optimizer's
    parameters, group by group (held weakly: a snapshot does not keep a dropped parameter alive)."""

    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]]
    groups: tuple[tuple[tuple[weakref.ref[torch.Tensor], ...], ...], ...]


class Finite(NamedTuple):
    """What a snapshot's finiteness check found."""

    weights: bool
    """The parameters are finite (never legitimately not: a state with a NaN weight is poisoned)."""
    rest: bool
    """The optimizer state and the checked buffers are finite too."""


@dataclass
class Snapshot:
    """Training state at the step boundary before `step` (the state `step` starts from)."""

    step: int
    model: dict[str, Any]
    optimizers: list[dict[str, Any]]
    schedulers: list[dict[str, Any]]
    nbytes: int
    layout: Layout | None = None
    flags: torch.Tensor | None = None
    """On the host once landed: (non-finite weights, non-finite rest) as 0/1."""
    events: list[torch.cuda.Event] = field(default_factory=list)

    def ready(self) -> bool:
        """Whether every device-to-host copy has landed (at once on CPU)."""
        return all(bool(e.query()) for e in self.events)

    def wait(self) -> None:
        for event in self.events:
            event.synchronize()

    def finite(self) -> Finite:
        """Whether what the snapshot holds is finite (waits for the copies to land)."""
        if self.flags is None:
            return Finite(True, True)
        self.wait()
        bad_weights, bad_rest = self.flags.tolist()
        return Finite(not bad_weights, not bad_rest)


def live(model: nn.Module) -> dict[str, Any]:
    """`model.state_dict()` without the tensors on `meta` (no values to copy or restore)."""
    return {k: v for k, v in model.state_dict().items() if not (isinstance(v, torch.Tensor) and v.is_meta)}


def tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a tree of dicts, lists and tuples (an optimizer's state keeps some in lists)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_in(v)


def _nbytes(t: torch.Tensor) -> int:
    return 0 if t.is_meta else t.numel() * t.element_size()


def state_bytes(model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> int:
    """Host bytes a snapshot of `model` and `optimizers` takes now (every tensor they hold)."""
    total = sum(_nbytes(t) for t in tensors_in(model.state_dict()))
    for opt in optimizers:
        total += sum(_nbytes(t) for t in tensors_in(list(opt.state.values())))
    return total


def layout(state: dict[str, Any], optimizers: Sequence[torch.optim.Optimizer]) -> Layout:
    """The layout of a run whose model's `live` state dict is `state`."""
    tensors = {k: (tuple(v.shape), v.dtype) for k, v in state.items() if isinstance(v, torch.Tensor)}
    groups = tuple(
        tuple(tuple(weakref.ref(p) for p in g["params"]) for g in opt.param_groups) for opt in optimizers
    )
    return Layout(tensors, groups)


def changed(snap: Snapshot, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> str | None:
    """How the run differs now from the one `snap` was taken of (None: it can be restored)."""
    was = snap.layout
    if was is None:
        return None
    now = layout(live(model), optimizers)
    for name in was.tensors.keys() - now.tensors.keys():
        return f"'{name}' is gone from the model"
    for name in now.tensors.keys() - was.tensors.keys():
        return f"'{name}' was added to the model"
    for name, (shape, dtype) in now.tensors.items():
        if was.tensors[name] != (shape, dtype):
            old_shape, old_dtype = was.tensors[name]
            return f"'{name}' is {_shape(shape)} {dtype} now, {_shape(old_shape)} {old_dtype} then"
    if len(now.groups) != len(was.groups):
        return f"{len(now.groups)} optimizers now, {len(was.groups)} then"
    for oi, (groups, old) in enumerate(zip(now.groups, was.groups, strict=True)):
        if len(groups) != len(old):
            return f"optimizer {oi} has {len(groups)} param groups now, {len(old)} then"
        for gi, (params, before) in enumerate(zip(groups, old, strict=True)):
            if len(params) != len(before):
                return f"param group {gi} of optimizer {oi} holds {len(params)} parameters now, {len(before)} then"
            if any(p() is not q() for p, q in zip(params, before, strict=True)):
                return f"param group {gi} of optimizer {oi} holds other parameters now"
    return None


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


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
        self.nbytes += _nbytes(t)
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


def finite_buffers(model: nn.Module) -> frozenset[str]:
    """The buffers whose values are all finite now: the ones a snapshot checks (a model may keep
    -inf in a buffer on purpose, an attention mask; a running mean that turns NaN is poisoned)."""
    return frozenset(
        name
        for name, b in model.named_buffers()
        if not b.is_meta and b.is_floating_point() and bool(torch.isfinite(b).all())
    )


def take(
    step: int,
    model: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any] = (),
    *,
    check_buffers: Collection[str] = (),
) -> Snapshot:
    """A snapshot of the state `step` starts from (take it before that step's `optimizer.step()`).

    `check_buffers` names the buffers its finiteness check covers besides the parameters and
    the optimizers' state (`finite_buffers`)."""
    weights = [local(p.detach()) for p in model.parameters() if not p.is_meta]
    rest = [local(b) for name, b in model.named_buffers() if name in check_buffers and not b.is_meta]
    for opt in optimizers:
        rest += [local(t) for t in tensors_in(list(opt.state.values())) if t.is_floating_point() and not t.is_meta]
    device = weights[0].device if weights else torch.device("cpu")
    # Checked before the copies are queued: on CUDA the flags then ride the same side stream.
    flags = torch.stack([any_nonfinite(t, device).reshape(()) for t in (weights, rest)]).to(torch.uint8)
    copy = Copier()
    host_flags = copy(flags)
    now = live(model)
    state = {k: copy(v) for k, v in now.items()}
    opts = [copy(opt.state_dict()) for opt in optimizers]
    scheds = [copy(s.state_dict()) for s in schedulers]
    nbytes = copy.nbytes - _nbytes(flags)
    return Snapshot(step, state, opts, scheds, nbytes, layout(now, optimizers), host_flags, copy.finish())


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

    Raises:
        Stale: the run no longer has the shape `snap` was taken of; nothing was touched.
    """
    if len(optimizers) != len(snap.optimizers) or len(schedulers) != len(snap.schedulers):
        raise Stale("the snapshot was taken of other optimizers or schedulers")
    why = changed(snap, model, optimizers)
    if why is not None:
        raise Stale(why)
    snap.wait()
    # Every check torch's loaders make (the groups' sizes, the tensors' names and shapes) has been
    # made above, so nothing fails half way: each loader raises only after it has copied what it could.
    for opt, state in zip(optimizers, snap.optimizers, strict=True):
        _load(opt, state, keep_groups)
    with torch.no_grad():
        # Its own loader, not copies into state_dict()'s tensors: an FSDP model's state dict is not
        # its parameters' memory, and a module's extra state has its own setter.
        model.load_state_dict(snap.model, strict=False)  # strict=False: the meta tensors left out stay
    for sched, state in zip(schedulers, snap.schedulers, strict=True):
        sched.load_state_dict(Copier()(state))


def _load(opt: torch.optim.Optimizer, state: dict[str, Any], keep_groups: bool) -> None:
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


class OptimizerCopy(NamedTuple):
    """One optimizer's parameters and state, as `copy_optimizer` found them."""

    params: list[torch.Tensor]
    values: list[torch.Tensor]
    state: dict[str, Any]
    events: list[torch.cuda.Event]


def copy_optimizer(opt: torch.optim.Optimizer) -> OptimizerCopy:
    """A copy of the parameters `opt` steps and of its state (before a step that must not count)."""
    params = [p for g in opt.param_groups for p in g["params"] if not p.is_meta]
    copy = Copier()
    values = [copy(p) for p in params]
    state = copy(opt.state_dict())
    return OptimizerCopy(params, values, state, copy.finish())


def put_back(saved: OptimizerCopy, opt: torch.optim.Optimizer) -> None:
    """Undo the steps `opt` took since `copy_optimizer` (its groups' settings stay as they are)."""
    for event in saved.events:
        event.synchronize()
    _load(opt, saved.state, keep_groups=True)
    with torch.no_grad():
        for p, value in zip(saved.params, saved.values, strict=True):
            p.copy_(value)
