"""Update ratios ||Δw||/||w||: on detail steps `mon.step` snapshots the weights that have a
gradient (they are what the coming step starts from, also when the loop steps with a closure
that calls `mon.step` inside `optimizer.step`), and each watched optimizer's post-step hook
measures how far its step moved its own parameters; with several optimizers the results add
up per layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gradtui.probe.dist import local
from gradtui.probe.stats import GradStats, to_device


class UpdateRatio:
    """Measures the update of the optimizer steps that follow `want(step)`."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], stats: GradStats) -> None:
        self._stats = stats
        index = {id(p): i for i, p in enumerate(stats.params)}
        self._owned: dict[int, list[int]] = {
            id(opt): sorted({index[id(p)] for g in opt.param_groups for p in g["params"] if id(p) in index})
            for opt in optimizers
        }
        self._step: int | None = None
        self._before: dict[int, torch.Tensor] = {}
        """Parameter index -> its weights at `want`, until its optimizer has stepped."""
        self._sum: torch.Tensor | None = None
        self._hooks = [opt.register_step_post_hook(self._post_step) for opt in optimizers]

    def want(self, step: int) -> None:
        """Snapshot the weights now: the coming `optimizer.step()` calls are the update of `step`."""
        params = self._stats.params
        self._step = step
        self._sum = None
        self._before = {i: local(p.detach()).clone() for i, p in enumerate(params) if p.grad is not None}

    def take(self) -> tuple[int, torch.Tensor] | None:
        """(step, squared update norms then squared weight norms per layer) of the last measured
        update, once; None when none is waiting."""
        if self._sum is None or self._step is None:
            return None
        out = (self._step, self._sum)
        self._sum, self._step, self._before = None, None, {}
        return out

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._before:
            return  # no detail step is waiting for its update (most steps)
        which = [i for i in self._owned.get(id(optimizer), ()) if i in self._before]
        if not which:
            return
        before = [self._before.pop(i) for i in which]
        s = self._stats
        after = [local(s.params[i].detach()) for i in which]
        idx = to_device(s.param_layer[which], s.device)
        w2 = s.per_layer(s.sq_norms(before), idx, which)
        torch._foreach_sub_(before, after)  # the snapshot is ours: the update in its place, no new copy
        d2 = s.per_layer(s.sq_norms(before), idx, which)
        both = torch.cat([d2, w2])
        self._sum = both if self._sum is None else self._sum + both
