"""`RecordIndex`: where every frame of a record file is, with its kind, step and time.

The events stay on disk and are read one by one (`read_event`), so a long record costs
little memory, and a record still being written can be followed. Frames are found with
`gradtui.wire.scan.FrameScanner`, so a damaged region is skipped and indexing goes on
after it; each skip (and a cut tail) leaves one line in `notices`.
"""

from __future__ import annotations

import math
import os
import threading
import time
from array import array
from pathlib import Path

import numpy as np

from gradtui.model.events import Event
from gradtui.wire import codec as wire
from gradtui.wire.scan import Damage, Frame, FrameScanner, Start, read_start

KIND_START, KIND_STEP, KIND_UPDATE, KIND_OTHER, KIND_END, KIND_RUN_STEPS = 0, 1, 2, 3, 4, 5
"""`RecordIndex.kinds` values: RunStart, StepStats, UpdateStats, anything else, RunEnd, RunSteps."""
_KINDS = {
    "run_start": KIND_START,
    "step": KIND_STEP,
    "update": KIND_UPDATE,
    "run_end": KIND_END,
    "run_steps": KIND_RUN_STEPS,
}
STEP_KINDS = (KIND_STEP, KIND_RUN_STEPS)
"""Kinds of the frames that carry steps: a sampled step, or unsampled steps up to their `step`."""

FOLLOW_RECENT = 300.0
"""With `follow=None`, a record without a RunEnd is followed if written to this recently (s)."""

MAX_DAMAGE_NOTICES = 10
"""Damaged regions named one by one in `notices`; the rest are counted in one last line."""

_HEAD = 1 << 20
"""Bytes read to find the start of the events (past a damaged hello, the first event frame)."""


class RecordIndex:
    """Where every frame of a record file is, with its kind, step and time.

    `update()` indexes what has been written since the last call, and keeps following a
    record that is still being written until its `RunEnd` (see `follow`). A file cut
    mid-frame is indexed to its last whole frame; a damaged region is skipped and
    indexing goes on after it (`damage`); either leaves a line in `notices`.

    One thread calls `update()`; the arrays and fields change only under `lock`, which
    readers hold to see several of them consistently.

    Args:
        path: The record file.
        follow: Keep indexing as the file grows: True, False, or None to follow a record
            that has no `RunEnd` yet and was written to in the last `FOLLOW_RECENT` seconds.
        chunk: Most bytes one `update()` reads.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: the file cannot be read.
        wire.WireError: it is not a gradtui record.
    """

    def __init__(self, path: str | os.PathLike[str], *, follow: bool | None = None, chunk: int = 1 << 20) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"{str(self.path)!r} is a directory, not a record file")
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            start = read_start(os.pread(self._fd, _HEAD, 0), self.path)
        except BaseException:
            os.close(self._fd)
            raise
        if start is None:
            # Cut inside its hello, as `iter_record` reads it: no events yet, the cut is the tail (and a
            # followed file may still complete it: a whole hello is skipped like a joined record's).
            start = Start({}, 0)
        self.hello, self.data_start = start.hello, start.data_start
        self.lock = threading.Lock()
        self.offsets = array("q")
        """File offset of each frame's payload."""
        self.lengths = array("q")
        """Payload length of each frame."""
        self.kinds = array("b")
        """`KIND_*` of each frame."""
        self.keys = array("q")
        """Running max of the frames' steps (-1 before any): non-decreasing, so seeks can bisect it."""
        self.times = array("d")
        """The last recorded time (a step's `time`, a RunStart's `started`) at each frame, NaN before any."""
        self.others = array("q")
        """Indices of frames that are neither steps (sampled or not) nor updates nor the first RunStart
        (alerts, acks, logs, end)."""
        self.start_index = -1
        """Index of the first RunStart (-1 until there is one)."""
        self.first_step = -1
        """The first step of the record, sampled or not (-1 before any)."""
        self.last_step = -1
        """The last step of the record so far, sampled or not (-1 before any)."""
        self.done = False
        """Nothing more will be indexed: the end of the record, or of the file when not following."""
        self.following = follow is not False
        self.truncated_bytes = 0
        """Bytes after the last whole frame, once done."""
        self.damage: list[Damage] = []
        """Damaged regions skipped so far, in file order."""
        self.notices: list[str] = []
        """What went wrong (a cut or damaged file), one line each."""
        self._chunk = chunk
        self._decided = follow is not None
        self._scanner = FrameScanner(self.data_start)
        self._read_at = self.data_start
        """File offset of the next byte to read."""
        self._key = -1
        self._time = math.nan
        self._own_step = -1
        """Step of the last step frame indexed, in file order (for the damage after it)."""
        self._awaiting: list[Damage] = []
        """Damage not yet told in `notices`: waiting for the first step after it."""
        self._told = 0
        """Damaged regions told in `notices` so far."""
        if start.damage is not None:
            self._damaged(start.damage)

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def ended(self) -> bool:
        """The last frame indexed is the run's `RunEnd`."""
        return bool(len(self.kinds)) and self.kinds[-1] == KIND_END

    def update(self) -> int:
        """Read and index up to one chunk more; returns the bytes read.

        0 means the end of what is written so far: then `done` tells whether to call
        again later (following) or stop.
        """
        if self.done:
            return 0
        try:
            data = os.pread(self._fd, self._chunk, self._read_at)
        except OSError as exc:
            self._finish(f"cannot read {self.path.name}: {exc}", 0)
            return 0
        if data:
            self._read_at += len(data)
            self._index(self._scanner.feed(data))
            return len(data)
        if not self._decided:
            self._decided = True
            recent = time.time() - os.fstat(self._fd).st_mtime < FOLLOW_RECENT
            with self.lock:
                self.following = recent and not self.ended
        if not self.following or self.ended:
            self._index(self._scanner.finish())
            leftover = self._scanner.pending
            if leftover and not self.ended:
                self._finish(
                    f"{self.path.name} ends mid-frame ({leftover} bytes after the last whole frame were "
                    "ignored): it was cut while being written",
                    leftover,
                )
            else:
                self._finish(None, leftover)
        elif os.fstat(self._fd).st_size < self._read_at:
            self._finish(f"{self.path.name} was truncated while being followed", 0)
        return 0

    def read_event(self, i: int) -> Event:
        """The event of frame `i`, read from the file.

        Raises:
            wire.WireError: its payload does not decode to an event.
        """
        return wire.decode_event(wire.unpack_payload(os.pread(self._fd, self.lengths[i], self.offsets[i])))

    def close(self) -> None:
        with self.lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _finish(self, notice: str | None, leftover: int) -> None:
        with self.lock:
            self.done = True
            self.following = False
            self.truncated_bytes = leftover
            self._tell(None)
            if len(self.damage) > MAX_DAMAGE_NOTICES:
                skipped = sum(d.bytes for d in self.damage)
                self.notices.append(
                    f"{self.path.name}: {len(self.damage)} damaged regions in all ({skipped} bytes skipped)"
                )
            if notice:
                self.notices.append(notice)

    def _damaged(self, damage: Damage) -> None:
        damage.after_step = self._own_step if self._own_step >= 0 else None
        with self.lock:
            self.damage.append(damage)
        self._awaiting.append(damage)

    def _tell(self, before_step: int | None) -> None:
        """Put the damage waiting for its first step after (`before_step`) in `notices` (under `lock`)."""
        for damage in self._awaiting:
            damage.before_step = before_step
            if self._told < MAX_DAMAGE_NOTICES:
                self.notices.append(f"{self.path.name} is damaged: {damage.describe()}; playing on past it")
            elif self._told == MAX_DAMAGE_NOTICES:
                self.notices.append(f"{self.path.name} has more damage: further regions are skipped unlisted")
            self._told += 1
        self._awaiting.clear()

    def _index(self, items: list[Frame | Damage]) -> None:
        """Index the frames the scanner found, and note the damage between them."""
        batch: list[tuple[int, int, int, int, int, float, int]] = []
        for item in items:
            if isinstance(item, Damage):
                self._commit(batch)
                batch = []
                self._damaged(item)
                continue
            payload = item.payload
            if payload["t"] == "hello":  # records joined end to end: not an event
                continue
            kind = _KINDS.get(payload["t"], KIND_OTHER)
            step = payload.get("step")
            own = step if isinstance(step, int) and not isinstance(step, bool) else -1
            t = payload.get("time") if kind == KIND_STEP else payload.get("started") if kind == KIND_START else None
            if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
                self._time = float(t)
            self._key = max(self._key, own)
            first = _first_step(payload, own) if kind == KIND_RUN_STEPS else own
            batch.append((item.offset, item.length, kind, own, self._key, self._time, first))
            if kind in STEP_KINDS and own >= 0:
                self._own_step = own
                if self._awaiting:
                    self._commit(batch)
                    batch = []
                    with self.lock:
                        self._tell(first)
        self._commit(batch)

    def _commit(self, batch: list[tuple[int, int, int, int, int, float, int]]) -> None:
        if not batch:
            return
        with self.lock:
            base = len(self.offsets)
            for i, (off, length, kind, own, key, t, first) in enumerate(batch):
                self.offsets.append(off)
                self.lengths.append(length)
                self.kinds.append(kind)
                self.keys.append(key)
                self.times.append(t)
                if kind in STEP_KINDS and own >= 0:
                    self.last_step = max(self.last_step, own)
                    if self.first_step < 0:
                        self.first_step = max(0, first)
                if kind == KIND_START and self.start_index < 0:
                    self.start_index = base + i
                elif kind not in (*STEP_KINDS, KIND_UPDATE, KIND_START):
                    self.others.append(base + i)


def _first_step(payload: dict[str, object], own: int) -> int:
    """The first of a RunSteps frame's steps (its own `step`, the last, when they cannot be read)."""
    steps = payload.get("steps")
    if isinstance(steps, np.ndarray) and steps.ndim == 1 and steps.size and steps.dtype.kind in "iu":
        return min(own, int(steps[0])) if own >= 0 else int(steps[0])
    return own
