"""What the run's own output says: the guard's actions, alarms and the first non-finite step,
as lines on the `gradtui` logger, viewer or not.

Many runs have no viewer (a batch job, a notebook, a tmux pane with only the log), and a
guard that rolls a run back 15 times without a word is a guard nobody trusts. Lines go out
at WARNING, so Python's last-resort handler prints them on stderr with no logging set up;
`logging.getLogger("gradtui").setLevel(logging.ERROR)` silences them, and a configured
root logger takes them like any other library's.

Repetition is folded: alarms raised at one step on several layers make one line; a flag
raised again on the same layer within `QUIET_STEPS` of its last line, and guard actions of
one kind within `QUIET_STEPS` of each other, are counted and said once when the run moves
on (another kind of event, a quiet stretch, or the end of the run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gradtui.model.events import ALERT_LEVELS, Alert, Event, GuardAction, RunEnd, RunSteps, StepStats

log = logging.getLogger("gradtui")

QUIET_STEPS = 50
"""Steps within which a repeat of a line is counted instead of said."""
NAMED = 4
"""Units named in one line at most (the rest are counted)."""
ALARM_LEVELS = ("warning", "critical")
"""Alarm levels that are said (info-level flags are for the screen)."""
NAMES = {
    "exploding": "exploding gradients",
    "vanishing": "vanishing gradients",
    "nonfinite": "non-finite gradients",
    "dead": "dead layer",
    "loss_spike": "loss spike",
}
"""Flag kinds in words (a log line is read by people, not parsed)."""


@dataclass
class _Fold:
    """Repeats of one kind of line since it was last said."""

    first: int
    last: int
    count: int = 0
    layers: set[str] = field(default_factory=set)

    def add(self, step: int, where: str | None = None) -> None:
        if self.count == 0:
            self.first = step
        self.count += 1
        self.last = step
        if where is not None:
            self.layers.add(where)


class Announcer:
    """A sink that says the events that matter on the `gradtui` logger (see the module docstring)."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._alarms: list[Alert] = []
        """Alarms of the step being gathered (said together when the step is over)."""
        self._said: dict[tuple[str | None, str], int] = {}
        """Step at which each (layer, kind) raise was last said."""
        self._folds: dict[str, _Fold] = {}
        """Repeats not yet said, by alarm kind or guard action."""
        self._first_nonfinite = False

    def emit(self, event: Event, frame: bytes | None = None) -> None:
        if isinstance(event, Alert):
            if event.active and event.level in ALARM_LEVELS:
                if self._alarms and self._alarms[0].step != event.step:
                    self._say_alarms()
                self._alarms.append(event)
            return
        self._say_alarms()
        if isinstance(event, GuardAction):
            self._guard(event)
        elif isinstance(event, (StepStats, RunSteps)):
            self._settle(event.step)
        elif isinstance(event, RunEnd):
            self._settle(None)

    def close(self) -> None:
        self._say_alarms()
        self._settle(None)

    def _say_alarms(self) -> None:
        alarms, self._alarms = self._alarms, []
        if not alarms:
            return
        step = alarms[0].step
        for kind in dict.fromkeys(a.kind for a in alarms):
            of_kind = [a for a in alarms if a.kind == kind]
            fresh = [a for a in of_kind if step - self._said.get((a.layer, kind), -QUIET_STEPS - 1) > QUIET_STEPS]
            for a in of_kind:
                if a not in fresh:
                    self._folds.setdefault(kind, _Fold(step, step)).add(step, _where(a.layer))
            if not fresh:
                continue
            for a in fresh:
                self._said[(a.layer, kind)] = step
            worst = max(fresh, key=lambda a: ALERT_LEVELS.index(a.level))
            names = [_where(a.layer) for a in fresh]
            where = ", ".join(names[:NAMED]) + (f" and {len(names) - NAMED} more" if len(names) > NAMED else "")
            more = f" on {len(fresh)} units ({where})" if len(fresh) > 1 else f" on {where}"
            self._log.warning(
                "gradtui: step %d: %s (%s)%s: %s", step, NAMES.get(kind, kind), worst.level, more, worst.message
            )
            if kind == "nonfinite" and not self._first_nonfinite:
                self._first_nonfinite = True
                self._log.warning(
                    "gradtui: the first non-finite gradient of the run is at step %d (%s)", step, _where(fresh[0].layer)
                )

    def _guard(self, event: GuardAction) -> None:
        fold = self._folds.get(event.action)
        if fold is not None and event.step - fold.last <= QUIET_STEPS:
            fold.add(event.step)
            return
        self._settle_one(event.action)
        self._folds[event.action] = _Fold(event.step, event.step)
        self._log.warning("gradtui: step %d: the guard: %s", event.step, event.detail)

    def _settle(self, step: int | None) -> None:
        """Say the folds that have gone quiet (all of them at the end: `step` None)."""
        for key, fold in list(self._folds.items()):
            if step is None or step - fold.last > QUIET_STEPS:
                self._settle_one(key)

    def _settle_one(self, key: str) -> None:
        fold = self._folds.pop(key, None)
        if fold is None or fold.count == 0:
            return
        span = f"step {fold.last}" if fold.first == fold.last else f"steps {fold.first}-{fold.last}"
        if key in NAMES:
            where = ", ".join(sorted(fold.layers))
            self._log.warning("gradtui: %s raised again %d times over %s (%s)", NAMES[key], fold.count, span, where)
        else:
            self._log.warning("gradtui: the guard: %d more %s over %s", fold.count, _GUARD_WORDS.get(key, key), span)


_GUARD_WORDS = {"skip": "skipped steps", "rollback": "rollbacks", "clip": "clips", "lr_cut": "learning-rate cuts"}


def _where(layer: str | None) -> str:
    return "the run" if layer is None else f"layer {layer!r}" if layer else "the root layer"


__all__ = ["Announcer"]
