"""Summaries of a recorded run: the `gradtui report` contract of DESIGN.md."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from gradtui.model.events import Alert, Event, RunEnd, RunStart, StepStats, verdict_of
from gradtui.model.store import RunStore


def summarize(events: Iterable[Event], *, detector_config: Any = None, recompute: bool = True) -> dict[str, Any]:
    """Summarise a run's events.

    Args:
        events: the events of a record, in order.
        detector_config: a `DetectorConfig` for offline detection (None: defaults).
        recompute: run the detectors offline over the recorded statistics (so that
            thresholds can be changed after the fact); False keeps the alerts the probe
            recorded online.
    """
    store = RunStore(capacity=1)
    detectors = None
    alerts: list[Alert] = []
    last: StepStats | None = None
    start: RunStart | None = None
    end: RunEnd | None = None
    for event in events:
        if isinstance(event, Alert):
            if recompute:
                continue
            alerts.append(event)
        elif isinstance(event, RunStart):
            start = event
            if recompute:
                from gradtui.model.detectors import Detectors

                names = [layer.name for layer in event.layers]
                numel = [layer.numel for layer in event.layers]
                detectors = Detectors(names, detector_config, numel=numel)
        elif isinstance(event, StepStats):
            last = event
            if detectors is not None:
                for alert in detectors.update(event):
                    store.apply(alert)
                    alerts.append(alert)
        elif isinstance(event, RunEnd):
            end = event
        if not (recompute and isinstance(event, Alert)):
            store.apply(event)

    names = [layer.name for layer in (start.layers if start else store.layers)]
    layers = []
    for i, name in enumerate(names):
        norm = None
        if last is not None and i < len(last.grad_norm) and bool(last.has_grad[i]):
            value = float(last.grad_norm[i])
            norm = value if math.isfinite(value) else None
        layers.append({"name": name, "verdict": verdict_of(store.layer_flags(name)), "last_grad_norm": norm})

    if end is not None and end.step >= 0:
        steps = end.step
    else:
        steps = last.step + 1 if last is not None else 0
    return {
        "run": start.run if start else None,
        "steps": steps,
        "sampled_steps": store.total_steps,
        "status": end.status if end else "unfinished",
        "first_nonfinite_step": store.first_nonfinite_step,
        "first_nonfinite_layers": list(store.first_nonfinite_layers),
        "layers": layers,
        "alerts": [
            {
                "step": a.step,
                "layer": a.layer,
                "kind": a.kind,
                "value": a.value if math.isfinite(a.value) else None,
                "threshold": a.threshold if math.isfinite(a.threshold) else None,
            }
            for a in alerts
            if a.active
        ],
        "interventions": [
            {"step": r.step, "kind": r.kind, "message": r.message} for r in store.results if r.ok
        ],
        "error": end.error if end and end.error else None,
    }
