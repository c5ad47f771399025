"""What the publishing thread does with a step: a sampled step's host copy becomes events, every
step's run-wide values go through the detectors, and their alarms start what they start
(sampling every step, a bad batch on the ledger, the guard's judgement).

Runs on the probe's publishing thread (`gradtui.probe.publisher`), or inline where there is
none; the training thread reads only `limits`, a tuple replaced whole.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradtui.model.detector_config import DetectorConfig
from gradtui.model.detectors import Detectors, Limits
from gradtui.model.events import BLOWUP_KINDS, Alert, GuardAction, RunSteps, StepStats, run_rows
from gradtui.probe.budget import Sampler
from gradtui.probe.capture import CAPTURE_SEGMENTS, CaptureDecoder, DeepCapture, split
from gradtui.probe.guard import Keeper, Ledger
from gradtui.probe.layers import Layer
from gradtui.probe.packed import publish
from gradtui.probe.publisher import Sampled
from gradtui.probe.sinks import Outputs
from gradtui.probe.stats import GradStats
from gradtui.probe.stepped import Placement
from gradtui.wire import env


def make_detectors(detectors: Any, layers: Sequence[Layer]) -> Detectors | None:
    """The detectors `watch(detectors=...)` asks for (True: the defaults, or `GRADTUI_DETECTORS`)."""
    if detectors is False or detectors is None:
        return None
    config = detectors if isinstance(detectors, DetectorConfig) else None
    if config is None and detectors is not True:
        raise TypeError(f"detectors must be True, False or a DetectorConfig, got {type(detectors).__name__}")
    spec = env.get(env.DETECTORS_ENV)
    if config is None and spec:
        try:
            config = DetectorConfig.parse(part for part in spec.split(",") if part.strip())
        except ValueError as exc:
            raise ValueError(f"{env.DETECTORS_ENV}: {exc}") from None
    numel = [sum(p.numel() for p in layer.params) for layer in layers]
    return Detectors([layer.name for layer in layers], config, numel=numel)


class Judge:
    """Turns the publishing thread's items into events and judges them (rank 0 only)."""

    def __init__(
        self,
        outputs: Outputs,
        stats: GradStats,
        lanes: bool,
        sampler: Sampler,
        detectors: Detectors | None,
        placement: Placement,
        ledger: Ledger,
        guard: Keeper | None,
        capture: DeepCapture | None = None,
    ) -> None:
        self._outputs = outputs
        self._n = stats.n
        self._host_loss = stats.device.type == "cpu"
        self._lanes = lanes
        self._sampler = sampler
        self.detectors = detectors
        self._placement = placement
        self._ledger = ledger
        self._guard = guard
        self._capture = capture
        self._decoder = CaptureDecoder(stats.n)
        self._slow_seen = False
        """A vanishing or dead alarm has armed its one capture."""
        self.limits = Limits(math.inf, math.inf, np.full(stats.n, math.inf))
        """What has an unsampled step sampled whole (`Detectors.run_limits`)."""
        self._stale = False
        """The detectors moved since `limits` was made."""

    def handle(self, item: object) -> None:
        """A sampled step, the run-wide values of unsampled steps, or an event made elsewhere."""
        if isinstance(item, RunSteps):
            began = time.thread_time()
            try:
                self._runs(item)
            finally:
                self._sampler.published_run(time.thread_time() - began, len(item.steps))
        elif isinstance(item, Sampled):
            began = time.thread_time()
            try:
                self._sampled(item)
            finally:
                self._sampler.published(time.thread_time() - began)
        else:
            self._outputs.emit(item)  # type: ignore[arg-type]
            rollback = isinstance(item, GuardAction) and item.action == "rollback" and item.to_step is not None
            if rollback and self.detectors is not None:
                assert isinstance(item, GuardAction) and item.to_step is not None
                # The detectors go back with the model, or a relapse would be judged against the
                # blow-up's own norms.
                self._alerts(item.step, self.detectors.rolled_back(item.to_step, item.step), None)
                self._stale = True

    def _sampled(self, item: Sampled) -> None:
        stats, update = publish(item.values, item.meta, self._n, self._lanes, item.stepped_factor)
        self._placement.global_norm(stats.global_norm, stats.grad_norm)
        if update is not None:
            self._outputs.emit(update)
        self._outputs.emit(stats)
        if item.meta.capture is not None:
            parts = split(item.values, item.meta.layout, CAPTURE_SEGMENTS)
            for event in self._decoder.events(parts, item.meta.capture, stats.step, stats.loss, stats.global_norm):
                self._outputs.emit(event)
        # Not the loss: NaN there is also "no loss given" (a non-finite loss makes the gradients so).
        if self._capture is not None and (not math.isfinite(stats.global_norm) or bool(np.any(stats.nonfinite))):
            self._capture.trouble(stats.step)
        sampler = self._sampler
        sampler.check(stats.step, stats.global_norm)
        if not self._host_loss:
            sampler.check(stats.step, stats.loss)  # not read at each step there: that would be a sync
        if self.detectors is not None:
            self._alerts(stats.step, self.detectors.update(stats), stats)
            self._stale = True

    def _runs(self, event: RunSteps) -> None:
        self._outputs.emit(event)
        detectors = self.detectors
        if detectors is None:
            return
        for step, loss, norm, canary in run_rows(event):
            if norm is not None:
                self._sampler.check(step, norm)
            if self._capture is not None and norm is not None and not math.isfinite(norm):
                self._capture.trouble(step)
            self._alerts(step, detectors.update_run(step, loss, norm, canary), None)
        self._stale = True

    def screens(self) -> None:
        """The detectors' screens for the training thread, once it has caught up (not after each of a
        batch of steps): a budget samples unusual steps whole, and at any stride an unusual sampled
        step is judged at once (`RunWide.calm`)."""
        if self._stale and self.detectors is not None:
            self._stale = False
            self.limits = self.detectors.run_limits()

    def _alerts(self, step: int, alerts: list[Alert], stats: StepStats | None) -> None:
        for alert in alerts:
            self._outputs.emit(alert)
            # A vanishing or dead layer stays so: one capture shows it, and it is asked once a run
            # (a blow-up may come back after a rollback: each comes with its own).
            slow = alert.kind not in BLOWUP_KINDS
            if alert.active and alert.level != "info" and self._capture is not None and not (slow and self._slow_seen):
                where = f"on layer {alert.layer!r}" if alert.layer is not None else "run-wide"
                why = f"{alert.kind} alarm ({alert.level}) {where} at step {step}"
                asked = self._capture.request(0, why, auto=True)
                self._slow_seen = self._slow_seen or (slow and asked)
            if alert.active and alert.kind in BLOWUP_KINDS:
                # Any level, info included: what grows within steps is watched at every step for a
                # while. A vanishing or dead layer stays so for thousands of steps and is seen at any
                # stride (its persistence counts steps); sampling every step for it would only cost.
                self._sampler.trouble(step)
                if self._capture is not None:
                    self._capture.watchful(step)
                if alert.kind == "loss_spike" and alert.level != "info":
                    self._ledger.note(step, "loss_spike")
        if self._guard is not None:
            self._guard.observe(step, alerts, stats)


__all__ = ["Judge"]
