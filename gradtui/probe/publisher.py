"""The probe's publishing thread: what need not happen before `optimizer.step` happens here.

`mon.step` measures the gradients, clips and applies commands on the training thread; the
rest of a sampled step (turning its host copy into events, the detectors, encoding, the
record and the viewers) runs on this thread while the loop goes on with its optimizer step
and the next forward and backward (torch and NumPy release the GIL in their kernels).
Events keep the order they were made in: every event of the monitor goes through here
once the run has started. A backlog (a slow disk) is bounded: past `MAX_BACKLOG` items the
training thread waits, as it did when it wrote the record itself.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradtui.probe.stats import StepMeta

log = logging.getLogger("gradtui")

MAX_BACKLOG = 256
"""Items queued before `put` waits for the thread (a sampled step is one item; its alerts are made on the thread)."""


@dataclass(frozen=True, slots=True)
class Sampled:
    """A sampled step's host copy, on its way to the publishing thread."""

    values: np.ndarray
    meta: StepMeta
    stepped_factor: float


class Publisher:
    """One daemon thread running `handle` on each item `put`, in order.

    Args:
        handle: Called on the thread for each item; an exception is logged and the next item
            handled (the monitor must never be the reason a run stops).
        name: The thread's name.
    """

    def __init__(self, handle: Callable[[object], None], name: str = "gradtui-publish") -> None:
        self._handle = handle
        self._items: deque[object] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._busy = False
        self._closing = False
        self._halting = False
        self._halted = threading.Event()
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.ident = self._thread.ident
        """The thread's id: an event made on the thread itself is handled at once, not queued."""

    def put(self, item: object) -> None:
        """Queue `item` (waits only while MAX_BACKLOG items are queued)."""
        with self._cond:
            while len(self._items) >= MAX_BACKLOG and self._thread.is_alive() and not self._halting:
                self._cond.wait(0.05)
            self._items.append(item)
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every item queued so far is handled; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._items or self._busy) or not self._thread.is_alive(), timeout)

    def close(self, timeout: float | None = None) -> None:
        """Handle what is queued, then stop the thread."""
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

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._items and not (self._closing or self._halting):
                        self._cond.wait(0.1)
                    if not self._items:
                        return
                    item = self._items.popleft()
                    self._busy = True
                try:
                    self._handle(item)
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
