"""Commands on a live run: taken at the step boundary (from rank 0 on every rank), judged by
the one rule of `gradtui.model.commands`, and carried out on the optimizers, the clipping
and the pause.

A learning-rate override holds whatever the loop does. At each step boundary the probe
reads the learning rate the loop (or its scheduler) left in each param group, re-applies
the override on top of it and writes the result, which `optimizer.step()` then uses;
right after the step a post-step hook puts the loop's own value back, so a scheduler that
chains from the group's `lr` (StepLR, ExponentialLR, ReduceLROnPlateau) and a loop that
reads it never see the override.

Commands from one step boundary are judged one after another (the last learning rate
wins) and written to the optimizers once; at most `MAX_PER_STEP` are taken per step, so a
flood can only delay commands, never slow a step by more than a bounded amount. A pause
made by a viewer lasts while that viewer is connected and `PAUSE_LEASE` seconds after it
leaves; then training resumes, and the acknowledgement on the record says why.

The control follows the optimizers' param groups as they change: a group added mid-run
(`add_param_group`, as progressive unfreezing does) joins at the next step boundary with the
loop's learning rate and no override (commands from then on act on it too), and a group
dict replaced in place (`load_state_dict`) keeps the override of the one it replaces. The
record keeps the groups the run started with (`recorded`): a viewer and a record reader
know those from `RunStart`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import torch

from gradtui.model.commands import (
    PAUSE_LEASE,
    Capture,
    Command,
    ControlState,
    Rollback,
    SetPaused,
    command_kind,
    follow_schedule,
    respond,
)
from gradtui.model.events import CommandResult, Event, LogLine
from gradtui.probe.dist import CONTROL_BYTES, DistContext
from gradtui.wire.queue import CommandQueue

log = logging.getLogger("gradtui")

MAX_PER_STEP = 64
"""Commands applied at one step boundary; the rest wait for the next."""


class Viewers(Protocol):
    """What the control needs of the server: whether a viewer is still here, and where to say who paused."""

    def present(self, name: str) -> bool: ...

    def paused_by(self, name: str | None) -> None: ...


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
        self._counts = [len(opt.param_groups) for opt in self.optimizers]
        self._recorded = len(self._groups)
        """The param groups the run started with: the ones its events carry."""
        owners = tuple(i for i, opt in enumerate(self.optimizers) for _ in opt.param_groups)
        self.state = ControlState(
            lrs=self._read(),
            clip_mode=clip[0],
            clip_threshold=clip[1],
            owners=owners if len(self.optimizers) > 1 else (),
            loop_clip=clip,
        )
        """The settings in force (see `ControlState`)."""
        self.commands = CommandQueue()
        """Commands for the probe; applied at the next step boundary."""
        self.viewers: Viewers | None = None
        """The server's viewers, when serving: a pause lasts while the viewer that made it is here."""
        self._written: list[float | None] = [None] * len(self._groups)
        """The learning rate the probe wrote into each group (None: the loop's own is in place)."""
        self._dist = dist
        self._primary = dist is None or dist.primary
        self._held: list[Command] = []
        self._origins: dict[str, str | None] = {}
        self._resumes: dict[str, str] = {}
        """Resumes the probe sends itself (a pause whose viewer left): command id -> why."""
        self._owner_gone: float | None = None
        self._emit = emit
        self.rollback: Callable[[ControlState, Rollback, int], tuple[ControlState, CommandResult]] | None = None
        """The guard's answer to a `Rollback` (None without a guard: the rule refuses it)."""
        self.capture: Callable[[ControlState, Capture, int, str], tuple[ControlState, CommandResult]] | None = None
        """The deep capture's answer to a `Capture` (`gradtui.probe.capture`; None: the rule refuses it)."""
        self._hook_failed = False
        self._hooks = [opt.register_step_post_hook(self._after_step) for opt in self.optimizers]

    def group_names(self) -> tuple[str, ...]:
        """A name per param group: "0", "1" for one optimizer; "opt1.0" for several."""
        if len(self.optimizers) <= 1:
            return tuple(str(i) for i in range(len(self._groups)))
        return tuple(f"opt{oi}.{gi}" for oi, opt in enumerate(self.optimizers) for gi in range(len(opt.param_groups)))

    # ------------------------------------------------------------ the step boundary

    def begin_step(self) -> None:
        """Take the learning rates the loop set since the last step and re-apply the overrides."""
        self._follow_groups()
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
        """Apply the commands waiting now (at most `MAX_PER_STEP`), at `step`."""
        cmds = self.take(step)
        if cmds:
            self.apply_all(cmds, step)

    def apply(self, cmd: Command, step: int) -> CommandResult:
        """Apply one command at `step` (or refuse it) and acknowledge it."""
        return self.apply_all([cmd], step)[0]

    def apply_all(self, cmds: Sequence[Command], step: int) -> list[CommandResult]:
        """Apply `cmds` in order at `step`, writing the optimizers once; acknowledge each.

        A failure writing the result (which the rule should have refused) refuses the whole
        batch and leaves every setting as it was: the monitor must never be why a run stops.
        """
        before = self.state
        state, results, quiet = before, [], set()
        for cmd in cmds:
            origin = self._origins.pop(cmd.id, None)
            if isinstance(cmd, Rollback) and self.rollback is not None:
                state, result = self.rollback(state, cmd, step)
                if origin is None:
                    quiet.add(cmd.id)  # the guard's own: its events say what it did
            elif isinstance(cmd, Capture) and self.capture is not None:
                asked = f"asked from the viewer ({origin})" if origin else "asked from the viewer"
                state, result = self.capture(state, cmd, step, asked)
            else:
                state, result = respond(state, cmd, step, origin)
            why = self._resumes.pop(cmd.id, None)
            results.append(replace(result, message=f"{result.message}: {why}") if why and result.ok else result)
        self.state = state
        if state != before:
            try:
                self._write()
            except Exception as exc:
                self.state = before
                with contextlib.suppress(Exception):
                    self._write()
                results = [
                    replace(r, ok=False, message=f"could not apply: {exc}") if r.ok else r for r in results
                ]
        if self.state.paused_by != before.paused_by or self.state.paused != before.paused:
            self._owner_gone = None
            if self.viewers is not None:
                self.viewers.paused_by(self.state.paused_by if self.state.paused else None)
        for result in results:
            if result.command_id not in quiet:
                self._emit(result)
        return results

    def take(self, step: int, wait: float | None = None) -> list[Command]:
        """Commands to apply now: this process's queue, or rank 0's on every rank."""
        mine: list[Command] = list(self._held)
        self._held = []
        if self._primary and (wait is not None or not self.commands.empty()):
            try:
                if wait is not None and not mine:
                    mine.append(self._get(timeout=wait))
                while len(mine) < MAX_PER_STEP:
                    mine.append(self._get())
            except queue.Empty:
                pass
        if self._dist is None:
            return mine
        now, self._held, too_big = self._dist.broadcast_commands(mine)
        for cmd in too_big:
            why = f"the command is too large to send to every rank (over {CONTROL_BYTES} bytes)"
            self._emit(CommandResult(cmd.id, command_kind(cmd), False, step, why))
        return now

    def _get(self, timeout: float | None = None) -> Command:
        cmd = self.commands.get(timeout=timeout) if timeout is not None else self.commands.get_nowait()
        self._origins[cmd.id] = self.commands.origin(cmd)
        return cmd

    def wait_while_paused(self, step: int, closed: Callable[[], bool]) -> None:
        # Every rank loops here in step: each round is one command broadcast from rank 0.
        while self.state.paused and not closed():
            if self._primary:
                self._check_lease(step)
            cmds = self.take(step, wait=0.2)
            if cmds:
                self.apply_all(cmds, step)

    def _check_lease(self, step: int) -> None:
        """Resume once the viewer holding the pause has been gone `PAUSE_LEASE` seconds."""
        owner = self.state.paused_by
        if not owner or self.viewers is None or self.viewers.present(owner):
            self._owner_gone = None
            return
        now = time.monotonic()
        if self._owner_gone is None:
            self._owner_gone = now
            text = (
                f"gradtui: {owner} paused training at step {step} and left; "
                f"training resumes in {PAUSE_LEASE:g} s unless a viewer resumes or pauses it"
            )
            log.warning("%s", text)
            self._emit(LogLine(text, stream="gradtui"))
        elif now - self._owner_gone >= PAUSE_LEASE and not self._resumes:
            resume = SetPaused(False)
            self._resumes[resume.id] = f"{owner} paused the run and left {PAUSE_LEASE:g} s ago"
            log.warning("gradtui: resuming training at step %d: %s", step, self._resumes[resume.id])
            self._held.insert(0, resume)

    def close(self) -> None:
        """Remove the hooks and leave the loop's own learning rates in the groups."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._follow_groups()
        self._put_back(range(len(self._groups)))
        self.state = replace(self.state, lrs=self.state.schedule, schedule_lrs=(), overrides=())

    # ------------------------------------------------------------ the groups

    def recorded(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(learning rates in force, the loop's) of the groups the run started with, for its events."""
        n, state = self._recorded, self.state
        pad = (math.nan,) * max(0, n - len(state.lrs))
        return state.lrs[:n] + pad, state.schedule[:n] + pad

    def _follow_groups(self) -> None:
        """Take in the param groups as they are now (a few identity checks when nothing changed)."""
        if self._counts == [len(opt.param_groups) for opt in self.optimizers] and all(
            a is b for a, b in zip(self._groups, (g for opt in self.optimizers for g in opt.param_groups), strict=True)
        ):
            return
        state, old = self.state, self._groups
        where = {id(g): i for i, g in enumerate(old)}
        groups: list[dict[str, Any]] = []
        taken: list[int | None] = []  # for each group now, the index it had (None: a new group)
        first = 0
        for opt, count in zip(self.optimizers, self._counts, strict=True):
            now = opt.param_groups
            for pos, g in enumerate(now):
                i = where.get(id(g))
                if i is None and len(now) == count:
                    i = first + pos  # replaced in place (load_state_dict): it takes the old one's part
                groups.append(g)
                taken.append(i)
            first += count
        added = sum(i is None for i in taken)
        lrs = [state.lrs[i] if i is not None else float(g["lr"]) for g, i in zip(groups, taken, strict=True)]
        schedule = [state.schedule[i] if i is not None else lrs[k] for k, i in enumerate(taken)]
        kept = [i if i is not None and groups[k] is old[i] else None for k, i in enumerate(taken)]
        self._written = [self._written[i] if i is not None else None for i in kept]
        overrides = tuple(state.override(i) if i is not None else None for i in taken)
        self._groups = groups
        self._counts = [len(opt.param_groups) for opt in self.optimizers]
        owners = tuple(oi for oi, opt in enumerate(self.optimizers) for _ in opt.param_groups)
        self.state = replace(
            state,
            lrs=tuple(lrs),
            schedule_lrs=tuple(schedule) if state.schedule_lrs else (),
            overrides=overrides if any(o is not None for o in overrides) else (),
            owners=owners if len(self.optimizers) > 1 else (),
        )
        if added:
            text = (
                f"gradtui: {added} param group(s) added to the optimizer ({len(old)} -> {len(groups)}): "
                "they follow the loop's learning rate, and commands from now on act on them too"
            )
            log.info("%s", text)
            self._emit(LogLine(text, stream="gradtui"))

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
        if self._written.count(None) == len(self._written):
            # No value of ours in any group: nothing to put back (a group added since is taken in at
            # the next step). The common case, at every step: the follow-and-put-back took 23-31 us.
            return
        try:
            self._follow_groups()  # a group added after the step boundary, before this step
            first = sum(len(opt.param_groups) for opt in self.optimizers[: self._index_of(optimizer)])
            self._put_back(range(first, first + len(optimizer.param_groups)))
        except Exception:  # inside the loop's optimizer.step(): never raise there
            if not self._hook_failed:
                self._hook_failed = True
                log.exception("gradtui: could not put the loop's learning rate back after a step (training goes on)")

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
