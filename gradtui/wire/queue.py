"""Bounded queues that never block their producer, and the in-process source over them.

`DropQueue` is the one drop-oldest buffer of the project: the probe's in-process event
queue, the server's inbox and every viewer's outgoing frames, and a viewer's incoming
events all use it. Training never waits on a consumer: when a queue is full the oldest
item goes, and the number dropped reaches the consumer with the next items it takes.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from gradtui.model.commands import Command
from gradtui.model.events import Dropped, Event

T = TypeVar("T")


class DropQueue(Generic[T]):
    """Bounded FIFO. `put` never blocks: beyond `maxsize` items (or `max_bytes`, measured
    with `size`), the oldest items are dropped and counted.

    Args:
        maxsize: Most items held.
        max_bytes: Most bytes held (with `size`); None for no byte bound. The newest item
            is always kept, however large.
        size: The size of an item in bytes (needed with `max_bytes`).
    """

    def __init__(self, maxsize: int, *, max_bytes: int | None = None, size: Callable[[T], int] | None = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if (max_bytes is None) != (size is None):
            raise ValueError("max_bytes and size go together")
        self._items: collections.deque[T] = collections.deque()
        self._maxsize = maxsize
        self._max_bytes = max_bytes
        self._size = size
        self._bytes = 0
        self._cond = threading.Condition(threading.Lock())
        self._dropped = 0
        self.dropped_total = 0
        """Items dropped since the queue was made."""
        self.closed = False

    def put(self, item: T) -> None:
        """Add an item, dropping the oldest ones beyond the bounds. Never blocks; ignored once closed."""
        with self._cond:
            if self.closed:
                return
            self._items.append(item)
            if self._size is not None:
                self._bytes += self._size(item)
            while len(self._items) > 1 and (
                len(self._items) > self._maxsize or (self._max_bytes is not None and self._bytes > self._max_bytes)
            ):
                old = self._items.popleft()
                if self._size is not None:
                    self._bytes -= self._size(old)
                self._dropped += 1
                self.dropped_total += 1
            self._cond.notify()

    def close(self) -> None:
        """Refuse new items and wake consumers; `take` returns what is left, then None."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)

    def take(
        self, max_items: int = 1_000_000, *, timeout: float | None = 0.0, max_bytes: int | None = None
    ) -> tuple[list[T], int] | None:
        """The items ready now (waiting up to `timeout` s for one; None waits for ever) and how many
        were dropped before them; None once closed and empty.

        Args:
            max_items: Take at most this many.
            timeout: How long to wait when empty.
            max_bytes: Stop before this many bytes (with `size`); at least one item is taken.
        """
        with self._cond:
            if not self._items and not self._dropped and not self.closed and timeout != 0.0:
                self._cond.wait(timeout)
            if not self._items and not self._dropped and self.closed:
                return None
            out: list[T] = []
            total = 0
            while self._items and len(out) < max_items:
                if max_bytes is not None and self._size is not None and out:
                    if total + self._size(self._items[0]) > max_bytes:
                        break
                item = self._items.popleft()
                if self._size is not None:
                    n = self._size(item)
                    total += n
                    self._bytes -= n
                out.append(item)
            dropped, self._dropped = self._dropped, 0
            return out, dropped


class EventQueue(DropQueue[Event]):
    """A `DropQueue` of events whose drops reach the consumer as a `Dropped` event, ahead of
    the events that follow them, so a slow viewer knows what it missed."""

    def __init__(self, maxsize: int = 20_000) -> None:
        super().__init__(maxsize)
        self.settle: Callable[[], object] | None = None
        """Called before each read: a producer that sends from a thread of its own catches up."""

    def _with_drops(self, got: tuple[list[Event], int] | None) -> list[Event]:
        if got is None:
            return []
        events, dropped = got
        if dropped:
            events.insert(0, Dropped(count=dropped, total=self.dropped_total))
        return events

    def drain(self, max_items: int = 1_000_000) -> list[Event]:
        """Everything available now (up to max_items), without waiting."""
        if self.settle is not None:
            self.settle()
        return self._with_drops(self.take(max_items, timeout=0.0))

    def get(self, timeout: float | None = None) -> Event | None:
        """One event (or a `Dropped` report), waiting up to `timeout` s; None on timeout or when closed and empty."""
        if self.settle is not None:
            self.settle()
        got = self._with_drops(self.take(1, timeout=timeout))
        if len(got) > 1:
            # A drop report and the next event: hand out the report now, keep the event for later.
            with self._cond:
                self._items.appendleft(got[1])
        return got[0] if got else None


class CommandQueue(queue.Queue[Command]):
    """The probe's command queue; `submit` also remembers which viewer sent each command."""

    def __init__(self, maxsize: int = 1000) -> None:
        super().__init__(maxsize)
        self._origins: dict[str, str] = {}
        self._origins_lock = threading.Lock()

    def submit(self, cmd: Command, origin: str) -> str | None:
        """Queue `cmd` from `origin` (a viewer's name); returns why it was not queued, or None."""
        with self._origins_lock:
            self._origins[cmd.id] = origin
        try:
            self.put_nowait(cmd)
        except queue.Full:
            with self._origins_lock:
                self._origins.pop(cmd.id, None)
            return "the probe's command queue is full"
        return None

    def origin(self, cmd: Command) -> str | None:
        """Who sent `cmd` (None: the training process, through `mon.send`); asked once per command."""
        with self._origins_lock:
            return self._origins.pop(cmd.id, None)


class QueueSource:
    """A viewer's source over in-process queues: a monitor's event queue and its command queue
    (`Monitor.source()`: tests and notebooks)."""

    owns_process = False
    can_detach = False
    controls = None

    def __init__(self, events: EventQueue, commands: queue.Queue[Command], name: str = "in-process") -> None:
        self.events = events
        self.commands = commands
        self.name = name

    def poll(self, max_events: int = 100_000) -> list[Event]:
        return self.events.drain(max_events)

    def send(self, command: Command) -> str | None:
        try:
            self.commands.put_nowait(command)
        except queue.Full:
            return "the probe's command queue is full"
        return None

    def detach(self) -> str:
        raise RuntimeError("an in-process source has no process to leave running")

    def close(self) -> None:
        self.events.close()
