"""Commands that travel from a viewer to the probe, and the one rule for what they do.

A command is applied by the probe at its next step boundary and answered with a
`CommandResult` event naming that step. `validate` and `apply` are pure: the probe
(on a real optimizer), the synthetic run (for tests and the viewer's demo) and the
viewer's own bookkeeping (what the run will be once a pending command lands) all call
them, so all three refuse the same commands with the same reason and describe a change
with the same words.

A learning-rate command is an override that persists: the probe re-applies it at every
step on top of the learning rate the loop or its scheduler set that step (a factor keeps
the schedule's shape, a value pins it) until another command changes it or `Release`
hands control back to the loop (`follow_schedule`).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field, replace

from gradtui.model.events import CLIP_MODES, CommandResult


def new_command_id() -> str:
    """A short random id; unique enough across several viewers of one run."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True, slots=True)
class SetLR:
    """Set the learning rate to `value`, or multiply it by `factor`, in one group or all.

    The change holds at every later step, on top of whatever the loop or its scheduler
    sets: a factor multiplies the schedule's learning rate, a value replaces it.
    """

    value: float | None = None
    factor: float | None = None
    group: int | None = None
    """Param group index (within `optimizer` when given, else across every watched optimizer's
    groups in order); None for every group."""
    optimizer: int | None = None
    """Index of the optimizer in `watch(model, [opt0, opt1])`; None for all."""
    id: str = field(default_factory=new_command_id)


@dataclass(frozen=True, slots=True)
class SetClip:
    """Clip gradients: "off", by global L2 "norm", or elementwise by "value"."""

    mode: str
    threshold: float | None = None
    """Max norm or max |value|; None keeps the current threshold."""
    id: str = field(default_factory=new_command_id)


@dataclass(frozen=True, slots=True)
class SetPaused:
    """Pause (True) or resume (False) training at the step boundary."""

    paused: bool
    id: str = field(default_factory=new_command_id)


RELEASE_TARGETS: tuple[str, ...] = ("all", "lr", "clip")

LR_RANGE: tuple[float, float] = (1e-12, 1e3)
"""Learning rates a command may set (after a factor): beyond them an optimizer step is
meaningless or overflows (1e39 overflows float32 parameters), and inside them every
float16/bfloat16/float32 parameter can take the step."""
CLIP_RANGE: tuple[float, float] = (1e-12, 1e12)
"""Clip thresholds a command may set: finite in float32 even times a GradScaler's scale."""
AUTO_CLIP_Z = 2.5
"""The z-score adaptive clipping ("auto") starts with: past it a norm is about 1 in 160 of a
normal spread's, so a healthy run is seldom clipped and a spike always is."""
PAUSE_LEASE = 60.0
"""Seconds a pause outlives the viewer that made it: long enough to reattach after a dropped
SSH session, short enough that a forgotten pause does not cost a night of GPU time."""


@dataclass(frozen=True, slots=True)
class Release:
    """Give control back to the loop: drop learning-rate overrides ("lr"), return clipping to
    what the run started with ("clip"), or both ("all")."""

    what: str = "all"
    id: str = field(default_factory=new_command_id)


@dataclass(frozen=True, slots=True)
class Rollback:
    """Put back the last healthy snapshot and cut the learning rate (what the guard does on a
    blow-up; see `gradtui.model.guard`). Only a run watched with a guard can take it."""

    reason: str = ""
    """Why, in words ("critical exploding alarm up 3 steps"); shown with the acknowledgement."""
    id: str = field(default_factory=new_command_id)


@dataclass(frozen=True, slots=True)
class Capture:
    """Arm a deep capture for `steps` steps (`gradtui.probe.capture`): activation and optimizer-state
    statistics at every step, and the first module to produce a NaN or Inf."""

    steps: int = 32
    """Steps to capture, from the step it is applied at (1 .. `MAX_CAPTURE_STEPS`)."""
    reason: str = ""
    """Why, in words, when the probe asks itself (an alarm, under torch.distributed: every rank arms
    at the same step); empty from a viewer."""
    id: str = field(default_factory=new_command_id)


MAX_CAPTURE_STEPS = 1024
"""The longest capture a command may ask for: a capture samples every step in full."""
NO_CAPTURE = "this run's probe takes no captures (a gradtui before deep capture)"


NO_GUARD = "this run keeps no snapshot to roll back to: watch it with gradtui.watch(..., guard=True)"


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    """A command frame of a kind this version does not know; always refused."""

    kind: str
    id: str = ""


Command = SetLR | SetClip | SetPaused | Release | Rollback | Capture | UnknownCommand

COMMAND_TYPES: dict[str, type] = {
    "set_lr": SetLR,
    "set_clip": SetClip,
    "set_paused": SetPaused,
    "release": Release,
    "rollback": Rollback,
    "capture": Capture,
}


def command_kind(cmd: Command) -> str:
    """The wire name of a command ("set_lr", ...)."""
    if isinstance(cmd, UnknownCommand):
        return cmd.kind
    for name, cls in COMMAND_TYPES.items():
        if isinstance(cmd, cls):
            return name
    raise TypeError(f"not a command: {cmd!r}")


# ---------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class LROverride:
    """A viewer's learning rate for one group: a factor on the schedule, or a pinned value."""

    factor: float | None = None
    value: float | None = None

    def on(self, schedule: float) -> float:
        """The learning rate this override gives when the schedule says `schedule`."""
        return self.value if self.value is not None else schedule * (self.factor or 1.0)

    def scaled(self, factor: float) -> LROverride:
        if self.value is not None:
            return LROverride(value=self.value * factor)
        return LROverride(factor=(self.factor or 1.0) * factor)


@dataclass(frozen=True, slots=True)
class ControlState:
    """What commands change: the learning rate of each param group, clipping, pause.

    `lrs` are the learning rates in force; `schedule_lrs` what the loop set (empty: the same
    as `lrs`); `overrides` a viewer's override per group (None: the loop's own); `owners`
    the optimizer of each group (empty: all belong to optimizer 0); `loop_clip` the
    clipping the run started with, which `Release` returns to; `paused_by` who holds the
    pause (a viewer's name, or "" for the training process itself).
    """

    lrs: tuple[float, ...] = ()
    clip_mode: str = "off"
    clip_threshold: float = 1.0
    paused: bool = False
    schedule_lrs: tuple[float, ...] = ()
    overrides: tuple[LROverride | None, ...] = ()
    owners: tuple[int, ...] = ()
    loop_clip: tuple[str, float] = ("off", 1.0)
    paused_by: str | None = None

    @property
    def schedule(self) -> tuple[float, ...]:
        return self.schedule_lrs or self.lrs

    def override(self, group: int) -> LROverride | None:
        return self.overrides[group] if group < len(self.overrides) else None

    def owner(self, group: int) -> int:
        return self.owners[group] if group < len(self.owners) else 0

    @property
    def n_optimizers(self) -> int:
        return (max(self.owners) + 1) if self.owners else (1 if self.lrs else 0)


class CommandRefused(ValueError):
    """A command that cannot be applied; the message says why."""


# ---------------------------------------------------------------- validation


def _positive_finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def lr_targets(state: ControlState, cmd: SetLR) -> list[int]:
    """The groups (indices into `state.lrs`) a learning-rate command acts on."""
    groups = [g for g in range(len(state.lrs)) if cmd.optimizer is None or state.owner(g) == cmd.optimizer]
    if cmd.group is None:
        return groups
    return [groups[cmd.group]] if 0 <= cmd.group < len(groups) else []


def validate(cmd: Command, n_groups: int | ControlState) -> str | None:
    """Return why `cmd` cannot be applied (to a run with `n_groups` param groups, or in `state`), or None."""
    state = n_groups if isinstance(n_groups, ControlState) else ControlState(lrs=(1.0,) * n_groups)
    if isinstance(cmd, UnknownCommand):
        return f"unknown command kind {cmd.kind!r}"
    if isinstance(cmd, SetLR):
        if (cmd.value is None) == (cmd.factor is None):
            return "set_lr needs exactly one of value or factor"
        if cmd.value is not None and not _positive_finite(cmd.value):
            return f"learning rate must be a positive finite number, got {cmd.value!r}"
        if cmd.factor is not None and not _positive_finite(cmd.factor):
            return f"learning-rate factor must be a positive finite number, got {cmd.factor!r}"
        if not state.lrs:
            return "no optimizer is watched, so there is no learning rate to set"
        if cmd.optimizer is not None and not (0 <= cmd.optimizer < state.n_optimizers):
            return f"unknown optimizer {cmd.optimizer} (the run watches {state.n_optimizers})"
        if cmd.group is not None and not lr_targets(state, cmd):
            n = len(lr_targets(state, SetLR(factor=1.0, optimizer=cmd.optimizer)))
            return f"unknown param group {cmd.group} (the optimizer has {n})"
        return None
    if isinstance(cmd, SetClip):
        if cmd.mode not in CLIP_MODES:
            return f"unknown clip mode {cmd.mode!r} (expected one of {', '.join(CLIP_MODES)})"
        if cmd.threshold is not None and not _positive_finite(cmd.threshold):
            return f"clip threshold must be a positive finite number, got {cmd.threshold!r}"
        return None if cmd.threshold is None else _clip_outside(float(cmd.threshold))
    if isinstance(cmd, Release):
        if cmd.what not in RELEASE_TARGETS:
            return f"unknown release target {cmd.what!r} (expected one of {', '.join(RELEASE_TARGETS)})"
        return None
    if isinstance(cmd, SetPaused):
        return None
    if isinstance(cmd, Rollback):
        return None if isinstance(cmd.reason, str) else f"rollback reason must be text, got {cmd.reason!r}"
    if isinstance(cmd, Capture):
        steps = cmd.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_CAPTURE_STEPS:
            return f"capture steps must be a whole number from 1 to {MAX_CAPTURE_STEPS}, got {steps!r}"
        return None if isinstance(cmd.reason, str) else f"capture reason must be text, got {cmd.reason!r}"
    return f"not a command: {type(cmd).__name__}"


def parse_lr(text: str) -> float:
    """Parse a learning rate typed by a user; raises ValueError with a readable reason."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"learning rate must be a positive finite number, got {text.strip()}")
    return value


# ---------------------------------------------------------------- words


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def clip_text(mode: str, threshold: float) -> str:
    """A clipping state as shown in acknowledgements: "off", "norm 1", "value 0.5"."""
    return "off" if mode == "off" else f"{mode} {_fmt(threshold)}"


def lr_change_text(old: tuple[float, ...], new: tuple[float, ...], group: int | None, where: str = "") -> str:
    """The acknowledgement of a learning-rate change: "lr 0.1 -> 0.05 (all groups)"."""
    changes = ", ".join(f"{_fmt(a)} -> {_fmt(b)}" for a, b in zip(old, new, strict=True) if a != b)
    where = where or ("all groups" if group is None else f"group {group}")
    return f"lr {changes or 'unchanged'} ({where})"


def clip_change_text(old_mode: str, old_threshold: float, new_mode: str, new_threshold: float) -> str:
    """The acknowledgement of a clipping change: "clipping off -> norm 1"."""
    return f"clipping {clip_text(old_mode, old_threshold)} -> {clip_text(new_mode, new_threshold)}"


def _where(cmd: SetLR) -> str:
    if cmd.optimizer is None:
        return ""
    return f"optimizer {cmd.optimizer}, " + ("all groups" if cmd.group is None else f"group {cmd.group}")


# ---------------------------------------------------------------- the rule


def _with_overrides(state: ControlState, overrides: list[LROverride | None]) -> ControlState:
    schedule = state.schedule
    lrs = tuple(float(ov.on(s)) if ov is not None else float(s) for ov, s in zip(overrides, schedule, strict=True))
    keep = tuple(overrides) if any(ov is not None for ov in overrides) else ()
    return replace(state, lrs=lrs, schedule_lrs=tuple(schedule), overrides=keep)


def _clip_outside(threshold: float) -> str | None:
    """Why a clip threshold is refused for its size (None: within `CLIP_RANGE`)."""
    lo, hi = CLIP_RANGE
    return None if lo <= threshold <= hi else f"clip threshold {_fmt(threshold)} is outside {lo:g} .. {hi:g}"


def follow_schedule(state: ControlState, schedule_lrs: tuple[float, ...]) -> ControlState:
    """The state once the loop has set `schedule_lrs`: every override re-applied on top of it."""
    if len(schedule_lrs) != len(state.lrs):
        raise ValueError(f"{len(schedule_lrs)} learning rates for {len(state.lrs)} param groups")
    if not state.overrides and state.schedule_lrs == schedule_lrs and state.lrs == schedule_lrs:
        return state  # nothing changed and nothing to re-apply (most steps): the same state
    base = replace(state, schedule_lrs=tuple(float(x) for x in schedule_lrs))
    return _with_overrides(base, [state.override(g) for g in range(len(state.lrs))])


def apply(state: ControlState, cmd: Command) -> tuple[ControlState, str]:
    """The state after `cmd`, and the acknowledgement text that describes the change.

    Raises:
        CommandRefused: `cmd` is invalid for `state` (the reason `validate` gives).
    """
    reason = validate(cmd, state)
    if reason is not None:
        raise CommandRefused(reason)
    if isinstance(cmd, SetLR):
        overrides = [state.override(g) for g in range(len(state.lrs))]
        targets = lr_targets(state, cmd)
        for g in targets:
            if cmd.value is not None:
                overrides[g] = LROverride(value=float(cmd.value))
            else:
                overrides[g] = (overrides[g] or LROverride()).scaled(float(cmd.factor or 1.0))
        new = _with_overrides(state, overrides)
        lo, hi = LR_RANGE
        for g in targets:
            if not lo <= new.lrs[g] <= hi:
                raise CommandRefused(
                    f"that would make the learning rate {_fmt(new.lrs[g])}, outside {lo:g} .. {hi:g}"
                    + (f" (group {g})" if len(state.lrs) > 1 else "")
                )
        return new, lr_change_text(state.lrs, new.lrs, cmd.group, _where(cmd))
    if isinstance(cmd, SetClip):
        threshold = state.clip_threshold if cmd.threshold is None else float(cmd.threshold)
        outside = _clip_outside(threshold)
        if outside is not None:
            raise CommandRefused(outside)
        new = replace(state, clip_mode=cmd.mode, clip_threshold=threshold)
        return new, clip_change_text(state.clip_mode, state.clip_threshold, new.clip_mode, new.clip_threshold)
    if isinstance(cmd, Release):
        new, parts = state, []
        if cmd.what in ("all", "lr"):
            new = _with_overrides(new, [None] * len(new.lrs))
            parts.append(lr_change_text(state.lrs, new.lrs, None, "back to the loop's schedule"))
        if cmd.what in ("all", "clip"):
            mode, threshold = state.loop_clip
            new = replace(new, clip_mode=mode, clip_threshold=threshold)
            parts.append(clip_change_text(state.clip_mode, state.clip_threshold, mode, threshold) + " (as started)")
        return new, "released: " + "; ".join(parts)
    if isinstance(cmd, Rollback):
        raise CommandRefused(NO_GUARD)  # the state holds no snapshot: a guard answers it (probe.guard)
    if isinstance(cmd, Capture):
        raise CommandRefused(NO_CAPTURE)  # the state holds no instruments: the probe answers it (probe.capture)
    assert isinstance(cmd, SetPaused)  # validate() refuses everything else
    return replace(state, paused=cmd.paused), "paused" if cmd.paused else "resumed"


def respond(
    state: ControlState, cmd: Command, step: int, origin: str | None = None
) -> tuple[ControlState, CommandResult]:
    """Apply `cmd` at `step`: the new state (unchanged when refused) and the answer to send.

    `origin` names who sent it (a viewer's name; None: the training process); a pause
    remembers it, so the pause can end when that viewer has gone (see `PAUSE_LEASE`).
    """
    try:
        kind = command_kind(cmd)
    except TypeError:
        kind = type(cmd).__name__
    try:
        new, message = apply(state, cmd)
    except CommandRefused as exc:
        return state, CommandResult(getattr(cmd, "id", ""), kind, False, step, str(exc))
    if isinstance(cmd, SetPaused):
        new = replace(new, paused_by=(origin or "") if cmd.paused else None)
    return new, CommandResult(cmd.id, kind, True, step, message)
