"""Commands that travel from a viewer to the probe, and their validation.

A command is applied by the probe at its next step boundary and answered with a
`CommandResult` event naming that step. Validation is pure so that the viewer can
refuse a bad value before sending it, with the same reason the probe would give.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field

from gradtui.core.events import CLIP_MODES


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
