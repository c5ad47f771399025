"""The run-wide tier: every step's loss and global gradient norm, whatever the sampling stride.

A step whose per-layer statistics are not sampled still has its gradients measured as a
whole: one fused norm pass over every gradient, summed. On CPU the host is the device, so
the sum, each layer's share of it and the loss are plain numbers at once, and a value near
what the detectors would flag (`Detectors.run_limits`) has the step sampled whole on the
spot. Elsewhere the two values leave in one non-blocking copy and are
read a step later, never with a sync. Values gather in a `RunBatch` and travel as one
`RunSteps` event to the publishing thread, where the detectors and the guard see each step.

On CPU a pass over every gradient costs a Python call per tensor and a read of every value
(0.4-0.8 ms on the benchmark models, 2-5% of their step). Where the overhead budget cannot
pay for it (`Sampler.canaries`), an unsampled step measures `Canaries` instead: the layer
whose gradients backward fills last and the one it fills first. The first is the input end:
backward carries a non-finite value from anywhere above down to it, and exploding gradients
grow most there; the second is the output end, nearest the loss. Each is screened against its
own limit, the loss against the loss's, and a step that looks unusual on either is sampled
whole on the spot, so the detectors judge it with every layer. Such steps travel with the
loss only (`RunSteps.global_norm` None): a norm over some layers is not the global norm.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from gradtui.model.detectors import Limits
from gradtui.model.events import RunSteps
from gradtui.probe.amp import AmpScale
from gradtui.probe.backward import FillOrder
from gradtui.probe.budget import Sampler
from gradtui.probe.layers import grad_values
from gradtui.probe.publisher import Sampled
from gradtui.probe.stats import GradIndex, GradStats, Pending, exact_overflow, host_loss, loss_tensor, to_host

BATCH_STEPS = 32
"""Steps gathered into one `RunSteps` event at most."""
BATCH_SECONDS = 0.25
"""... and at most this long, so that a viewer's charts follow a slow run live."""


class RunPending:
    """One step's run-wide values on their way to the host (a non-blocking copy on CUDA)."""

    def __init__(self, step: int, vec: torch.Tensor) -> None:
        self.step = step
        self.host, self._event = to_host(vec)

    def ready(self) -> bool:
        return self._event is None or bool(self._event.query())

    def values(self) -> tuple[float, float]:
        """(global norm, loss)."""
        if self._event is not None:
            self._event.synchronize()
        total_sq, loss = self.host.tolist()
        return math.sqrt(total_sq) if total_sq >= 0 else math.nan, loss


class Measured(NamedTuple):
    """An unsampled step's gradients, as far as the host has them now."""

    global_norm: float
    """The L2 norm of every gradient (unscaled); NaN when it is read a step later (`device`)."""
    layer_sq: np.ndarray | None
    """Per layer, the squared gradient norm, where the host has it at no extra cost (CPU)."""
    device: torch.Tensor | None
    """Else: (squared global norm, loss) on the device, to copy to the host."""


def measure(
    stats: GradStats,
    grads: list[torch.Tensor],
    index: GradIndex,
    loss: torch.Tensor | float | None,
    scale: AmpScale | None,
) -> Measured:
    """A step's global gradient norm. Under torch.distributed the norm is global (one all-reduce,
    on every rank at the same steps) and the loss rank 0's."""
    if stats.fast_cpu and scale is None:
        if not grads:
            return Measured(0.0, np.zeros(stats.n), None)
        # One fused call: in a training loop (right after backward) it beats the per-layer split of
        # `cpu_sq_norms` (50x128 MLP: 0.56 vs 0.88 ms; 12x512: 0.87 vs 0.98). Its per-tensor norms
        # give each layer's for a bincount more (a few us): a layer's jump is seen between samples too.
        norms = torch.stack(torch._foreach_norm(grads)).to(torch.float64).numpy()
        layer_sq = np.bincount(index.layer_of, weights=exact_overflow(grads, norms * norms), minlength=stats.n)
        return Measured(math.sqrt(float(layer_sq.sum())), layer_sq, None)
    which = index.which
    if stats.dist is not None:
        sq = stats.global_norm(grads, which).square().reshape(1)
    elif grads:
        sq = stats.sq_norms(grads).sum().reshape(1)
    else:
        sq = torch.zeros(1, dtype=stats.acc, device=stats.device)
    if scale is not None:
        sq = sq / (scale.factor * scale.factor)
    if stats.device.type == "cpu" and stats.dist is None:
        return Measured(math.sqrt(float(sq)), None, None)
    return Measured(math.nan, None, torch.cat([sq.to(stats.acc), loss_tensor(loss, stats.device, stats.acc)]))


class Canaries:
    """The layers an unsampled step measures where a pass over every gradient costs too much:
    the layer of the gradient that the first backward pass fills last, and of the one it fills
    first.

    Args:
        order: The first backward pass's fill order of the watched parameters.
        param_layer: The layer of each watched parameter.
    """

    def __init__(self, order: FillOrder, param_layer: np.ndarray) -> None:
        self._order = order
        self._param_layer = param_layer
        self.layers = np.zeros(0, np.int64)
        """The canary layers (indices into the watched layers)."""
        self._tensors: list[nn.Parameter] = []
        self._slot: list[int] = []
        """For each of `_tensors`, its layer's position in `layers`."""
        self._limits: Limits | None = None
        self._screens: list[float] = []

    def ready(self) -> bool:
        """Whether the canaries are known: after a backward pass."""
        if not self._tensors and self._order.learned():
            arrived = self._order.order
            ends = (self._param_layer[arrived[-1]], self._param_layer[arrived[0]])
            self.layers = np.array(sorted({int(x) for x in ends}), np.int64)
            for i, p in enumerate(self._order.params):
                where = np.flatnonzero(self.layers == self._param_layer[i])
                if where.size and p.requires_grad:
                    self._tensors.append(p)
                    self._slot.append(int(where[0]))
        return bool(self._tensors)

    def measure(self) -> list[float] | None:
        """Each canary layer's squared gradient norm; None when one has no gradient now (frozen,
        swapped: the step is then measured whole). Python floats: this runs at every unsampled
        step, where a NumPy call on two values costs more than the arithmetic."""
        grads = [p.grad for p in self._tensors]
        if any(g is None for g in grads):
            return None
        grads = [grad_values(g) for g in grads]  # type: ignore[arg-type]  # made with create_graph, complex
        out = [0.0] * len(self.layers)
        for slot, norm in zip(self._slot, torch._foreach_norm(grads), strict=True):  # type: ignore[arg-type]
            value = float(norm)
            out[slot] += value * value
        return out

    def screens(self, limits: Limits) -> list[float]:
        """The canary layers' squared norm limits under `limits` (kept while `limits` is the same object:
        the detectors replace it whole)."""
        if limits is not self._limits:
            self._limits = limits
            self._screens = np.square(limits.layers[self.layers]).tolist()
        return self._screens


class RunBatch:
    """Run-wide values of unsampled steps, gathered on the training thread."""

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._loss: list[float] = []
        self._norm: list[float] = []
        self._canary_norm: list[list[float]] = []
        self._canaries: np.ndarray | None = None
        """The canary layers the batch's steps measured (None: every gradient)."""
        self._since = 0.0

    def __len__(self) -> int:
        return len(self._steps)

    def fits(self, canaries: np.ndarray | None) -> bool:
        """Whether a step measured so can join this batch (one event, one way of measuring)."""
        if not self._steps or canaries is self._canaries:
            return True
        return canaries is not None and self._canaries is not None and np.array_equal(canaries, self._canaries)

    def add(self, step: int, loss: float, global_norm: float, canaries: np.ndarray | None = None) -> bool:
        """Keep a step's values: its global norm, or with `canaries` (see `fits`) their squared
        norms in its place. True when the batch should go now (full, or old enough)."""
        if not self._steps:
            self._since = time.perf_counter()
            self._canaries = canaries
        self._steps.append(step)
        self._loss.append(loss)
        if canaries is None:
            self._norm.append(global_norm)
        return len(self._steps) >= BATCH_STEPS or time.perf_counter() - self._since >= BATCH_SECONDS

    def add_canaries(self, layer_sq: list[float]) -> None:
        """The canary layers' squared norms of the step just added."""
        self._canary_norm.append(layer_sq)

    def take(self) -> RunSteps | None:
        """The batch as an event (None when empty), and a fresh batch. Only whole rows: a signal
        handler may take it while the step it interrupted is half added (`Handover.salvage`)."""
        canaries = self._canaries
        n = min(len(self._steps), len(self._loss), len(self._norm if canaries is None else self._canary_norm))
        steps, loss, norm, canary_norm = self._steps[:n], self._loss[:n], self._norm[:n], self._canary_norm[:n]
        self._steps, self._loss, self._norm, self._canary_norm = [], [], [], []
        if not n:
            return None
        return RunSteps(
            step=steps[-1],
            steps=np.array(steps, np.int64),
            loss=np.array(loss, np.float64),
            global_norm=np.array(norm, np.float64) if canaries is None else None,
            canary_layers=canaries,
            canary_norm=np.sqrt(np.array(canary_norm, np.float64)) if canaries is not None else None,
        )


class Handover:
    """Step results on their way from the training thread to the publishing thread, in step order:
    sampled steps' host copies, and unsampled steps' run-wide values gathered into `RunSteps`.

    Args:
        send: Hands an item (`Sampled`, `RunSteps`) to the publishing thread.
        unusual: Whether a (global norm, loss, per-layer squared norms or None) read a step late
            calls for a closer look.
        look_closer: Called then (the sampler samples the next step).
    """

    def __init__(
        self,
        send: Callable[[object], None],
        unusual: Callable[[float, float, np.ndarray | None], bool],
        look_closer: Callable[[], None],
    ) -> None:
        self._send = send
        self._unusual = unusual
        self._look_closer = look_closer
        self._pending: list[Pending | RunPending] = []
        self._gather: set[Pending] = set()
        """The pending sampled steps that may gather."""
        self._runs = RunBatch()

    def sampled(self, pending: Pending, gather: bool = False) -> None:
        """A sampled step's host copy (handed over once ready, see `resolve`); `gather`: its judgement
        may wait for the next sampled steps' (`Publisher.put`)."""
        if gather:
            self._gather.add(pending)
        self._pending.append(pending)

    def last_sampled(self) -> Pending | None:
        """The latest step's host copy if that step was sampled (its optimizer step adds to it)."""
        last = self._pending[-1] if self._pending else None
        return last if isinstance(last, Pending) else None

    def deferred(self, step: int, vec: torch.Tensor) -> None:
        """An unsampled step's (squared global norm, loss) on the device, read once it has landed."""
        self._pending.append(RunPending(step, vec))

    def run(self, step: int, loss: float, norm: float, now: bool = False) -> None:
        """An unsampled step's run-wide values on the host; `now`: hand the batch over at once."""
        if not self._runs.fits(None):
            self.flush()
        if self._runs.add(step, loss, norm) or now:
            self.flush()

    def canaries(self, step: int, loss: float, layers: np.ndarray, layer_sq: list[float]) -> None:
        """An unsampled step measured by its canary `layers` (their squared norms `layer_sq`)."""
        if not self._runs.fits(layers):
            self.flush()
        full = self._runs.add(step, loss, math.nan, layers)
        self._runs.add_canaries(layer_sq)
        if full:
            self.flush()

    def resolve(self, block: bool) -> None:
        """Hand over what has landed (everything when `block`), in step order."""
        while self._pending and (block or self._pending[0].ready()):
            pending = self._pending.pop(0)
            if isinstance(pending, RunPending):
                norm, loss = pending.values()
                unusual = self._unusual(norm, loss, None)
                if unusual:
                    self._look_closer()
                self.run(pending.step, loss, norm, now=unusual)
                continue
            self.flush()
            gather = pending in self._gather
            self._gather.discard(pending)
            self._send(Sampled(pending.values(), pending.meta, pending.stepped_factor(), gather))

    def salvage(self) -> RunSteps | None:
        """From a fatal signal's handler: the gathered run-wide values not handed over yet, as one
        event, for the record's end (None when there are none). Takes no lock; never raises."""
        try:
            return self._runs.take()
        except Exception:
            return None

    def flush(self) -> None:
        """Hand the gathered run-wide values over (before any later step's events)."""
        event = self._runs.take()
        if event is not None:
            self._send(event)


class RunWide:
    """The run-wide tier at a step whose per-layer statistics are not sampled: measure its
    gradients (all of them, or the canaries), screen the values, hand them over.

    Args:
        stats: The probe's gradient statistics.
        sampler: Which steps are sampled (and whether the budget pays for a pass over all).
        send: Hands an item to the publishing thread.
        limits: The detectors' screens now (`Detectors.run_limits`, replaced whole).
        primary: This process reports (rank 0).
        order: The first backward pass's fill order (where the canaries come from).
    """

    def __init__(
        self,
        stats: GradStats,
        sampler: Sampler,
        send: Callable[[object], None],
        limits: Callable[[], Limits],
        primary: bool,
        order: FillOrder,
    ) -> None:
        self._stats = stats
        self._sampler = sampler
        self._limits = limits
        self._primary = primary
        self.handover = Handover(send, self.unusual, sampler.sample_next)
        """Step results on their way to the publishing thread, in step order."""
        self._squared: tuple[Limits | None, np.ndarray] = (None, np.zeros(0))
        """The limits last screened with, and their per-layer limits squared."""
        self._screen = sampler.adaptive and stats.dist is None
        """Values may have their step sampled whole (with the budget only: a fixed stride stays exact,
        and under torch.distributed every rank must sample the same steps)."""
        self.canaries = Canaries(order, stats.param_layer) if self._screen and stats.fast_cpu else None

    def canary_step(self, step: int, value: float | None) -> bool | None:
        """A step measured by its canaries where the budget asks for it: whether it looks unusual
        (then it is to be sampled whole); None where it is to be measured whole instead."""
        canaries = self.canaries
        if canaries is None or not self._sampler.canaries or not canaries.ready():
            return None
        layer_sq = canaries.measure()
        if layer_sq is None:
            return None
        loss = value if value is not None else math.nan
        limits = self._limits()
        if math.isinf(loss) or loss >= limits.loss or not math.isfinite(sum(layer_sq)):
            return True
        if any(sq >= screen for sq, screen in zip(layer_sq, canaries.screens(limits), strict=True)):
            return True
        if self._primary:
            self.handover.canaries(step, loss, canaries.layers, layer_sq)
        return False

    def full_step(
        self,
        step: int,
        loss: Any,
        value: float | None,
        index: GradIndex,
        grads: list[torch.Tensor],
        scale: AmpScale | None,
    ) -> tuple[float, bool]:
        """A step measured whole: its global norm (NaN when it is read a step later) and whether it
        looks unusual enough to be sampled whole now."""
        began = time.perf_counter()
        got = measure(self._stats, grads, index, loss, scale)
        if got.device is not None:
            if self._primary:  # the other ranks took part in the all-reduce; rank 0 reports
                self.handover.deferred(step, got.device)
            return math.nan, False
        self._sampler.full_pass(time.perf_counter() - began)
        total = got.global_norm
        if value is None:
            value = host_loss(loss)
        loss_now = value if value is not None else math.nan
        if self._screen and self.unusual(total, loss_now, got.layer_sq):
            return total, True
        if self._primary:
            self.handover.run(step, loss_now, total)
        return total, False

    def calm(self, step: int, layer_sq: np.ndarray, loss: float | None) -> bool:
        """Whether a sampled step's judgement may wait for the next sampled steps' (`Publisher.put`):
        sampled at every step, no blow-up alarm lately, and nothing the detectors might flag. What
        they judge starts things at once (sampling every step, a capture), as from a step judged alone."""
        if self._sampler.stride > 1 or self._sampler.troubled(step):
            return False
        total = math.sqrt(float(layer_sq.sum()))
        return not self.unusual(total, loss if loss is not None else math.nan, layer_sq)

    def unusual(self, norm: float, loss: float, layer_sq: np.ndarray | None) -> bool:
        """A norm or loss the detectors might flag (a screen: they judge it), or non-finite."""
        limits = self._limits()
        if not math.isfinite(norm) or norm >= limits.global_norm or math.isinf(loss) or loss >= limits.loss:
            return True
        if layer_sq is None:
            return False
        if limits is not self._squared[0]:  # the detectors replace their limits whole
            self._squared = (limits, limits.layers * limits.layers)
        return bool((layer_sq >= self._squared[1]).any())
