"""Training speed: steps per second over the last few seconds of running time.

The probe measures it at each sampled step (`StepStats.steps_per_sec`). A mean of
per-interval rates overstates it whenever the intervals vary: a loop paced at 20 steps/s
that catches up after one late step has one interval of a few milliseconds (a rate of
several hundred), and an average of rates was 116/s on such a loop. Counting the steps
over the time they took does not care how the time was split between them.
"""

from __future__ import annotations

import collections
import math

RATE_WINDOW = 2.0
"""Seconds of running time the rate is measured over (at least the last two samples)."""
MAX_SAMPLES = 256
"""Samples kept at most: a fast run measures over its last 256 steps instead of 2 s, so the
probe's memory stays flat whatever the step rate."""


class StepRate:
    """Steps per second over the last `window` seconds, paused time left out.

    Args:
        window: Seconds of running time to measure over.
    """

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=MAX_SAMPLES)
        self._paused = 0.0
        self.rate = 0.0
        """The rate at the last sample (0 until two samples are apart in time)."""

    def pause(self, seconds: float) -> None:
        """Leave `seconds` (the run was paused) out of the time the next steps took."""
        self._paused += max(0.0, seconds)

    def update(self, step: int, now: float) -> float:
        """Add a sample (`step` reached at monotonic time `now`); returns the rate."""
        t = now - self._paused
        samples = self._samples
        if samples and step <= samples[-1][1]:
            return self.rate  # not a later step: nothing to measure
        samples.append((t, step))
        # Keep the newest sample that is at least `window` old as the start of the window.
        while len(samples) > 2 and t - samples[1][0] >= self.window:
            samples.popleft()
        t0, s0 = samples[0]
        if t > t0:
            self.rate = (step - s0) / (t - t0)
        return self.rate


def shown_rate(measured: float, *, paused: bool, ended: bool) -> float | None:
    """The speed a viewer shows: the measured rate, 0 while paused, None (no speed) once the run ended.

    Args:
        measured: The latest `StepStats.steps_per_sec`.
        paused: The run is paused (as far as the viewer knows).
        ended: The run has ended.
    """
    if ended or math.isnan(measured):
        return None
    return 0.0 if paused else measured
