"""In-process channels: a bounded event queue that never blocks its producer, and the
`Source` interface through which a viewer reads events and sends commands."""

from __future__ import annotations

import collections
import queue
import threading
from typing import Protocol

from gradtui.core.commands import Command
from gradtui.core.events import Dropped, Event


class EventQueue:
    """Bounded FIFO of events. `put` never blocks: when full, the oldest event is dropped.

    Drops are counted and handed to the consumer as a `Dropped` event ahead of the
    next events it gets, so a slow viewer knows what it missed.
    """

    def __init__(self, maxsize: int = 20_000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._items: collections.deque[Event] = collections.deque()
        self._maxsize = maxsize
        self._cond = threading.Condition(threading.Lock())
        self._dropped = 0
        self.dropped_total = 0
        self.closed = False

    def put(self, event: Event) -> None:
        """Add an event; drop the oldest one if the queue is full. Never blocks."""
        with self._cond:
            if len(self._items) >= self._maxsize:
                self._items.popleft()
                self._dropped += 1
                self.dropped_total += 1
            self._items.append(event)
            self._cond.notify()

    def close(self) -> None:
        """Wake consumers; `get` returns what is left, then None."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)

    def _take(self, max_items: int) -> list[Event]:
        out: list[Event] = []
        if self._dropped:
            out.append(Dropped(count=self._dropped, total=self.dropped_total))
            self._dropped = 0
        while self._items and len(out) < max_items:
            out.append(self._items.popleft())
        return out

    def drain(self, max_items: int = 1_000_000) -> list[Event]:
        """Everything available now (up to max_items), without waiting."""
        with self._cond:
            return self._take(max_items)

    def get(self, timeout: float | None = None) -> Event | None:
        """One event, waiting up to `timeout` seconds; None on timeout or when closed and empty."""
        with self._cond:
            if not self._items and not self._dropped and not self.closed:
                self._cond.wait(timeout)
            got = self._take(1)
            return got[0] if got else None


class Source(Protocol):
    """Where a viewer gets events from and sends commands to."""

    name: str
    """Shown in the header ("demo: sigmoid", "attach: 1234", a file name)."""
    owns_process: bool
    """True when closing this source stops a training process it started (ask first)."""

    def poll(self, max_events: int = 100_000) -> list[Event]:
        """Events that arrived since the last poll; never blocks."""
        ...

    def send(self, command: Command) -> str | None:
        """Queue a command for the probe; returns why it could not be sent, or None."""
        ...

    def close(self) -> None:
        """Stop reading (and stop a child process this source started)."""
        ...


class QueueSource:
    """A source over in-process queues: the probe's queue sink and its command queue."""

    def __init__(self, events: EventQueue, commands: queue.Queue[Command], name: str = "in-process") -> None:
        self.events = events
        self.commands = commands
        self.name = name
        self.owns_process = False

    def poll(self, max_events: int = 100_000) -> list[Event]:
        return self.events.drain(max_events)

    def send(self, command: Command) -> str | None:
        try:
            self.commands.put_nowait(command)
        except queue.Full:
            return "the probe's command queue is full"
        return None

    def close(self) -> None:
        self.events.close()
