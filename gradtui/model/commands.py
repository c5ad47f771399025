"""Commands that travel from a viewer to the probe, and the one rule for what they do.

A command is applied by the probe at its next step boundary and answered with a
`CommandResult` event naming that step. `validate` and `apply` are pure: the probe
(on a real optimizer), the synthetic run (for tests and the viewer's demo) and the
viewer's own bookkeeping (what the run will be once a pending command lands) all call
them, so all three refuse the same commands with the same reason and describe a change
with the same words.
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
    """Set the learning rate to `value`, or multiply it by `factor`, in one group or all."""

    value: float | None = None
    factor: float | None = None
    group: int | None = None
    """Param group index; None for every group."""
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


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    """A command frame of a kind this version does not know; always refused."""

    kind: str
    id: str = ""


Command = SetLR | SetClip | SetPaused | UnknownCommand

COMMAND_TYPES: dict[str, type] = {"set_lr": SetLR, "set_clip": SetClip, "set_paused": SetPaused}


def command_kind(cmd: Command) -> str:
    """The wire name of a command ("set_lr", ...)."""
    if isinstance(cmd, UnknownCommand):
        return cmd.kind
    for name, cls in COMMAND_TYPES.items():
        if isinstance(cmd, cls):
            return name
    raise TypeError(f"not a command: {cmd!r}")


def _positive_finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def validate(cmd: Command, n_groups: int) -> str | None:
    """Return why `cmd` cannot be applied to an optimizer with `n_groups` groups, or None."""
    if isinstance(cmd, UnknownCommand):
        return f"unknown command kind {cmd.kind!r}"
    if isinstance(cmd, SetLR):
        if (cmd.value is None) == (cmd.factor is None):
            return "set_lr needs exactly one of value or factor"
        if cmd.value is not None and not _positive_finite(cmd.value):
            return f"learning rate must be a positive finite number, got {cmd.value!r}"
        if cmd.factor is not None and not _positive_finite(cmd.factor):
            return f"learning-rate factor must be a positive finite number, got {cmd.factor!r}"
        if n_groups == 0:
            return "no optimizer is watched, so there is no learning rate to set"
        if cmd.group is not None and not (0 <= cmd.group < n_groups):
            return f"unknown param group {cmd.group} (the optimizer has {n_groups})"
        return None
    if isinstance(cmd, SetClip):
        if cmd.mode not in CLIP_MODES:
            return f"unknown clip mode {cmd.mode!r} (expected one of {', '.join(CLIP_MODES)})"
        if cmd.threshold is not None and not _positive_finite(cmd.threshold):
            return f"clip threshold must be a positive finite number, got {cmd.threshold!r}"
        return None
    if isinstance(cmd, SetPaused):
        return None
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


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def clip_text(mode: str, threshold: float) -> str:
    """A clipping state as shown in acknowledgements: "off", "norm 1", "value 0.5"."""
    return "off" if mode == "off" else f"{mode} {_fmt(threshold)}"


def lr_change_text(old: tuple[float, ...], new: tuple[float, ...], group: int | None) -> str:
    """The acknowledgement of a learning-rate change: "lr 0.1 -> 0.05 (all groups)"."""
    changes = ", ".join(f"{_fmt(a)} -> {_fmt(b)}" for a, b in zip(old, new, strict=True) if a != b)
    where = "all groups" if group is None else f"group {group}"
    return f"lr {changes or 'unchanged'} ({where})"


def clip_change_text(old_mode: str, old_threshold: float, new_mode: str, new_threshold: float) -> str:
    """The acknowledgement of a clipping change: "clipping off -> norm 1"."""
    return f"clipping {clip_text(old_mode, old_threshold)} -> {clip_text(new_mode, new_threshold)}"


# ---------------------------------------------------------------- the rule


@dataclass(frozen=True, slots=True)
class ControlState:
    """What commands change: the learning rate of each param group, clipping, pause."""

    lrs: tuple[float, ...] = ()
    clip_mode: str = "off"
    clip_threshold: float = 1.0
    paused: bool = False


class CommandRefused(ValueError):
    """A command that cannot be applied; the message says why."""


def apply(state: ControlState, cmd: Command) -> tuple[ControlState, str]:
    """The state after `cmd`, and the acknowledgement text that describes the change.

    Raises:
        CommandRefused: `cmd` is invalid for `state` (the reason `validate` gives).
    """
    reason = validate(cmd, len(state.lrs))
    if reason is not None:
        raise CommandRefused(reason)
    if isinstance(cmd, SetLR):
        groups = range(len(state.lrs)) if cmd.group is None else (cmd.group,)
        lrs = list(state.lrs)
        for gi in groups:
            lrs[gi] = cmd.value if cmd.value is not None else lrs[gi] * (cmd.factor or 1.0)
        new = replace(state, lrs=tuple(float(x) for x in lrs))
        return new, lr_change_text(state.lrs, new.lrs, cmd.group)
    if isinstance(cmd, SetClip):
        threshold = state.clip_threshold if cmd.threshold is None else float(cmd.threshold)
        new = replace(state, clip_mode=cmd.mode, clip_threshold=threshold)
        return new, clip_change_text(state.clip_mode, state.clip_threshold, new.clip_mode, new.clip_threshold)
    assert isinstance(cmd, SetPaused)  # validate() refuses everything else
    return replace(state, paused=cmd.paused), "paused" if cmd.paused else "resumed"


def respond(state: ControlState, cmd: Command, step: int) -> tuple[ControlState, CommandResult]:
    """Apply `cmd` at `step`: the new state (unchanged when refused) and the answer to send."""
    try:
        kind = command_kind(cmd)
    except TypeError:
        kind = type(cmd).__name__
    try:
        new, message = apply(state, cmd)
    except CommandRefused as exc:
        return state, CommandResult(cmd.id, kind, False, step, str(exc))
    return new, CommandResult(cmd.id, kind, True, step, message)
