"""The run-wide tier: every step's loss and global gradient norm, whatever the sampling stride.

A step whose per-layer statistics are not sampled still has its gradients measured as a
whole: one fused norm pass over every gradient, summed. On CPU the host is the device, so
the sum, each layer's share of it and the loss are plain numbers at once, and a value near
what the detectors would flag (`Detectors.run_limits`) has the step sampled whole on the
spot. Elsewhere the two values leave in one non-blocking copy and are
read a step later, never with a sync. Values gather in a `RunBatch` and travel as one
`RunSteps` event to the publishing thread, where the detectors and the guard see each step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from gradtui.model.events import RunSteps
from gradtui.probe.amp import AmpScale
from gradtui.probe.publisher import Sampled
from gradtui.probe.stats import GradIndex, GradStats, Pending, loss_tensor, to_host

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
        layer_sq = np.bincount(index.layer_of, weights=norms * norms, minlength=stats.n)
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


class RunBatch:
    """Run-wide values of unsampled steps, gathered on the training thread."""

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._loss: list[float] = []
        self._norm: list[float] = []
        self._since = 0.0

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: int, loss: float, global_norm: float) -> bool:
        """Keep a step's values; True when the batch should go now (full, or old enough)."""
        if not self._steps:
            self._since = time.perf_counter()
        self._steps.append(step)
        self._loss.append(loss)
        self._norm.append(global_norm)
        return len(self._steps) >= BATCH_STEPS or time.perf_counter() - self._since >= BATCH_SECONDS

    def take(self) -> RunSteps | None:
        """The batch as an event (None when empty), and a fresh batch."""
        if not self._steps:
            return None
        event = RunSteps(
            step=self._steps[-1],
            steps=np.array(self._steps, np.int64),
            loss=np.array(self._loss, np.float64),
            global_norm=np.array(self._norm, np.float64),
        )
        self._steps, self._loss, self._norm = [], [], []
        return event


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
        self._runs = RunBatch()

    def sampled(self, pending: Pending) -> None:
        """A sampled step's host copy (handed over once ready, see `resolve`)."""
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
        if self._runs.add(step, loss, norm) or now:
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
            self._send(Sampled(pending.values(), pending.meta, pending.stepped_factor()))

    def flush(self) -> None:
        """Hand the gathered run-wide values over (before any later step's events)."""
        event = self._runs.take()
        if event is not None:
            self._send(event)
