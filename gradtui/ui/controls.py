"""Interventions from the keyboard: which command a key sends, and what is pending.

Pure logic over the `RunStore` (no Textual), so it can be tested without an app. What a
command will do is decided by `gradtui.model.commands.apply`, the rule the probe applies.
A command is *pending* from the moment it is sent until the probe's `CommandResult`
arrives; after that it is *applied* at the step the result names (or refused). Every
viewer of a run gets every acknowledgement, and follows those of commands it did not
send too (`heard`): a pause from another viewer shows here at once, and `p` here then
resumes. The state a key acts on is the *intended* one: what the run will be once every
pending command lands, so pressing `+` twice quickly doubles the learning rate twice.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace

import numpy as np

from gradtui.model import advice
from gradtui.model.commands import (
    AUTO_CLIP_Z,
    Capture,
    Command,
    CommandRefused,
    ControlState,
    LROverride,
    Release,
    SetClip,
    SetLR,
    SetPaused,
    apply,
    clip_text,
    command_kind,
    validate,
)
from gradtui.model.events import CommandResult
from gradtui.model.store import RunStore
from gradtui.ui.scale import END_WORDS

RunControls = ControlState
"""The settings a viewer can change (the state the command rule works on)."""


@dataclass
class Pending:
    """A command sent and not yet acknowledged."""

    command: Command
    description: str
    target: RunControls
    """The settings once it is applied (absolute, so applying twice changes nothing)."""
    sent_at: float = field(default_factory=time.monotonic)
    quiet: bool = False
    """Sent by the viewer itself, not by a key (the tour holds a chapter while its story is
    open): on the record, but kept out of the alert log."""


@dataclass
class Applied:
    """An acknowledged command whose effect the step stats may not show yet."""

    result: CommandResult
    target: RunControls


def describe(cmd: Command) -> str:
    """A short human description of a command ("lr ×2", "clip off")."""
    if isinstance(cmd, SetLR):
        if cmd.value is not None:
            return f"lr = {cmd.value:g}"
        f = cmd.factor or 1.0
        return f"lr ×{f:g}" if f >= 1 else f"lr ÷{1 / f:g}"
    if isinstance(cmd, SetClip):
        if cmd.mode == "off":
            return "clip off"
        return f"clip {cmd.mode} ≤ {cmd.threshold:g}" if cmd.threshold is not None else f"clip {cmd.mode}"
    if isinstance(cmd, SetPaused):
        return "pause" if cmd.paused else "resume"
    if isinstance(cmd, Release):
        return "release to the loop" if cmd.what == "all" else f"release {cmd.what} to the loop"
    if isinstance(cmd, Capture):
        return f"capture {cmd.steps} steps"
    return COMMAND_WORDS.get(command_kind(cmd), command_kind(cmd))


COMMAND_WORDS: dict[str, str] = {
    "set_lr": "lr",
    "set_clip": "clip",
    "set_paused": "pause",
    "release": "release",
    "rollback": "rollback",
    "capture": "capture",
}
"""What the screen calls a command of each kind where it knows no more (the header; another
viewer's command in the log): the wire names ("set_paused") stay off screen."""


def result_words(result: CommandResult, pending: Pending | None = None) -> str:
    """What an acknowledgement answers, in words: the command as this viewer described it ("lr ×2"),
    else its kind's word ("lr"; "pause" or "resume" as the answer says)."""
    if pending is not None:
        return pending.description
    if result.kind == "set_paused" and result.ok:
        return "resume" if _said_paused(result.message) is False else "pause"
    return COMMAND_WORDS.get(result.kind, "command")


CLIP_CYCLE: dict[str, str] = {"norm": "value", "value": "auto", "auto": "norm"}
"""What `m` turns each clip mode into."""


class Controls:
    """Pending and recently applied commands of one viewer, over a store."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.pending: dict[str, Pending] = {}
        self.applied: list[Applied] = []
        self.last_clip_mode = "norm"
        """Mode that `c` turns clipping back on with (the last non-off mode seen)."""
        self.thresholds: dict[str, float] = {"auto": AUTO_CLIP_Z}
        """The last threshold seen per clip mode (a norm, a value and a z-score do not mix)."""
        self.version = 0
        """Bumped whenever pending/applied state changes."""
        self._holds_pause = False

    # ------------------------------------------------------------ state

    def reported(self) -> RunControls:
        """Settings as the probe last reported them (latest step stats, else the run start)."""
        last, run = self.store.last, self.store.run
        if last is not None:
            state = RunControls(
                last.lrs,
                last.clip_mode,
                last.clip_threshold,
                last.paused,
                schedule_lrs=last.schedule_lrs,
                overrides=_implied_overrides(last.lrs, last.schedule_lrs),
                loop_clip=(run.clip_mode, run.clip_threshold) if run is not None else ("off", 1.0),
            )
        elif run is not None:
            loop_clip = (run.clip_mode, run.clip_threshold)
            state = RunControls(run.lrs, run.clip_mode, run.clip_threshold, False, loop_clip=loop_clip)
        else:
            state = RunControls()
        if state.clip_mode != "off":
            self.last_clip_mode = state.clip_mode
            self.thresholds[state.clip_mode] = state.clip_threshold
        return state

    def actual(self) -> RunControls:
        """Settings in force: the report, plus acknowledged commands it does not show yet."""
        state = self.reported()
        last_step = self.store.last.step if self.store.last is not None else -1
        # A step report newer than the acknowledgement already includes its effect.
        self.applied = [a for a in self.applied if a.result.step >= last_step]
        for a in self.applied:
            state = _merge(state, a.target, a.result.kind)
        return state

    def intended(self) -> RunControls:
        """Settings once every pending command is applied."""
        state = self.actual()
        for p in self.pending.values():
            state = _merge(state, p.target, command_kind(p.command))
        return state

    def pending_of(self, kind: str) -> list[Pending]:
        """Pending commands of one kind ("set_lr", "set_clip", "set_paused"), oldest first."""
        return [p for p in self.pending.values() if command_kind(p.command) == kind]

    # ------------------------------------------------------------ commands

    def toggle_clip(self) -> SetClip:
        """Clipping off if on; else on with the last non-off mode and the current threshold."""
        s = self.intended()
        if s.clip_mode != "off":
            return SetClip("off")
        return SetClip(self.last_clip_mode, self._threshold(self.last_clip_mode, s.clip_threshold, s.clip_mode))

    def _threshold(self, mode: str, current: float, current_mode: str) -> float:
        if mode in self.thresholds:
            return self.thresholds[mode]
        if current_mode != "auto":
            return current
        # A z-score is no norm: the last norm or value threshold seen, else 1.
        return next((self.thresholds[m] for m in ("norm", "value") if m in self.thresholds), 1.0)

    def cycle_clip_mode(self) -> SetClip | None:
        """norm -> value -> auto (adaptive) -> norm when clipping is on; when off, only
        remembers the mode (None). Each mode keeps its own threshold."""
        s = self.intended()
        base = s.clip_mode if s.clip_mode != "off" else self.last_clip_mode
        nxt = CLIP_CYCLE.get(base, "norm")
        if s.clip_mode == "off":
            self.last_clip_mode = nxt
            self.version += 1
            return None
        return SetClip(nxt, self._threshold(nxt, s.clip_threshold, base))

    def scale_threshold(self, factor: float) -> SetClip:
        """Multiply the clip threshold (kept even while clipping is off)."""
        s = self.intended()
        return SetClip(s.clip_mode, s.clip_threshold * factor)

    def scale_lr(self, factor: float) -> SetLR:
        """Multiply every group's learning rate."""
        return SetLR(factor=factor)

    def set_lr(self, value: float) -> SetLR:
        """Set every group's learning rate."""
        return SetLR(value=value)

    def toggle_pause(self) -> SetPaused:
        """Pause when running, resume when paused (or pausing)."""
        return SetPaused(not self.intended().paused)

    def closed(self) -> str | None:
        """Why no command can reach the run now (it has not started or has ended), or None."""
        if self.store.run is None and self.store.last is None:
            return "no run yet (waiting for its first event)"
        if self.store.end is not None:
            return f"the run {END_WORDS.get(self.store.end.status, 'ended')}"
        return None

    def check(self, cmd: Command) -> str | None:
        """Why `cmd` cannot be sent now, or None."""
        return self.closed() or validate(cmd, len(self.reported().lrs))

    def sent(self, cmd: Command, *, quiet: bool = False) -> Pending:
        """Record a command the source accepted; it stays pending until acknowledged."""
        before = self.intended()
        try:
            target, _ = apply(before, cmd)
        except CommandRefused:
            target = before  # the probe will refuse it too, with the same reason

        if isinstance(cmd, SetClip) and cmd.mode != "off":
            self.last_clip_mode = cmd.mode
            if cmd.threshold is not None:
                self.thresholds[cmd.mode] = cmd.threshold
        p = Pending(cmd, describe(cmd), target, quiet=quiet)
        self.pending[cmd.id] = p
        self.version += 1
        return p

    def acknowledge(self, result: CommandResult) -> Pending | None:
        """Fold in the probe's answer, to our command or anyone's; returns the pending command it
        answers (None when another viewer, or the training process, sent it)."""
        p = self.pending.pop(result.command_id, None)
        if result.ok and result.kind == "set_paused":
            # Ours when we sent it; anyone else's (another viewer, the lease running out) ends our hold.
            self._holds_pause = p is not None and isinstance(p.command, SetPaused) and p.command.paused
        target = None
        if result.ok:
            target = p.target if p is not None else heard(self.actual(), result)
        if target is not None:
            self.applied.append(Applied(result, target))
        if p is not None or target is not None:
            self.version += 1
        return p

    def holds_pause(self) -> bool:
        """This viewer paused the run, and it is still paused."""
        return self._holds_pause and self.actual().paused and self.store.end is None

    def abandon(self) -> list[Pending]:
        """The run ended: nothing pending will be answered."""
        gone = list(self.pending.values())
        if gone:
            self.pending.clear()
            self.version += 1
        return gone


def _merge(state: RunControls, target: RunControls, kind: str) -> RunControls:
    """Take from `target` only the fields a command of `kind` sets."""
    if kind in ("set_lr", "release"):
        state = replace(state, lrs=target.lrs, schedule_lrs=target.schedule_lrs, overrides=target.overrides)
    if kind == "set_lr":
        return state
    if kind == "set_clip":
        return replace(state, clip_mode=target.clip_mode, clip_threshold=target.clip_threshold)
    if kind == "set_paused":
        return replace(state, paused=target.paused)
    if kind == "release":
        return replace(state, clip_mode=target.clip_mode, clip_threshold=target.clip_threshold)
    return state


def heard(state: RunControls, result: CommandResult) -> RunControls | None:
    """The settings after an acknowledged command this viewer did not send, from `state` and the
    answer's words (`gradtui.model.commands.apply` writes them); None where they do not say
    enough, until the next step report does (a learning rate set on some groups only).

    Only the fields of the answer's kind count (see `_merge`)."""
    said = result.message
    if result.kind == "set_paused":
        paused = _said_paused(said)
        return None if paused is None else replace(state, paused=paused)
    if result.kind == "set_clip":
        return _said_clip(state, said.removeprefix("clipping "))
    if result.kind == "set_lr":
        return _said_lrs(state, said)
    if result.kind == "release":
        parts = said.removeprefix("released: ").split("; ")
        lr, clip = any(p.startswith("lr ") for p in parts), any(p.startswith("clipping ") for p in parts)
        what = "all" if lr and clip else "lr" if lr else "clip" if clip else None
        return apply(state, Release(what))[0] if what is not None else None
    return None


def _said_paused(said: str) -> bool | None:
    """Whether a `SetPaused` answer ("paused", "resumed: the viewer left") says paused."""
    head = said.split(":")[0]
    for paused in (True, False):
        if head == apply(RunControls(), SetPaused(paused))[1]:
            return paused
    return None


def _said_clip(state: RunControls, change: str) -> RunControls | None:
    """The clipping an answer "norm 1 -> value 0.5" (`clip_change_text`) leaves in force."""
    _, arrow, now = change.rpartition(" -> ")
    mode, _, number = now.partition(" ")
    try:
        threshold = float(number) if number else state.clip_threshold
    except ValueError:
        return None
    if not arrow or clip_text(mode, threshold) != now:
        return None
    return replace(state, clip_mode=mode, clip_threshold=threshold)


_LR_CHANGE = re.compile(r"lr (.+) \(all groups\)")


def _said_lrs(state: RunControls, said: str) -> RunControls | None:
    """The learning rates an answer "lr 0.1 -> 0.05, 0.2 -> 0.1 (all groups)" (`lr_change_text`)
    leaves in force: only where every group is named (the answer leaves unchanged ones out)."""
    match = _LR_CHANGE.fullmatch(said)
    if match is None or not state.lrs:
        return None
    try:
        lrs = tuple(float(pair.split(" -> ")[1]) for pair in match.group(1).split(", "))
    except (IndexError, ValueError):
        return None
    if len(lrs) != len(state.lrs):
        return None
    return replace(state, lrs=lrs, overrides=_implied_overrides(lrs, state.schedule))


def _implied_overrides(lrs: tuple[float, ...], schedule: tuple[float, ...]) -> tuple[LROverride | None, ...]:
    """Overrides as a viewer can tell them from a step report: a factor wherever the learning rate in
    force differs from the loop's (what a new factor or a release then does comes out right)."""
    if len(schedule) != len(lrs) or lrs == schedule:
        return ()
    return tuple(
        LROverride(factor=lr / s) if lr != s and s > 0 else (LROverride(value=lr) if lr != s else None)
        for lr, s in zip(lrs, schedule, strict=True)
    )


def fmt_lr(lr: float) -> str:
    """A learning rate in 3 significant digits."""
    return "—" if not math.isfinite(lr) else f"{lr:.3g}"


PREVIEW_STEPS = 200
"""Steps the clip preview (`c`) looks back over (the global norm is known at every step)."""


def clip_preview(store: RunStore, thresholds: dict[str, float], current: float) -> str:
    """What each clip rule would have clipped over the last `PREVIEW_STEPS` steps, for the note
    `c` shows: norm and value at their thresholds, auto at its z-score (value on the detail
    steps among the last `PREVIEW_STEPS` sampled ones: it needs max |g|)."""
    norms = store.series("global_norm", PREVIEW_STEPS)
    if not norms.size:
        return ""
    norm_t = thresholds.get("norm", current)
    value_t = thresholds.get("value", current)
    z = thresholds.get("auto", AUTO_CLIP_Z)
    peak = store.window("max_abs", PREVIEW_STEPS)
    detail = ~np.isnan(peak).all(axis=1) if peak.size else np.zeros(0, bool)
    over = int((np.nanmax(peak[detail], axis=1) > value_t).sum()) if detail.any() else 0
    value = f"{over} of {int(detail.sum())} detail steps" if detail.any() else "unknown (no detail step yet)"
    return (
        f"Over the last {norms.size} steps: norm ≤{norm_t:g} would have clipped "
        f"{advice.clip_preview(norms, norm_t)}, value ≤{value_t:g} {value}, auto {z:g}σ "
        f"{advice.zclip_preview(norms, z)} (m cycles the mode, ] and [ scale the threshold)."
    )
