"""What a viewer that attaches late is sent first: the run's start, its recent steps and its
recent other events (alerts, acknowledgements, log lines), bounded in count and bytes."""

from __future__ import annotations

import collections
import heapq

from gradtui.model.events import Dropped, Event, RunStart, StepStats, UpdateStats

_STEP_EVENTS = (StepStats, UpdateStats)


class History:
    """What a new viewer is sent first: RunStart, recent steps, recent other events. Bounded."""

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
            while self._steps and (self._n_steps > self._max_steps or self._step_bytes > self._max_bytes):
                _, was_step, old = self._steps.popleft()
                self._n_steps -= was_step
                self._step_bytes -= len(old)
        elif not isinstance(event, Dropped):
            self._other.append((self._seq, False, frame))

    def snapshot(self) -> list[bytes]:
        out = [self.start] if self.start is not None else []
        out.extend(frame for _, _, frame in heapq.merge(self._steps, self._other, key=lambda x: x[0]))
        return out

    def __len__(self) -> int:
        return len(self._steps) + len(self._other) + (self.start is not None)

    @property
    def nbytes(self) -> int:
        return self._step_bytes + sum(len(f) for _, _, f in self._other) + len(self.start or b"")
