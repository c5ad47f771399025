"""Backward passes seen from the watched gradients: the order the first pass fills them in
(the canaries are its two ends), and from then on a signal as each pass begins.

The signal is when the publishing thread works. Backward runs inside torch's autograd
engine with the GIL released, so Python on another thread costs it at most a share of a
core; the optimizer step and the next forward are Python calls, each of which waits while
another thread holds the GIL. Side by side in one process on the 50x128 MLP at `every=1`
(0.5-0.9 ms of publishing a step, a quiet 2-core box): 1.56x the plain step when the thread
works as soon as a step is handed over, 1.43x when it waits for backward.

One hook stays: a hook on the gradient the first pass filled first, one Python call per
backward pass. A pass that never fills that gradient (its parameter frozen or swapped) sends
no signal, and the thread goes on by its own timer (`gradtui.probe.publisher.GATE_WAIT_S`).

Every hook the probe puts on a parameter goes with `unhook`. torch keeps a wrapper around a
tensor's hooks once it has had one, and calls it at every backward pass, taking the GIL,
after the last hook is removed: left on the 102 gradients of the 50x128 MLP, wrappers cost
backward 80-150 us a pass on their own, and more while the publishing thread holds the GIL.
A post-accumulate-grad hook's wrapper cannot be taken off at all, so the probe uses none.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def _hook(param: nn.Parameter, fn: Callable[[], None]) -> RemovableHandle | None:
    """A hook called as `param`'s gradient arrives, or None where it takes none (frozen, or not a
    leaf of autograd, as under some sharding wrappers)."""
    if param.grad_fn is not None or not param.requires_grad:
        return None
    handle: RemovableHandle = param.register_hook(lambda _grad: fn())
    return handle


def unhook(tensor: torch.Tensor, handle: RemovableHandle) -> None:
    """Remove a hook from a leaf tensor (a parameter), and with its last hook torch's wrapper around
    them, which would otherwise stay and take the GIL at every backward pass."""
    handle.remove()
    hooks = tensor._backward_hooks
    if hooks is not None and not hooks and tensor.grad_fn is None:
        tensor._backward_hooks = None  # torch's setter drops the wrapper (only with no hook left)


class FillOrder:
    """The order the first backward pass after `watch` fills the watched gradients in
    (hooks watch that one pass, then go).

    Args:
        params: The watched parameters (`GradStats.params`).
    """

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = params
        self._arrived: list[int] = []
        self._hooks: list[tuple[nn.Parameter, RemovableHandle]] = []
        for i, p in enumerate(params):
            if not p.requires_grad:
                continue
            hook = _hook(p, functools.partial(self._arrive, i))
            if hook is None:
                self.close()  # an order with holes would name the wrong ends
                break
            self._hooks.append((p, hook))
        self.order: list[int] = []
        """Indices into `params`, in the order the pass filled their gradients (empty before it)."""

    def _arrive(self, i: int) -> None:
        self._arrived.append(i)

    def learned(self) -> bool:
        """Whether the order is known: after a backward pass (which ends the hooks' watch)."""
        if self._hooks and self._arrived:
            self.close()
            self.order = self._arrived
        return bool(self.order)

    def close(self) -> None:
        """Remove the hooks (if no backward pass came)."""
        for param, hook in self._hooks:
            unhook(param, hook)
        self._hooks = []


class BackwardStart:
    """Calls `signal` as each backward pass begins: when it fills the gradient the first pass
    filled first (`FillOrder.order[0]`). `active` is False where no hook could be placed."""

    def __init__(self, order: FillOrder, signal: Callable[[], None]) -> None:
        first = order.params[order.order[0]] if order.order else None
        hook = _hook(first, signal) if first is not None else None
        self._hook = (first, hook) if first is not None and hook is not None else None
        self.active = self._hook is not None

    def remove(self) -> None:
        if self._hook is not None:
            unhook(*self._hook)
            self._hook = None
        self.active = False


__all__ = ["BackwardStart", "FillOrder", "unhook"]
