"""The probe's publishing thread: what need not happen before `optimizer.step` happens here.

`mon.step` measures the gradients, clips and applies commands on the training thread; the
rest of a sampled step (turning its host copy into events, the detectors, encoding, the
record and the viewers) runs on this thread while the loop goes on with its optimizer step
and the next forward and backward (torch and NumPy release the GIL in their kernels).
Events keep the order they were made in: every event of the monitor goes through here
once the run has started. A backlog (a slow disk) is bounded: past `MAX_BACKLOG` items the
training thread waits, as it did when it wrote the record itself.

Gated (`gated`, set once the monitor has a signal at the start of each backward pass, see
`gradtui.probe.backward`), the thread holds what is queued until `release` and handles it
while backward runs without the GIL, not during the optimizer step and the next forward, whose
Python calls would wait on it. Without a release within `GATE_WAIT_S` it goes on anyway.
Calm sampled steps may gather first (`put(gather=True)`, up to `BATCH_ITEMS` or `BATCH_AGE_S`):
handled back to back, each finds the code and data it needs still in cache. On the 50x128 MLP
at `every=1` a sampled step took 340 us of the thread's time in batches of 8, against 640 us
one at a time. Any other item is handled at the next release, as are those gathered before it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradtui.probe.backward import BackwardStart, FillOrder
from gradtui.probe.packed import StepMeta

log = logging.getLogger("gradtui")

MAX_BACKLOG = 256
"""Items queued before `put` waits for the thread (a sampled step is one item; its alerts are made on the thread)."""
BATCH_ITEMS = 8
"""Items that may gather (`Publisher.put`) before a backward pass releases them."""
BATCH_AGE_S = 0.2
"""... or for at most this long, so that a viewer follows a slow run live."""
GATE_WAIT_S = 0.5
"""Longest a queued item waits for a gated thread's release (a backward pass that sends no signal)."""
SETTLE_S = 0.2
"""Longest `settle` waits (the guard, at each step, for the judgement of the steps before)."""
SETTLE_ITEMS = 8
"""... and only while at most this many items are queued (a longer backlog is a stalled sink)."""
SETTLE_PAUSE = 50
"""Steps `settle` does not wait after a wait ran out."""


@dataclass(frozen=True, slots=True)
class Sampled:
    """A sampled step's host copy, on its way to the publishing thread."""

    values: np.ndarray
    meta: StepMeta
    stepped_factor: float
    gather: bool = False
    """Its judgement may wait for the next sampled steps' (see `Publisher.put`)."""


class Publisher:
    """One daemon thread running `handle` on each item `put`, in order.

    Args:
        handle: Called on the thread for each item; an exception is logged and the next item
            handled (the monitor must never be the reason a run stops).
        name: The thread's name.
        idle: Called on the thread once it has handled every item queued (after a batch).
    """

    def __init__(
        self, handle: Callable[[object], None], name: str = "gradtui-publish", idle: Callable[[], None] | None = None
    ) -> None:
        self._handle = handle
        self._idle = idle
        self._items: deque[object] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._busy = False
        self._closing = False
        self._halting = False
        self._halted = threading.Event()
        self._failures = 0
        self.gated = False
        """Hold queued items until `release` (or `GATE_WAIT_S`): set by the monitor."""
        self._open = False
        """Released: handle what is queued until the queue is empty."""
        self._now = False
        """An item that may not gather is queued: the next release handles the queue."""
        self._since = 0.0
        """When the oldest queued item came (monotonic seconds)."""
        self._backward: BackwardStart | None = None
        self._settles_from = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.ident = self._thread.ident
        """The thread's id: an event made on the thread itself is handled at once, not queued."""

    def put(self, item: object, gather: bool = False) -> None:
        """Queue `item` (waits only while MAX_BACKLOG items are queued). `gather`: a gated thread
        may let it wait for more items (`BATCH_ITEMS`, `BATCH_AGE_S`) before a release."""
        with self._cond:
            while len(self._items) >= MAX_BACKLOG and self._thread.is_alive() and not self._halting:
                self._open = True
                self._cond.wait(0.05)
            if not self._items:
                self._since = time.monotonic()
            self._items.append(item)
            self._now = self._now or not gather
            if not self.gated or self._open:
                self._cond.notify_all()

    def follow(self, order: FillOrder) -> None:
        """Work while backward runs: gated, released as each backward pass begins (`probe.backward`)."""
        if self._backward is None:
            self._backward = BackwardStart(order, self.release)
            self.gated = self._backward.active

    @property
    def following(self) -> bool:
        return self._backward is not None

    def settle(self, step: int) -> None:
        """At `step`, wait (briefly) until what earlier steps queued is handled: the guard then acts on
        their alarms at this step, however loaded the machine. Usually it is done already (it works
        while backward runs); a thread held up longer (a stalled disk) is not waited for again for a
        while: the monitor never stalls the run."""
        if step < self._settles_from or self.backlog > SETTLE_ITEMS:
            return
        if not self.flush(SETTLE_S):
            self._settles_from = step + SETTLE_PAUSE

    def release(self, now: bool = False) -> None:
        """Handle what is queued now, unless it may gather for longer and not `now` (a gated thread:
        from the hook at the start of backward)."""
        items = self._items  # read without the lock: an item queued just after is handled at the next release
        if items and (now or self._now or len(items) >= BATCH_ITEMS or time.monotonic() - self._since >= BATCH_AGE_S):
            with self._cond:
                self._open = True
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every item queued so far is handled; False on timeout."""
        with self._cond:
            if self._items:
                self._open = True
                self._cond.notify_all()
            return self._cond.wait_for(lambda: not (self._items or self._busy) or not self._thread.is_alive(), timeout)

    def close(self, timeout: float | None = None) -> None:
        """Handle what is queued, then stop the thread."""
        if self._backward is not None:
            self._backward.remove()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def halt(self, timeout: float) -> bool:
        """From a signal handler: handle what is queued within `timeout`, then stop; True when the
        thread has stopped (nothing is being written any more). Takes no lock that code it may
        have interrupted on this thread holds."""
        self._halting = True
        return self._halted.wait(timeout)

    @property
    def busy(self) -> bool:
        """Whether the thread is handling an item right now (read without a lock)."""
        return self._busy

    @property
    def backlog(self) -> int:
        """Items queued and not handled yet."""
        return len(self._items) + self._busy

    def _due(self) -> bool:
        """Whether the thread goes on now (with the lock held): an item to handle, or the end."""
        if self._closing or self._halting:
            return True
        if not self._items:
            return False
        return not self.gated or self._open or time.monotonic() - self._since >= GATE_WAIT_S

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._due():
                        wait = GATE_WAIT_S - (time.monotonic() - self._since) if self._items else 0.1
                        self._cond.wait(max(wait, 0.001))
                    if not self._items:
                        return
                    item = self._items.popleft()
                    self._busy = True
                    if not self._items:
                        self._open = self._now = False  # the next items wait for the next release
                try:
                    self._handle(item)
                    if self._idle is not None and not self._items:  # read without the lock: at worst a step late
                        self._idle()
                except Exception:
                    self._failures += 1
                    if self._failures <= 3:
                        log.exception("gradtui: could not publish a step's events (training goes on)")
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            self._halted.set()
            with self._cond:
                self._cond.notify_all()
