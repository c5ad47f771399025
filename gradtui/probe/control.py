"""Commands on a live run: taken at the step boundary (from rank 0 on every rank), judged by
the one rule of `gradtui.model.commands`, and carried out on the optimizer, its scheduler,
the clipping and the pause."""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import torch

from gradtui.model.commands import Command, ControlState, respond
from gradtui.model.events import CommandResult, Event
from gradtui.probe.dist import DistContext


class Control:
    """The settings viewers can change, and the queue their commands wait in.

    Args:
        optimizer: The watched optimizer (None: learning-rate commands are refused).
        scheduler: Its LR scheduler, if any: a learning-rate change also scales what the
            schedule computes from, so the change survives the schedule's next step.
        clip: The starting (mode, threshold).
        dist: The process group context (None: one process).
        emit: Where acknowledgements go.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any,
        clip: tuple[str, float],
        dist: DistContext | None,
        emit: Callable[[Event], None],
    ) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.clip_mode, self.clip_threshold = clip
        self.paused = False
        self.commands: queue.Queue[Command] = queue.Queue(maxsize=1000)
        """Commands for the probe; applied at the next step boundary."""
        self._dist = dist
        self._primary = dist is None or dist.primary
        self._held: list[Command] = []
        self._emit = emit

    def lrs(self) -> tuple[float, ...]:
        if self.optimizer is None:
            return ()
        return tuple(float(g["lr"]) for g in self.optimizer.param_groups)

    def state(self) -> ControlState:
        return ControlState(self.lrs(), self.clip_mode, self.clip_threshold, self.paused)

    def take(self, wait: float | None = None) -> list[Command]:
        """Commands to apply now: this process's queue, or rank 0's on every rank."""
        mine: list[Command] = list(self._held)
        self._held = []
        if self._primary and (wait is not None or not self.commands.empty()):
            try:
                if wait is not None and not mine:
                    mine.append(self.commands.get(timeout=wait))
                while True:
                    mine.append(self.commands.get_nowait())
            except queue.Empty:
                pass
        if self._dist is None:
            return mine
        now, self._held = self._dist.broadcast_commands(mine)
        return now

    def apply_pending(self, step: int) -> None:
        """Apply every command waiting now, at `step`."""
        for cmd in self.take():
            self.apply(cmd, step)

    def apply(self, cmd: Command, step: int) -> CommandResult:
        """Apply one command at `step` (or refuse it) and acknowledge it."""
        before = self.state()
        after, result = respond(before, cmd, step)
        if result.ok:
            self._enact(before, after)
        self._emit(result)
        return result

    def wait_while_paused(self, step: int, closed: Callable[[], bool]) -> None:
        # Every rank loops here in step: each round is one command broadcast from rank 0.
        while self.paused and not closed():
            for cmd in self.take(wait=0.2):
                self.apply(cmd, step)

    def _enact(self, before: ControlState, after: ControlState) -> None:
        if self.optimizer is not None:
            for gi, (old, new) in enumerate(zip(before.lrs, after.lrs, strict=True)):
                if new == old:
                    continue
                group = self.optimizer.param_groups[gi]
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(new)
                else:
                    group["lr"] = new
                if old > 0:
                    self._rescale_schedule(gi, new / old)
        self.clip_mode, self.clip_threshold = after.clip_mode, after.clip_threshold
        self.paused = after.paused

    def _rescale_schedule(self, group_index: int, ratio: float) -> None:
        """Scale what a scheduler computes the LR from, so that its next step keeps the change.

        Closed-form schedules (LambdaLR, warm-up, OneCycle, cosine) recompute the LR from
        `base_lrs` or the group's `initial_lr`/`max_lr`/`min_lr`; chained ones from the
        group's `lr`, already set.
        """
        assert self.optimizer is not None
        group = self.optimizer.param_groups[group_index]
        for key in ("initial_lr", "max_lr", "min_lr"):
            if isinstance(group.get(key), (int, float)) and not isinstance(group.get(key), bool):
                group[key] = group[key] * ratio
        base = getattr(self.scheduler, "base_lrs", None)
        if isinstance(base, list) and group_index < len(base):
            base[group_index] = base[group_index] * ratio
