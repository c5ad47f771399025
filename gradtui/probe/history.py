"""What a viewer that attaches late is sent first: the run's start, its recent steps (sampled
ones, the unsampled steps between them and the updates) and its recent other events (alerts,
acknowledgements, log lines), bounded in count and bytes."""

from __future__ import annotations

import collections
from operator import itemgetter

from gradtui.model.events import Dropped, Event, RunStart, RunSteps, StepStats, UpdateStats

_STEP_EVENTS = (StepStats, RunSteps, UpdateStats)
"""Kept in step order with the sampled steps, and dropped with them, oldest first."""


class History:
    """What a new viewer is sent first: RunStart, recent steps, recent other events. Bounded.

    `max_steps` counts sampled steps (`StepStats`); the unsampled steps (`RunSteps`) and updates
    between them are kept with them and go with them, and `max_bytes` bounds all of these together.
    """

    def __init__(self, max_steps: int, max_bytes: int, max_other: int) -> None:
        self.start: bytes | None = None
        self._steps: collections.deque[tuple[int, bool, bytes]] = collections.deque()
        self._n_steps = 0
        self._step_bytes = 0
        self._other: collections.deque[tuple[int, bool, bytes]] = collections.deque(maxlen=max_other)
        self._max_steps = max_steps
        self._max_bytes = max_bytes
        self._seq = 0

    def add(self, event: Event, frame: bytes) -> None:
        self._seq += 1
        if isinstance(event, RunStart):
            if self.start is not None:
                # A second RunStart on one stream restarts the viewer's store: restart ours too.
                self._steps.clear()
                self._other.clear()
                self._n_steps = self._step_bytes = 0
            self.start = frame
        elif isinstance(event, _STEP_EVENTS):
            is_step = isinstance(event, StepStats)
            self._steps.append((self._seq, is_step, frame))
            self._n_steps += is_step
            self._step_bytes += len(frame)
            evicted = False
            while self._steps and (self._n_steps > self._max_steps or self._step_bytes > self._max_bytes):
                evicted |= self._drop_oldest()
            # What came after a sampled step that left (its update, the unsampled steps after it) goes
            # too: the history starts at its oldest sampled step.
            while evicted and self._steps and not self._steps[0][1] and self._n_steps:
                self._drop_oldest()
        elif not isinstance(event, Dropped):
            self._other.append((self._seq, False, frame))

    def _drop_oldest(self) -> bool:
        """Forget the oldest step frame; True when it was a sampled step's."""
        _, was_step, old = self._steps.popleft()
        self._n_steps -= was_step
        self._step_bytes -= len(old)
        return was_step

    def snapshot(self) -> list[bytes]:
        out = [self.start] if self.start is not None else []
        # Two runs already in order: sorting them is a merge in C, under the lock the dispatcher needs.
        out.extend(frame for _, _, frame in sorted([*self._steps, *self._other], key=itemgetter(0)))
        return out

    def __len__(self) -> int:
        return len(self._steps) + len(self._other) + (self.start is not None)

    @property
    def nbytes(self) -> int:
        return self._step_bytes + sum(len(f) for _, _, f in self._other) + len(self.start or b"")
