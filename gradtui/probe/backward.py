"""Backward passes seen from the watched gradients: the order the first pass fills them in
(the canaries are its two ends), and from then on a signal as each pass begins.

The signal is when the publishing thread works. Backward runs inside torch's autograd
engine with the GIL released, so Python on another thread costs it at most a share of a
core; the optimizer step and the next forward are Python calls, each of which waits while
another thread holds the GIL. Side by side in one process on the 50x128 MLP at `every=1`
(0.5-0.9 ms of publishing a step, a quiet 2-core box): 1.56x the plain step when the thread
works as soon as a step is handed over, 1.43x when it waits for backward.

One hook stays: a post-accumulate-grad hook on the gradient the first pass filled first,
one Python call per backward pass. A pass that never fills that gradient (its parameter
frozen or swapped) sends no signal, and the thread goes on by its own timer
(`gradtui.probe.publisher.GATE_WAIT_S`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn


def _hook(param: nn.Parameter, fn: Callable[[nn.Parameter], None]) -> Any:
    """A post-accumulate-grad hook, or None where the parameter takes none (not a leaf of
    autograd, as under some sharding wrappers)."""
    try:
        return param.register_post_accumulate_grad_hook(fn)
    except RuntimeError:
        return None


class FillOrder:
    """The order the first backward pass after `watch` fills the watched gradients in
    (post-accumulate-grad hooks watch that one pass, then go).

    Args:
        params: The watched parameters (`GradStats.params`).
    """

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = params
        self._arrived: list[int] = []
        self._hooks: list[Any] = []
        for i, p in enumerate(params):
            if not p.requires_grad:
                continue
            hook = _hook(p, functools.partial(self._arrive, i))
            if hook is None:
                self.close()  # an order with holes would name the wrong ends
                break
            self._hooks.append(hook)
        self.order: list[int] = []
        """Indices into `params`, in the order the pass filled their gradients (empty before it)."""

    def _arrive(self, i: int, _param: nn.Parameter) -> None:
        self._arrived.append(i)

    def learned(self) -> bool:
        """Whether the order is known: after a backward pass (which ends the hooks' watch)."""
        if self._hooks and self._arrived:
            self.close()
            self.order = self._arrived
        return bool(self.order)

    def close(self) -> None:
        """Remove the hooks (if no backward pass came)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


class BackwardStart:
    """Calls `signal` as each backward pass begins: when it fills the gradient the first pass
    filled first (`FillOrder.order[0]`). `active` is False where no hook could be placed."""

    def __init__(self, order: FillOrder, signal: Callable[[], None]) -> None:
        first = order.params[order.order[0]] if order.order else None
        self._hook = _hook(first, lambda _p: signal()) if first is not None else None
        self.active = self._hook is not None

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.active = False


__all__ = ["BackwardStart", "FillOrder"]
