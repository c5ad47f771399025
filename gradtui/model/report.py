"""Summaries of a recorded run: the `gradtui report` contract of DESIGN.md.

`Summary` folds a run's events one at a time (a record is streamed, never held whole)
and gives the report's object; `gradtui.load` uses the same `Summary` for its `alerts`
and `interventions`, so both say exactly the same thing. Every float in the object is
finite or None (JSON has no NaN). An event that does not fit the run (`RunCheck`) is
left out and counted in `skipped`, never folded: an inconsistent record is summarised,
not a traceback.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from typing import Any

import numpy as np

from gradtui.model.advice import RunFacts, suggestions
from gradtui.model.capture_summary import CaptureFold
from gradtui.model.consistency import RunCheck
from gradtui.model.events import (
    Alert,
    BadBatch,
    CommandResult,
    Event,
    GuardAction,
    RunEnd,
    RunStart,
    RunSteps,
    StepStats,
    run_rows,
    verdict_of,
)
from gradtui.model.store import RunStore

_PAUSE_WORDS = {"paused": True, "resumed": False}
"""The acknowledgements of `SetPaused` (`gradtui.model.commands.apply`)."""


def finite_or_none(x: float) -> float | None:
    """`x` as a float, or None when it is NaN or infinite."""
    value = float(x)
    return value if math.isfinite(value) else None


def alert_entry(alert: Alert) -> dict[str, Any]:
    """One entry of the report's `alerts`."""
    return {
        "step": alert.step,
        "layer": alert.layer,
        "kind": alert.kind,
        "level": alert.level,
        "value": finite_or_none(alert.value),
        "threshold": finite_or_none(alert.threshold),
    }


def _lrs(stats: StepStats) -> list[float | None]:
    return [finite_or_none(x) for x in stats.lrs]


def _clip(stats: StepStats) -> dict[str, Any]:
    return {"mode": stats.clip_mode, "threshold": finite_or_none(stats.clip_threshold)}


class Interventions:
    """The report's `interventions`: every applied command, with what was in force after it.

    Each entry has `step`, `kind` and `message`, and by kind: `set_lr` the learning rates
    (`lrs`, one per param group), `set_clip` the clipping (`clip`: `{"mode", "threshold"}`),
    `set_paused` whether the run is paused (`paused`), `release` both `lrs` and `clip`.
    They are read from the first sampled step recorded after the acknowledgement whose step
    is at or after the command's (None when the record has no such step); `paused` comes
    from the acknowledgement itself. Commands of an unknown kind carry only the three keys.
    """

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._waiting: list[dict[str, Any]] = []

    def add(self, event: Event) -> None:
        if isinstance(event, CommandResult):
            if event.ok:
                self._acknowledged(event)
        elif isinstance(event, StepStats) and self._waiting:
            still = []
            for entry in self._waiting:
                if event.step >= entry["step"]:
                    self._fill(entry, event)
                else:
                    still.append(entry)
            self._waiting = still

    def _acknowledged(self, result: CommandResult) -> None:
        entry: dict[str, Any] = {"step": result.step, "kind": result.kind, "message": result.message}
        if result.kind in ("set_lr", "release"):
            entry["lrs"] = None
        if result.kind in ("set_clip", "release"):
            entry["clip"] = None
        if result.kind == "set_paused":
            entry["paused"] = _PAUSE_WORDS.get(result.message.split(":")[0])
        self.entries.append(entry)
        if len(entry) > 3:
            self._waiting.append(entry)

    @staticmethod
    def _fill(entry: dict[str, Any], stats: StepStats) -> None:
        if "lrs" in entry:
            entry["lrs"] = _lrs(stats)
        if "clip" in entry:
            entry["clip"] = _clip(stats)
        if "paused" in entry and entry["paused"] is None:
            entry["paused"] = bool(stats.paused)


def _finite(values: array[float]) -> np.ndarray:
    a = np.frombuffer(values, dtype=np.float64) if len(values) else np.zeros(0)
    return a[np.isfinite(a)]


def spread(values: array[float]) -> dict[str, float | None]:
    """`{"median", "max"}` over the finite values (None when there are none)."""
    a = _finite(values)
    if not a.size:
        return {"median": None, "max": None}
    return {"median": float(np.median(a)), "max": float(a.max())}


class Summary:
    """Fold a run's events, in order, into the report's object (`result()`).

    Args:
        detector_config: a `DetectorConfig` for offline detection (None: defaults).
        recompute: run the detectors offline over the recorded statistics (so that
            thresholds can be changed after the fact); False keeps the alerts the probe
            recorded online.
    """

    def __init__(self, *, detector_config: Any = None, recompute: bool = True) -> None:
        self.recompute = recompute
        self.detector_config = detector_config
        self.check = RunCheck()
        """Which events make up the run; what was left out is in its `skipped`."""
        self._reset()

    def _reset(self) -> None:
        """Forget the run so far: another run starts in the same record."""
        self.store = RunStore(capacity=1, run_capacity=1)
        self.detectors: Any = None
        self.alerts: list[Alert] = []
        self.interventions = Interventions()
        self.start: RunStart | None = None
        self.end: RunEnd | None = None
        self.last: StepStats | None = None
        self.last_step = -1
        """The newest step seen, sampled or not."""
        self.loss_first: float | None = None
        self.loss_last: float | None = None
        self.loss_min: float | None = None
        self.guard: list[dict[str, Any]] = []
        self.bad_batches: list[dict[str, Any]] = []
        self.global_norms: array[float] = array("d")
        """The global norm of every step (sampled or not), in step order."""
        self.norm_steps: array[int] = array("q")
        self.first_weights: np.ndarray | None = None
        self.stepped_norms: array[float] = array("d")
        self.capture = CaptureFold()
        """The run's deep captures (`gradtui.model.capture_summary`)."""

    def add(self, event: Event) -> bool:
        """Fold one event; False when it does not fit the run and was left out."""
        segment = self.check.segment
        if self.check.check(event) is not None:
            return False
        if self.check.segment != segment:
            self._reset()
        if isinstance(event, Alert):
            if self.recompute:
                return True  # the detectors raise their own
            self.alerts.append(event)
        elif isinstance(event, RunStart):
            self.start = event
            self.capture.n_layers = len(event.layers)
            if self.recompute:
                from gradtui.model.detectors import Detectors

                names = [layer.name for layer in event.layers]
                numel = [layer.numel for layer in event.layers]
                self.detectors = Detectors(names, self.detector_config, numel=numel)
        elif isinstance(event, StepStats):
            self._step(event)
        elif isinstance(event, RunSteps):
            self._run_steps(event)
        elif isinstance(event, RunEnd):
            self.end = event
        elif isinstance(event, GuardAction):
            self.guard.append({"step": event.step, "action": event.action, "detail": event.detail})
            if self.detectors is not None and event.action == "rollback" and event.to_step is not None:
                self._raised(self.detectors.rolled_back(event.to_step, event.step))  # as the probe's did
        elif isinstance(event, BadBatch):
            self.bad_batches.append({"step": event.step, "why": event.why, "batch": event.batch})
        self.capture.add(event)
        self.interventions.add(event)
        self.store.apply(event)
        return True

    def _step(self, event: StepStats) -> None:
        self.last = event
        if self.recompute and self.detectors is None and self.start is None:
            # No RunStart (lost to damage, or a stream joined mid-run): layers named by index, as the store does.
            from gradtui.model.detectors import Detectors

            self.detectors = Detectors([f"layer{i}" for i in range(len(event.grad_norm))], self.detector_config)
        if self.detectors is not None:
            self._raised(self.detectors.update(event))
        self._run_wide(event.step, event.loss, event.global_norm)
        if self.first_weights is None and event.weight_norm is not None:
            self.first_weights = np.asarray(event.weight_norm, np.float64)
        self.stepped_norms.append(float(event.stepped_norm))

    def _run_steps(self, event: RunSteps) -> None:
        """Unsampled steps (`RunCheck` has made sure the arrays agree): each through the
        detectors' run-wide rules, one by one and in step order, as the probe fed them."""
        for step, loss, norm, canary in run_rows(event):
            if self.detectors is not None:
                self._raised(self.detectors.update_run(step, loss, norm, canary))
            self._run_wide(step, loss, norm)

    def _raised(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.store.apply(alert)
            self.alerts.append(alert)

    def _run_wide(self, step: int, loss: float, norm: float | None) -> None:
        """The loss and global norm (None: not measured) of one step, sampled or not."""
        self.last_step = max(self.last_step, step)
        value = finite_or_none(loss)
        if value is not None:
            if self.loss_first is None:
                self.loss_first = value
            self.loss_last = value
            self.loss_min = value if self.loss_min is None else min(self.loss_min, value)
        if norm is not None:
            self.global_norms.append(float(norm))
            self.norm_steps.append(step)

    @property
    def status(self) -> str:
        """How the run ended: "ok", "error", "interrupted", or "unfinished" without a RunEnd."""
        return self.end.status if self.end else "unfinished"

    def alert_entries(self) -> list[dict[str, Any]]:
        """The report's `alerts`: every flag raised, in order."""
        return [alert_entry(a) for a in self.alerts if a.active]

    def suggestions(self) -> list[dict[str, Any]]:
        """The report's `suggestions`: what to change, per alarm kind (see `gradtui.model.advice`)."""
        facts = RunFacts(
            start=self.start,
            alerts=self.alerts,
            steps=np.frombuffer(self.norm_steps, dtype=np.int64) if len(self.norm_steps) else np.zeros(0, np.int64),
            global_norm=np.frombuffer(self.global_norms, dtype=np.float64) if len(self.global_norms) else np.zeros(0),
            weight_norm=self.first_weights,
            bad_batches=self.bad_batches,
            clip=(self.last.clip_mode, self.last.clip_threshold) if self.last is not None else None,
            origins=self.capture.origins,
            capture=self.capture.data(),
        )
        return suggestions(facts)

    def result(self) -> dict[str, Any]:
        """The report's object (see DESIGN.md and README "Commands")."""
        start, end, last, store = self.start, self.end, self.last, self.store
        names = [layer.name for layer in (start.layers if start else store.layers)]
        layers = []
        for i, name in enumerate(names):
            norm = None
            if last is not None and i < len(last.grad_norm) and bool(last.has_grad[i]):
                norm = finite_or_none(last.grad_norm[i])
            layers.append({"name": name, "verdict": verdict_of(store.layer_flags(name)), "last_grad_norm": norm})
        if end is not None and end.step >= 0:
            steps = end.step
        else:
            steps = self.last_step + 1  # every step is seen (sampled ones and the others alike)
        return {
            "run": start.run if start else None,
            "steps": steps,
            "sampled_steps": store.total_steps,
            "status": self.status,
            "first_nonfinite_step": store.first_nonfinite_step,
            "first_nonfinite_layers": list(store.first_nonfinite_layers),
            "layers": layers,
            "alerts": self.alert_entries(),
            "interventions": [dict(entry) for entry in self.interventions.entries],
            "guard": [dict(entry) for entry in self.guard],
            "bad_batches": [dict(entry) for entry in self.bad_batches],
            "suggestions": self.suggestions(),
            "loss": {"first": self.loss_first, "last": self.loss_last, "min": self.loss_min},
            "global_norm": spread(self.global_norms),
            "stepped_norm": spread(self.stepped_norms),
            "error": end.error if end and end.error else None,
            "skipped": self.check.entries(),
            "capture": self.capture.section(names),
        }


def summarize(events: Iterable[Event], *, detector_config: Any = None, recompute: bool = True) -> dict[str, Any]:
    """Summarise a run's events (see `Summary`).

    Args:
        events: the events of a record, in order (any iterable: a record can be streamed).
        detector_config: a `DetectorConfig` for offline detection (None: defaults).
        recompute: re-run the detectors (True) or keep the recorded alerts (False).
    """
    summary = Summary(detector_config=detector_config, recompute=recompute)
    for event in events:
        summary.add(event)
    return summary.result()
