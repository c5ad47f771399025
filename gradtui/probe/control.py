"""Commands on a live run: taken at the step boundary (from rank 0 on every rank), judged by
the one rule of `gradtui.model.commands`, and carried out on the optimizers, the clipping
and the pause.

A learning-rate override holds whatever the loop does. At each step boundary the probe
reads the learning rate the loop (or its scheduler) left in each param group, re-applies
the override on top of it and writes the result, which `optimizer.step()` then uses;
right after the step a post-step hook puts the loop's own value back, so a scheduler that
chains from the group's `lr` (StepLR, ExponentialLR, ReduceLROnPlateau) and a loop that
reads it never see the override.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from gradtui.model.commands import Command, ControlState, follow_schedule, respond
from gradtui.model.events import CommandResult, Event
from gradtui.probe.dist import DistContext


class Control:
    """The settings viewers can change, and the queue their commands wait in.

    Args:
        optimizers: The watched optimizers (none: learning-rate commands are refused).
        clip: The starting (mode, threshold): the loop's clipping, which `Release` returns to.
        dist: The process group context (None: one process).
        emit: Where acknowledgements go.
    """

    def __init__(
        self,
        optimizers: Sequence[torch.optim.Optimizer],
        clip: tuple[str, float],
        dist: DistContext | None,
        emit: Callable[[Event], None],
    ) -> None:
        self.optimizers = list(optimizers)
        self._groups: list[dict[str, Any]] = [g for opt in self.optimizers for g in opt.param_groups]
        owners = tuple(i for i, opt in enumerate(self.optimizers) for _ in opt.param_groups)
        self.state = ControlState(
            lrs=self._read(),
            clip_mode=clip[0],
            clip_threshold=clip[1],
            owners=owners if len(self.optimizers) > 1 else (),
            loop_clip=clip,
        )
        """The settings in force (see `ControlState`)."""
        self.commands: queue.Queue[Command] = queue.Queue(maxsize=1000)
        """Commands for the probe; applied at the next step boundary."""
        self._written: list[float | None] = [None] * len(self._groups)
        """The learning rate the probe wrote into each group (None: the loop's own is in place)."""
        self._dist = dist
        self._primary = dist is None or dist.primary
        self._held: list[Command] = []
        self._emit = emit
        self._hooks = [opt.register_step_post_hook(self._after_step) for opt in self.optimizers]

    def group_names(self) -> tuple[str, ...]:
        """A name per param group: "0", "1" for one optimizer; "opt1.0" for several."""
        if len(self.optimizers) <= 1:
            return tuple(str(i) for i in range(len(self._groups)))
        return tuple(f"opt{oi}.{gi}" for oi, opt in enumerate(self.optimizers) for gi in range(len(opt.param_groups)))

    # ------------------------------------------------------------ the step boundary

    def begin_step(self) -> None:
        """Take the learning rates the loop set since the last step and re-apply the overrides."""
        loop: list[float] = []
        schedule = self.state.schedule
        for gi, group in enumerate(self._groups):
            current = float(group["lr"])
            written = self._written[gi]
            # Still what we wrote: the loop set nothing new (or no optimizer step came to put its own back).
            loop.append(schedule[gi] if written is not None and current == written else current)
        self.state = follow_schedule(self.state, tuple(loop))
        self._write()

    def apply_pending(self, step: int) -> None:
        """Apply every command waiting now, at `step`."""
        for cmd in self.take():
            self.apply(cmd, step)

    def apply(self, cmd: Command, step: int) -> CommandResult:
        """Apply one command at `step` (or refuse it) and acknowledge it."""
        before = self.state
        self.state, result = respond(before, cmd, step)
        if result.ok:
            try:
                self._write()
            except Exception as exc:  # the monitor must never be why a run stops
                self.state = before
                with contextlib.suppress(Exception):
                    self._write()
                result = CommandResult(result.command_id, result.kind, False, step, f"could not apply: {exc}")
        self._emit(result)
        return result

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

    def wait_while_paused(self, step: int, closed: Callable[[], bool]) -> None:
        # Every rank loops here in step: each round is one command broadcast from rank 0.
        while self.state.paused and not closed():
            for cmd in self.take(wait=0.2):
                self.apply(cmd, step)

    def close(self) -> None:
        """Remove the hooks and leave the loop's own learning rates in the groups."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._put_back(range(len(self._groups)))
        self.state = replace(self.state, lrs=self.state.schedule, schedule_lrs=(), overrides=())

    # ------------------------------------------------------------ the groups

    def _read(self) -> tuple[float, ...]:
        return tuple(float(g["lr"]) for g in self._groups)

    def _write(self) -> None:
        for gi, group in enumerate(self._groups):
            if self.state.override(gi) is not None:
                _set_lr(group, self.state.lrs[gi])
                self._written[gi] = self.state.lrs[gi]
            elif self._written[gi] is not None:
                self._put_back([gi])  # released: the loop's value again

    def _put_back(self, groups: Sequence[int] | range) -> None:
        schedule = self.state.schedule
        for gi in groups:
            written = self._written[gi]
            if written is not None and float(self._groups[gi]["lr"]) == written:
                _set_lr(self._groups[gi], schedule[gi])
            self._written[gi] = None

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        first = sum(len(opt.param_groups) for opt in self.optimizers[: self._index_of(optimizer)])
        self._put_back(range(first, first + len(optimizer.param_groups)))

    def _index_of(self, optimizer: Any) -> int:
        for i, opt in enumerate(self.optimizers):
            if opt is optimizer:
                return i
        return 0


def _set_lr(group: dict[str, Any], value: float) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value
