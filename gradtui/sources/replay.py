"""Replay a record file through the viewer: play/pause, speed, seek, follow.

`ReplaySource` is a `Source` over a record. A background thread keeps a
`gradtui.wire.index.RecordIndex` of the file up to date (offset, kind, step and time of
every frame; the events themselves stay on disk, so a long record costs little memory)
and, while the record is still being written, keeps following it. Playback happens in
`poll()`, paced by the recorded timestamps at `speed` times real time, with long idle
gaps in the recording shortened to `max_gap` seconds.

How a viewer drives it (`source.controls` is the source itself, a `ReplayControls`):

    events = source.poll()
    controls = source.controls
    if controls is not None and controls.generation != seen_generation:
        seen_generation = controls.generation
        store = RunStore()          # a seek happened: start from an empty store
    for event in events:
        store.apply(event)

Read `generation` *after* `poll()`: a seek clears what was waiting and bumps the
generation in one step, so every event `poll()` returns after a change belongs to the
new position (it starts with the run's `RunStart`, then the recent history up to the
target step). Suggested keys: space `toggle_play()`; `+`/`-` `set_speed(speed * 2)` /
`set_speed(speed / 2)`; left/right `step_by(-n)`/`step_by(n)`; Home/End
`seek(first_step)`/`seek(last_step)`. `status` is a short line for a status bar.

A file cut mid-frame plays to its last whole frame; a damaged one plays on past each
damaged region (resynchronised on the next valid frame); both are reported as a
`LogLine` (stream "gradtui"), once for each region (and again after a seek, which
starts the viewer's store afresh).

Torch-free.
"""

from __future__ import annotations

import bisect
import collections
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gradtui.model.commands import Command
from gradtui.model.events import Event, LogLine
from gradtui.sources.base import ReplayControls, no_detach
from gradtui.wire import codec as wire
from gradtui.wire.index import FOLLOW_RECENT, KIND_STEP, STEP_KINDS, RecordIndex

__all__ = ["FOLLOW_RECENT", "MAX_SPEED", "MIN_SPEED", "ReplayControls", "ReplaySource"]

MIN_SPEED, MAX_SPEED = 1 / 64, 4096.0


class ReplaySource:
    """A `Source` that plays a record file (see the module docstring).

    Args:
        path: The record file.
        speed: Playback speed, times real time (`math.inf`: as fast as the viewer polls).
        follow: Keep reading as the file grows: True, False, or None to follow a record
            that has no `RunEnd` yet and was written to in the last few minutes.
        paused: Start paused.
        start_at: Start at this step instead of the beginning.
        backlog_steps: Steps of history a seek delivers before the target step.
        max_gap: Longest pause, in seconds of playback, between two recorded events.
        clock: Monotonic clock (tests pass a fake one).

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: the file cannot be read.
        wire.WireError: it is not a gradtui record.
    """

    owns_process = False
    can_detach = False
    detach = no_detach

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        speed: float = 1.0,
        follow: bool | None = None,
        paused: bool = False,
        start_at: int | None = None,
        backlog_steps: int = 4096,
        max_gap: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.name = f"replay: {self.path.name}"
        self._index = RecordIndex(self.path, follow=follow)
        self._backlog_steps = backlog_steps
        self._max_gap = max_gap
        self._clock = clock
        self._lock = self._index.lock
        """The index's lock: it guards the index and the playback state below alike."""
        self._notices_sent = 0
        """How many of the index's notices `poll()` has delivered since the last seek."""

        self._playing = not paused
        self._speed = self._clamp_speed(speed)
        self._pos = 0
        self._burst: collections.deque[int] = collections.deque()
        self._generation = 0
        self._position = -1
        self._rt = math.nan
        self._last_eff = math.nan
        self._skew = 0.0
        self._last_clock = clock()
        self._caught_up = False
        self._pending_seek = start_at

        self._stop = threading.Event()
        self._indexer = threading.Thread(target=self._index_loop, name="gradtui-replay-index", daemon=True)
        self._indexer.start()

    # ------------------------------------------------------------ indexing

    def _index_loop(self) -> None:
        index = self._index
        while not self._stop.is_set() and not index.done:
            if index.update() == 0 and not index.done:
                self._stop.wait(0.1)

    @property
    def truncated_bytes(self) -> int:
        """Bytes after the last whole frame, once the indexer has given up following."""
        return self._index.truncated_bytes

    @property
    def notices(self) -> list[str]:
        """What went wrong reading the record (a cut or damaged file), one line each."""
        return self._index.notices

    def wait_indexed(self, timeout: float = 10.0) -> bool:
        """Wait until the whole file is indexed (never, while following); True when it is."""
        self._indexer.join(timeout)
        return self._index.done

    # ------------------------------------------------------------ Source

    def poll(self, max_events: int = 100_000) -> list[Event]:
        """Events due now: a seek's backlog first, then playback at the chosen speed."""
        out: list[Event] = []
        index = self._index
        with self._lock:
            now = self._clock()
            elapsed, self._last_clock = max(0.0, now - self._last_clock), now
            for notice in index.notices[self._notices_sent :]:
                out.append(LogLine(text=notice, stream="gradtui"))
            self._notices_sent = len(index.notices)
            if self._pending_seek is not None and (index.done or index.last_step >= self._pending_seek):
                target, self._pending_seek = self._pending_seek, None
                self._seek_locked(target)
            while self._burst and len(out) < max_events:
                self._read_into(self._burst.popleft(), out)
            if self._burst or not self._playing or self._pending_seek is not None:
                return out
            times = index.times
            n = len(times)
            if self._pos >= n:
                self._caught_up = True
                return out
            if math.isnan(self._rt):
                self._rt = self._last_eff = times[self._pos]
            elif self._caught_up and index.following:
                # Live: what the writer just added is due now, not after a replayed delay.
                self._rt = max(self._rt, times[self._pos] - self._skew)
            self._rt += elapsed * self._speed
            cap = self._max_gap * self._speed
            while self._pos < n and len(out) < max_events:
                t = times[self._pos]
                eff = t - self._skew
                if eff - self._last_eff > cap:
                    self._skew += eff - self._last_eff - cap
                    eff = self._last_eff + cap
                if eff > self._rt:
                    break
                self._last_eff = max(self._last_eff, eff)
                self._read_into(self._pos, out)
                self._pos += 1
            self._caught_up = self._pos >= n
        return out

    def _read_into(self, i: int, out: list[Event]) -> None:
        try:
            event = self._index.read_event(i)
        except wire.WireError as exc:
            out.append(LogLine(text=f"skipped a frame of {self.path.name}: {exc}", stream="gradtui"))
            return
        if self._index.kinds[i] in STEP_KINDS:
            self._position = max(self._position, self._index.keys[i])
        out.append(event)

    def send(self, command: Command) -> str | None:
        return "this is a replay: commands cannot change a recorded run"

    def close(self) -> None:
        self._stop.set()
        self._indexer.join(2.0)
        self._index.close()

    # ------------------------------------------------------------ controls

    @property
    def controls(self) -> ReplaySource:
        """The playback controls (this object): see `ReplayControls`."""
        return self

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def speed(self) -> float:
        return self._speed

    @property
    def position(self) -> int:
        return self._position

    @property
    def first_step(self) -> int:
        return self._index.first_step

    @property
    def last_step(self) -> int:
        return self._index.last_step

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def following(self) -> bool:
        return self._index.following

    @property
    def at_end(self) -> bool:
        """Everything in the record has been played and no more is coming."""
        return self._index.done and not self._burst and self._pos >= len(self._index)

    @property
    def status(self) -> str:
        speed = "max" if math.isinf(self._speed) else f"{self._speed:g}x"
        last = self._index.last_step
        shown = str(self._position) if self._position >= 0 else "—"
        where = f"step {shown}/{last}" if last >= 0 else "no steps yet"
        if self.at_end:
            state = "end of record"
        elif self._caught_up and self._index.following:
            state = "live (following)"
        else:
            state = f"playing {speed}" if self._playing else "paused"
        return f"{state} · {where}"

    @staticmethod
    def _clamp_speed(speed: float) -> float:
        if math.isnan(speed) or speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        return speed if math.isinf(speed) else min(MAX_SPEED, max(MIN_SPEED, float(speed)))

    def toggle_play(self) -> bool:
        """Pause or resume; returns whether it now plays."""
        with self._lock:
            self._playing = not self._playing
            self._last_clock = self._clock()
            return self._playing

    def set_speed(self, speed: float) -> float:
        """Set the speed (times real time, clamped to 1/64..4096, or inf); returns it."""
        value = self._clamp_speed(speed)
        with self._lock:
            self._speed = value
            return value

    def seek(self, step: int) -> int:
        """Show the run as it was at `step` (clamped to the record); returns the step now shown."""
        with self._lock:
            return self._seek_locked(step)

    def step_by(self, steps: int) -> int:
        """Seek relative to the current position (or to the seek still waiting for the indexer).

        A move that the record's bounds cancel (back at the first step, forward at the last)
        changes nothing: the viewer's store is not rebuilt for the same picture.
        """
        with self._lock:
            if self._pending_seek is not None:
                self._pending_seek = max(0, self._pending_seek + steps)
                return self._pending_seek
            first = self._index.first_step
            base = self._position if self._position >= 0 else first
            target = max(base + steps, first)
            if self._position >= 0 and not self._burst and (
                target == self._position or (steps > 0 and self._position >= self._index.last_step)
            ):
                return self._position
            return self._seek_locked(target)

    def _seek_locked(self, step: int) -> int:
        index = self._index
        keys, kinds, others, start = index.keys, index.kinds, index.others, index.start_index
        # Never before the first step: a seek below it shows that step (and its history: none).
        step = max(step, index.first_step)
        pos = bisect.bisect_right(keys, step, 0, len(keys))
        # The last `backlog_steps` sampled steps before pos (and the unsampled steps among them),
        # plus every non-step event before it.
        lo, seen, shown = pos, 0, -1
        while lo > 0 and (seen < self._backlog_steps or shown < 0):
            lo -= 1
            if kinds[lo] == KIND_STEP:
                seen += 1
            if kinds[lo] in STEP_KINDS:
                shown = max(shown, keys[lo])
        burst: list[int] = []
        if 0 <= start < pos:
            burst.append(start)
        n_before = bisect.bisect_left(others, lo)
        burst.extend(i for i in others[:n_before] if i != start)
        burst.extend(i for i in range(lo, pos) if i != start)
        self._burst = collections.deque(burst)
        self._pos = pos
        self._generation += 1
        # The step the burst ends on, at once: a second step_by before the next poll builds on it
        # (with -1 here, `>` `>` from step 300 went to the first step + 100).
        self._position = shown
        self._rt = self._last_eff = index.times[pos - 1] if pos > 0 else math.nan
        self._skew = 0.0
        self._last_clock = self._clock()
        self._caught_up = False
        # Notices are part of what a fresh store must show.
        self._notices_sent = 0
        return shown
