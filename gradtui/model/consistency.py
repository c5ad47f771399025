"""Whether a recorded event fits the run so far: the one rule `report` and `load` skip by.

Every frame of a record can check out and the record still not make sense: two writers
mixed in one file, records joined end to end, a hand-made or fuzzed file. `RunCheck`
looks at each event before it is folded, and says why one that does not fit is skipped
(its arrays disagree with the layers the run declared, a step going backwards, an alert
on a layer the run does not have). A second, different `RunStart` starts a new segment:
what came before it is another run, and the summary is of the last one, as a viewer's
store shows it. Nothing here raises on an event's content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradtui.model.events import Alert, Event, RunStart, RunSteps, StepStats, UpdateStats
from gradtui.model.layer_stats import STEP_FLOAT_STATS

MAX_STEP = 2**62
"""Largest step accepted: steps go into int64 arrays."""

NEW_RUN = "another run starts: the summary leaves out what came before"
"""The `skipped` reason of a run left out (the record holds several)."""



def _float_vector(a: Any) -> bool:
    return isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind == "f"


@dataclass
class Skipped:
    """Events left out of a summary for one reason."""

    event: str
    """The kind of event ("step", "update", "alert", "run_start")."""
    reason: str
    count: int = 0
    first_step: int | None = None
    last_step: int | None = None
    example: str = ""
    """The first one, in words."""

    def entry(self) -> dict[str, Any]:
        """As an entry of `gradtui report --json`'s `skipped`."""
        return {
            "event": self.event,
            "reason": self.reason,
            "count": self.count,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "example": self.example,
        }


@dataclass
class RunCheck:
    """Decide, event by event and in record order, which events make up the run.

    `check(event)` returns None for an event that fits (it is now part of the run) or why
    it was skipped; `segment` is bumped by a `RunStart` that starts another run. `skipped`
    tallies what was left out, one entry per reason.
    """

    start: RunStart | None = None
    segment: int = 0
    skipped: dict[tuple[str, str], Skipped] = field(default_factory=dict)
    _layers: int | None = None
    _groups: int | None = None
    _names: frozenset[str] | None = None
    _first: int | None = None
    """First step accepted in this segment."""
    _last: int | None = None
    """Last step accepted in this segment."""

    def check(self, event: Event) -> str | None:
        """None when `event` fits the run so far, else why it is skipped (also tallied in `skipped`)."""
        why = self._why(event)
        if why is None:
            return None
        reason, example = why
        step = getattr(event, "step", None)
        kind = _KIND.get(type(event), type(event).__name__)
        self.skip(kind, reason, example, step if isinstance(step, int) else None)
        return reason

    def skip(self, event: str, reason: str, example: str, first: int | None, last: int | None = None) -> None:
        """Tally one event left out (steps `first` to `last`: a run left out is one entry)."""
        entry = self.skipped.get((event, reason))
        if entry is None:
            entry = self.skipped[(event, reason)] = Skipped(event, reason, example=example)
        entry.count += 1
        last = first if last is None else last
        if first is not None and last is not None:
            entry.first_step = first if entry.first_step is None else min(entry.first_step, first)
            entry.last_step = last if entry.last_step is None else max(entry.last_step, last)

    def entries(self) -> list[dict[str, Any]]:
        """The report's `skipped`: one entry per reason, in the order first met."""
        return [s.entry() for s in self.skipped.values()]

    # ------------------------------------------------------------ rules

    def _why(self, event: Event) -> tuple[str, str] | None:
        if isinstance(event, RunStart):
            return self._run_start(event)
        if isinstance(event, StepStats):
            return self._step(event)
        if isinstance(event, RunSteps):
            return self._run_steps(event)
        if isinstance(event, UpdateStats):
            return self._update(event)
        if isinstance(event, Alert):
            if event.layer is not None and self._names is not None and event.layer not in self._names:
                return "names a layer the run does not have", f"alert {event.kind!r} on layer {event.layer!r}"
        return None

    def _run_start(self, ev: RunStart) -> tuple[str, str] | None:
        if self.start is not None and ev == self.start:
            return "repeats the run's RunStart", f"run {ev.run!r}"
        if self.start is not None or self._last is not None:
            # Another run in the same file: the summary is of the last, as a viewer's store shows.
            before = f"run {self.start.run!r}" if self.start is not None else "steps without a RunStart"
            self.skip("run_start", NEW_RUN, f"{before}, then run {ev.run!r}", self._first, self._last)
            self.segment += 1
        self.start = ev
        self._layers = len(ev.layers)
        self._groups = len(ev.lrs)
        self._names = frozenset(layer.name for layer in ev.layers) | frozenset(ev.lanes)
        self._first = self._last = None
        return None

    def _step(self, ev: StepStats) -> tuple[str, str] | None:
        where = f"step {ev.step}"
        if not 0 <= ev.step <= MAX_STEP:
            return "has a step number out of range", where
        arrays = [ev.grad_norm] + [a for a in (getattr(ev, k) for k in STEP_FLOAT_STATS[1:]) if a is not None]
        if not all(_float_vector(a) for a in arrays) or (ev.lanes is not None and not _float_vector(ev.lanes)):
            return "has statistics that are not float vectors", where
        has, bad = ev.has_grad, ev.nonfinite
        if not (isinstance(has, np.ndarray) and has.ndim == 1 and has.dtype.kind == "b"):
            return "has a has_grad that is not a bool vector", where
        if not (isinstance(bad, np.ndarray) and bad.ndim == 1 and bad.dtype.kind in "iu"):
            return "has non-finite counts that are not an integer vector", where
        n = len(ev.grad_norm)
        layers = self._layers if self._layers is not None else n
        if any(len(a) != layers for a in (*arrays, has, bad)):
            return "has per-layer arrays of another length than the run's layers", (
                f"{where}: {n} layer norms ({len(has)} has_grad, {len(bad)} non-finite counts) for {layers} layers"
            )
        groups = self._groups if self._groups is not None else len(ev.lrs)
        if len(ev.lrs) != groups or len(ev.schedule_lrs) not in (0, groups):
            return "has another number of learning rates than the run's param groups", (
                f"{where}: {len(ev.lrs)} learning rates ({len(ev.schedule_lrs)} scheduled) for {groups} groups"
            )
        if self._last is not None and ev.step < self._last:
            return "goes backwards", f"{where} after step {self._last}"
        self._layers, self._groups, self._last = layers, groups, ev.step
        if self._first is None:
            self._first = ev.step
        return None

    def _run_steps(self, ev: RunSteps) -> tuple[str, str] | None:
        """Unsampled steps: increasing integer steps after every step so far, a loss and a norm each."""
        where = f"steps up to {ev.step}"
        steps, loss, norm = ev.steps, ev.loss, ev.global_norm
        if not (isinstance(steps, np.ndarray) and steps.ndim == 1 and steps.dtype.kind in "iu" and steps.size):
            return "has steps that are not a non-empty integer vector", where
        if not (_float_vector(loss) and (norm is None or _float_vector(norm))):
            return "has losses or global norms that are not float vectors", where
        if len(loss) != steps.size or (norm is not None and len(norm) != steps.size):
            return "has another number of losses or global norms than steps", (
                f"{where}: {steps.size} steps, {len(loss)} losses, {'no' if norm is None else len(norm)} global norms"
            )
        problem = self._canaries(ev, where)
        if problem is not None:
            return problem
        first, last = int(steps[0]), int(steps[-1])
        if steps.size > 1 and not bool(np.all(steps[1:] > steps[:-1])):
            return "has steps that do not increase", f"{where}: steps {first}..{last}"
        if not 0 <= first <= last <= MAX_STEP:
            return "has a step number out of range", f"{where}: steps {first}..{last}"
        if last != ev.step:
            return "does not end at its own step", f"{where}: steps {first}..{last}"
        if self._last is not None and first <= self._last:
            return "goes backwards", f"{where}: step {first} after step {self._last}"
        self._last = last
        if self._first is None:
            self._first = first
        return None

    def _canaries(self, ev: RunSteps, where: str) -> tuple[str, str] | None:
        """Canary layers (increasing, of the run's) with a norm each per step, or neither."""
        layers, norms = ev.canary_layers, ev.canary_norm
        if layers is None and norms is None:
            return None
        if not (isinstance(layers, np.ndarray) and layers.ndim == 1 and layers.dtype.kind in "iu" and layers.size):
            return "has canary layers that are not a non-empty integer vector", where
        shape = (ev.steps.size, layers.size)
        if not (isinstance(norms, np.ndarray) and norms.dtype.kind == "f" and norms.shape == shape):
            return "has canary norms that are not a float table of a row per step and a column per canary", where
        in_range = int(layers[0]) >= 0 and (self._layers is None or int(layers[-1]) < self._layers)
        if not in_range or not bool(np.all(layers[1:] > layers[:-1])):
            return "has canary layers out of order or not of the run's layers", f"{where}: {layers.tolist()}"
        return None

    def _update(self, ev: UpdateStats) -> tuple[str, str] | None:
        where = f"update at step {ev.step}"
        if not _float_vector(ev.update_ratio):
            return "has update ratios that are not a float vector", where
        if self._layers is not None and len(ev.update_ratio) != self._layers:
            return "has per-layer arrays of another length than the run's layers", (
                f"{where}: {len(ev.update_ratio)} ratios for {self._layers} layers"
            )
        return None


_KIND: dict[type, str] = {
    RunStart: "run_start",
    StepStats: "step",
    RunSteps: "run_steps",
    UpdateStats: "update",
    Alert: "alert",
}
