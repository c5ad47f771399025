"""Replay a record file through the viewer: play/pause, speed, seek, follow.

`ReplaySource` is a `Source` over a record. A background thread indexes the file
(offset, kind, step and time of every frame; the events themselves stay on disk, so a
long record costs little memory) and, while the record is still being written, keeps
following it. Playback happens in `poll()`, paced by the recorded timestamps at
`speed` times real time, with long idle gaps in the recording shortened to
`max_gap` seconds.

How a viewer drives it (`source.controls` is the source itself, a `ReplayControls`):

    events = source.poll()
    controls = getattr(source, "controls", None)
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

A file cut mid-frame plays to its last whole frame; a damaged one plays up to the
damage; both are reported as a `LogLine` (stream "gradtui").

Torch-free.
"""

from __future__ import annotations

import bisect
import collections
import math
import os
import threading
import time
import zlib
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from gradtui.core import wire
from gradtui.core.commands import Command
from gradtui.core.events import Event, LogLine

_K_START, _K_STEP, _K_UPDATE, _K_OTHER, _K_END = 0, 1, 2, 3, 4
_KINDS = {"run_start": _K_START, "step": _K_STEP, "update": _K_UPDATE, "run_end": _K_END}

FOLLOW_RECENT = 300.0
"""With `follow=None`, a record without a RunEnd is followed if written to this recently (s)."""
MIN_SPEED, MAX_SPEED = 1 / 64, 4096.0


class ReplayControls(Protocol):
    """What a viewer can do with a replay (see the module docstring)."""

    @property
    def playing(self) -> bool: ...

    @property
    def speed(self) -> float: ...

    @property
    def position(self) -> int:
        """The step shown last (-1 before the first)."""
        ...

    @property
    def first_step(self) -> int: ...

    @property
    def last_step(self) -> int:
        """The last step in the record so far (-1 when none yet)."""
        ...

    @property
    def generation(self) -> int:
        """Bumped by every seek: the viewer must start from an empty store."""
        ...

    @property
    def following(self) -> bool:
        """The record is still being written and followed."""
        ...

    @property
    def status(self) -> str: ...

    def toggle_play(self) -> bool: ...

    def set_speed(self, speed: float) -> float: ...

    def seek(self, step: int) -> int: ...

    def step_by(self, steps: int) -> int: ...


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
        if self.path.is_dir():
            raise IsADirectoryError(f"{str(self.path)!r} is a directory, not a record file")
        self.name = f"replay: {self.path.name}"
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self._data_start = self._read_hello()
        except BaseException:
            os.close(self._fd)
            raise
        self._follow_opt = follow
        self._backlog_steps = backlog_steps
        self._max_gap = max_gap
        self._clock = clock
        self._lock = threading.Lock()
        # The index: one entry per frame, in file order.
        self._offsets = array("q")
        self._lengths = array("q")
        self._kinds = array("b")
        self._keys = array("q")
        """Running max of the frames' steps: non-decreasing, so seeks can bisect it."""
        self._times = array("d")
        self._others = array("q")
        """Indices of frames that are neither steps nor updates (alerts, acks, logs, end)."""
        self._start_idx = -1
        self._last_step = -1
        self._first_step = -1
        self._key = -1
        self._time = math.nan
        self._index_done = False
        self._following = follow is not False
        self.truncated_bytes = 0
        """Bytes after the last whole frame, once the indexer has given up following."""
        self.notices: list[str] = []
        self._new_notices: list[str] = []

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

    def _read_hello(self) -> int:
        """Check the file starts with a hello frame; returns where the events start."""
        head = os.pread(self._fd, wire.HEADER.size, 0)
        if not head:
            raise wire.WireError(f"{self.path}: empty file, not a gradtui record")
        if len(head) < wire.HEADER.size or head[:2] != wire.MAGIC:
            raise wire.WireError(f"{self.path}: not a gradtui record (no frame header at the start)")
        length = int(wire.HEADER.unpack(head)[1])
        if length > 1 << 16:
            raise wire.WireError(f"{self.path}: not a gradtui record (its first frame is not a hello)")
        body = os.pread(self._fd, length, wire.HEADER.size)
        dec = wire.FrameDecoder()
        try:
            dec.feed(head + body)
        except wire.WireError as exc:
            raise wire.WireError(f"{self.path}: {exc}") from None
        if dec.hello is None:
            raise wire.WireError(f"{self.path}: too short to be a gradtui record")
        return wire.HEADER.size + length

    def _index_loop(self) -> None:
        buf = bytearray()
        start = self._data_start  # file offset of buf[0]
        decided = self._follow_opt is not None
        while not self._stop.is_set():
            try:
                data = os.pread(self._fd, 1 << 20, start + len(buf))
            except OSError as exc:
                self._give_up(f"cannot read {self.path.name}: {exc}", 0)
                return
            if data:
                buf += data
                try:
                    start = self._index_frames(buf, start)
                except wire.WireError as exc:
                    self._give_up(f"{self.path.name} is damaged: {exc}; replaying what precedes it", 0)
                    return
                continue
            # At the end of what is written so far.
            if not decided:
                decided = True
                recent = time.time() - os.fstat(self._fd).st_mtime < FOLLOW_RECENT
                with self._lock:
                    self._following = recent and self._index_has_no_end()
            if not self._following or self._ended():
                if buf and not self._ended():
                    self._give_up(
                        f"{self.path.name} ends mid-frame ({len(buf)} bytes after the last whole frame were "
                        "ignored): it was cut while being written",
                        len(buf),
                    )
                else:
                    self._give_up(None, len(buf))
                return
            if os.fstat(self._fd).st_size < start + len(buf):
                self._give_up(f"{self.path.name} was truncated while being followed", 0)
                return
            self._stop.wait(0.1)

    def _index_has_no_end(self) -> bool:
        return not (len(self._kinds) and self._kinds[-1] == _K_END)

    def _ended(self) -> bool:
        return not self._index_has_no_end()

    def _give_up(self, notice: str | None, leftover: int) -> None:
        with self._lock:
            self._index_done = True
            self._following = False
            self.truncated_bytes = leftover
            if notice:
                self.notices.append(notice)
                self._new_notices.append(notice)

    def _index_frames(self, buf: bytearray, start: int) -> int:
        """Index every whole frame at the front of `buf`, remove them; returns the new file offset.

        Raises:
            wire.WireError: a damaged frame, after indexing every frame before it.
        """
        pos = 0
        batch: list[tuple[int, int, int, int, float]] = []
        n = len(buf)
        header = wire.HEADER
        try:
            while n - pos >= header.size:
                magic, length, crc = header.unpack_from(buf, pos)
                if magic != wire.MAGIC:
                    raise wire.WireError(f"bad frame magic {bytes(magic)!r}")
                if length > wire.MAX_FRAME:
                    raise wire.WireError(f"frame of {length} bytes exceeds the {wire.MAX_FRAME}-byte limit")
                end = pos + header.size + length
                if end > n:
                    break
                body = bytes(buf[pos + header.size : end])
                if zlib.crc32(body) != crc:
                    raise wire.WireError("checksum mismatch")
                payload = wire.unpack_payload(body)
                kind = _KINDS.get(payload["t"], _K_OTHER)
                step = payload.get("step")
                own = step if isinstance(step, int) and not isinstance(step, bool) else -1
                t = payload.get("time") if kind == _K_STEP else payload.get("started") if kind == _K_START else None
                if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
                    self._time = float(t)
                self._key = max(self._key, own)
                if kind == _K_STEP:
                    self._last_step = max(self._last_step, own)
                    if self._first_step < 0:
                        self._first_step = own
                batch.append((start + pos + header.size, length, kind, self._key, self._time))
                pos = end
        except wire.WireError as exc:
            raise wire.WireError(f"{exc} (frame at byte {start + pos})") from None
        finally:
            self._commit(batch)
            del buf[:pos]
        return start + pos

    def _commit(self, batch: list[tuple[int, int, int, int, float]]) -> None:
        if not batch:
            return
        with self._lock:
            base = len(self._offsets)
            for i, (off, length, kind, key, t) in enumerate(batch):
                self._offsets.append(off)
                self._lengths.append(length)
                self._kinds.append(kind)
                self._keys.append(key)
                self._times.append(t)
                if kind == _K_START and self._start_idx < 0:
                    self._start_idx = base + i
                elif kind not in (_K_STEP, _K_UPDATE, _K_START):
                    self._others.append(base + i)

    def wait_indexed(self, timeout: float = 10.0) -> bool:
        """Wait until the whole file is indexed (never, while following); True when it is."""
        self._indexer.join(timeout)
        return self._index_done

    # ------------------------------------------------------------ Source

    def poll(self, max_events: int = 100_000) -> list[Event]:
        """Events due now: a seek's backlog first, then playback at the chosen speed."""
        out: list[Event] = []
        with self._lock:
            now = self._clock()
            elapsed, self._last_clock = max(0.0, now - self._last_clock), now
            for notice in self._new_notices:
                out.append(LogLine(text=notice, stream="gradtui"))
            self._new_notices.clear()
            if self._pending_seek is not None and (self._index_done or self._last_step >= self._pending_seek):
                target, self._pending_seek = self._pending_seek, None
                self._seek_locked(target)
            while self._burst and len(out) < max_events:
                self._read_into(self._burst.popleft(), out)
            if self._burst or not self._playing or self._pending_seek is not None:
                return out
            n = len(self._offsets)
            if self._pos >= n:
                self._caught_up = True
                return out
            if math.isnan(self._rt):
                self._rt = self._last_eff = self._times[self._pos]
            elif self._caught_up and self._following:
                # Live: what the writer just added is due now, not after a replayed delay.
                self._rt = max(self._rt, self._times[self._pos] - self._skew)
            self._rt += elapsed * self._speed
            cap = self._max_gap * self._speed
            while self._pos < n and len(out) < max_events:
                t = self._times[self._pos]
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
        body = os.pread(self._fd, self._lengths[i], self._offsets[i])
        try:
            event = wire.decode_event(wire.unpack_payload(body))
        except wire.WireError as exc:
            out.append(LogLine(text=f"skipped a frame of {self.path.name}: {exc}", stream="gradtui"))
            return
        if self._kinds[i] == _K_STEP:
            self._position = max(self._position, self._keys[i])
        out.append(event)

    def send(self, command: Command) -> str | None:
        return "this is a replay: commands cannot change a recorded run"

    def close(self) -> None:
        self._stop.set()
        self._indexer.join(2.0)
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

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
        return self._first_step

    @property
    def last_step(self) -> int:
        return self._last_step

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def following(self) -> bool:
        return self._following

    @property
    def at_end(self) -> bool:
        """Everything in the record has been played and no more is coming."""
        return self._index_done and not self._burst and self._pos >= len(self._offsets)

    @property
    def status(self) -> str:
        speed = "max" if math.isinf(self._speed) else f"{self._speed:g}x"
        where = f"step {self._position}/{self._last_step}" if self._last_step >= 0 else "no steps yet"
        if self.at_end:
            state = "end of record"
        elif self._caught_up and self._following:
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
        """Seek relative to the current position."""
        with self._lock:
            base = self._position if self._position >= 0 else self._first_step
            return self._seek_locked(base + steps)

    def _seek_locked(self, step: int) -> int:
        n = len(self._offsets)
        pos = bisect.bisect_right(self._keys, step, 0, n)
        # The last `backlog_steps` sampled steps before pos, plus every non-step event before it.
        lo, seen, shown = pos, 0, -1
        kinds = self._kinds
        while lo > 0 and (seen < self._backlog_steps or shown < 0):
            lo -= 1
            if kinds[lo] == _K_STEP:
                seen += 1
                shown = max(shown, self._keys[lo])
        burst: list[int] = []
        if 0 <= self._start_idx < pos:
            burst.append(self._start_idx)
        n_before = bisect.bisect_left(self._others, lo)
        burst.extend(i for i in self._others[:n_before] if i != self._start_idx)
        burst.extend(i for i in range(lo, pos) if i != self._start_idx)
        self._burst = collections.deque(burst)
        self._pos = pos
        self._generation += 1
        self._position = -1
        self._rt = self._last_eff = self._times[pos - 1] if pos > 0 else math.nan
        self._skew = 0.0
        self._last_clock = self._clock()
        self._caught_up = False
        # Notices are part of what a fresh store must show.
        self._new_notices = list(self.notices)
        return shown
