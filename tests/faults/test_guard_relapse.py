"""Issue 28, item 9: the detectors' state rolls back with the model. On nanoGPT at LR 100, after
the guard's rollbacks, the run went on at a global norm 40x and a loss 9x their level before
the blow-up with no alert: the detectors' baselines still held the blow-up's own norms."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import gradtui
from gradtui.model.events import Alert, Event, GuardAction, RunSteps
from gradtui.model.report import summarize

PRE = 200  # healthy steps
BLOWUP = range(PRE, PRE + 12)  # the norm compounding 3x a step, the loss with it
SNAPSHOT = 190  # the healthy step the guard restores


def _steps(first: int, norms: np.ndarray, losses: np.ndarray) -> RunSteps:
    steps = np.arange(first, first + norms.size, dtype=np.int64)
    return RunSteps(step=int(steps[-1]), steps=steps, loss=losses, global_norm=norms)


def _relapse_alarms(roll_back: bool) -> list[Alert]:
    return [e for e in _relapse_events(roll_back) if isinstance(e, Alert)]


def _relapse_events(roll_back: bool) -> list[Event]:
    """The run-wide tier's history through the publishing thread's judge: healthy, a blow-up, the
    guard's rollback to a healthy step (its event), then a relapse at 40x the healthy norm."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    mon = gradtui.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), queue=100_000, serve=False, every=1)
    judge = mon._judge
    rng = np.random.default_rng(0)
    healthy = 0.36 * 10.0 ** (0.05 * rng.standard_normal(PRE))
    loss = 4.19 * 10.0 ** (0.01 * rng.standard_normal(PRE))
    for i in range(0, PRE, 20):
        judge.handle(_steps(i, healthy[i : i + 20], loss[i : i + 20]))
    k = np.arange(1, len(BLOWUP) + 1)
    judge.handle(_steps(BLOWUP.start, 0.36 * 3.0**k, 4.19 * 2.0**k))
    if roll_back:
        judge.handle(GuardAction(step=BLOWUP.stop, action="rollback", detail="rolled back", to_step=SNAPSHOT))
    judge.handle(
        _steps(BLOWUP.stop + 1, np.full(30, 15.6) * 10.0 ** (0.05 * rng.standard_normal(30)), np.full(30, 36.0))
    )
    mon.close()
    assert mon.events is not None
    return mon.events.drain()


def _up(alerts: list[Alert], kind: str, step: int) -> bool:
    """The run's `kind` flag is up at `step` (its last change at or before it raised it)."""
    changes = [a for a in alerts if a.kind == kind and a.layer is None and a.step <= step]
    return bool(changes) and changes[-1].active


def test_a_relapse_after_a_rollback_raises_the_alarm_against_the_healthy_baseline() -> None:
    alerts = _relapse_alarms(roll_back=True)
    # The rollback clears what the blow-up raised (the run is back before it) ...
    cleared = [a for a in alerts if not a.active and a.step == BLOWUP.stop]
    assert {(a.kind, a.layer) for a in cleared} >= {("exploding", None)}, alerts
    assert all("rolled the run back to step" in a.message for a in cleared)
    # ... and the relapse raises it again at once, judged against the healthy run; it stays up
    # through the relapse's first 15 steps (a longer one becomes the run's new level: the baseline
    # is the recent past, and the guard has acted on the alarm by then).
    raised = [a for a in alerts if a.active and a.kind == "exploding" and a.step > BLOWUP.stop]
    assert raised and raised[0].step == BLOWUP.stop + 1, alerts
    assert all(_up(alerts, "exploding", s) for s in range(BLOWUP.stop + 1, BLOWUP.stop + 16)), alerts


def test_without_the_rollback_the_relapse_reads_as_the_blow_ups_aftermath() -> None:
    """The reference: judged against the blow-up's norms (no rollback happened), 40x the healthy
    level is a calm-down and the flag clears; this is what the detectors said after a rollback
    before they rolled back with the model."""
    alerts = _relapse_alarms(roll_back=False)
    assert not [a for a in alerts if a.active and a.kind == "exploding" and a.step > BLOWUP.stop], alerts
    assert not _up(alerts, "exploding", BLOWUP.stop + 15), alerts


def test_the_report_recomputes_the_rollback_as_the_probe_judged_it() -> None:
    """`gradtui report` re-runs the detectors over the record: the rollback on the record takes them
    back as it took the probe's, so the report raises the relapse's alarm at the same step."""
    events = _relapse_events(roll_back=True)
    live = [(a.step, a.kind, a.layer) for a in events if isinstance(a, Alert) and a.active]
    recomputed = [(a["step"], a["kind"], a["layer"]) for a in summarize(events, recompute=True)["alerts"]]
    assert (BLOWUP.stop + 1, "exploding", None) in live
    assert recomputed == live
