"""Update ratios ||Δw||/||w||: on detail steps an optimizer pre-step hook snapshots the weights
that have a gradient, and the post-step hook measures how far the step moved them."""

from __future__ import annotations

from typing import Any

import torch

from gradtui.probe.dist import local
from gradtui.probe.stats import GradStats


class UpdateRatio:
    """Hooks on `optimizer` that measure the update of the step after `want(step)`."""

    def __init__(self, optimizer: torch.optim.Optimizer, stats: GradStats) -> None:
        self._stats = stats
        self._want: int | None = None
        self._snapshot: tuple[int, list[int], list[torch.Tensor]] | None = None
        self._result: tuple[int, torch.Tensor] | None = None
        self._hooks = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]

    def want(self, step: int) -> None:
        """Measure the coming `optimizer.step()`, reported as the update of `step`."""
        self._want = step

    def take(self) -> tuple[int, torch.Tensor] | None:
        """(step, squared update norms then squared weight norms per layer) of the last measured
        update, once; None when none is waiting."""
        out, self._result = self._result, None
        return out

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._want is None:
            return
        step, self._want = self._want, None
        params = self._stats.params
        which = [i for i, p in enumerate(params) if p.grad is not None]
        self._snapshot = (step, which, [local(params[i].detach()).clone() for i in which])

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._snapshot is None:
            return
        step, which, before = self._snapshot
        self._snapshot = None
        s = self._stats
        after = [local(s.params[i].detach()) for i in which]
        delta = torch._foreach_sub(after, before)
        idx = torch.as_tensor(s.param_layer[which], device=s.device)
        d2 = s.per_layer(s.sq_norms(delta), idx, which)
        w2 = s.per_layer(s.sq_norms(before), idx, which)
        self._result = (step, torch.cat([d2, w2]))
