"""Record files: the wire stream written to disk, append-only, one frame per write.

Every frame goes to the kernel in a single `os.write` on an unbuffered descriptor, so
a crash of the training process loses at most the frame being written, and a reader
can follow the file while it grows. A file cut at any byte reads back to its last
whole frame.

Three ways to read one: `read_record` (every event in memory), `iter_record` (streamed),
and `RecordIndex` (where every frame is, its kind, step and time; the events stay on
disk and are read one by one, and a record still being written can be followed). All
of them check the start of the file with `parse_hello` and read frames with the codec.
"""

from __future__ import annotations

import math
import os
import threading
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradtui.model.events import Event
from gradtui.wire import codec as wire

RECORD_SUFFIX = ".gtr"
HELLO_MAX = 1 << 16
"""Largest hello frame a record may start with: a longer first frame is not a hello."""


def _refuse_directory(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory, not a record file")


def parse_hello(head: bytes, where: str | os.PathLike[str]) -> tuple[dict[str, Any], int] | None:
    """Check the first bytes of a record file (the first `wire.HEADER.size + HELLO_MAX`, or all of a shorter file).

    Returns the hello payload and the file offset where the events start, or None when
    the file ends inside its hello frame (it was cut while that frame was written).

    Raises:
        wire.WireError: an empty file, one that does not start with a frame, or one whose
            first frame is not a hello of our wire version; the message starts with `where`.
    """
    if not head:
        raise wire.WireError(f"{where}: empty file, not a gradtui record")
    try:
        span = wire.next_frame(head, 0, HELLO_MAX)
        if span is None:
            return None
        start, end = span
        payload = wire.unpack_payload(bytes(head[start:end]))
    except wire.WireError as exc:
        raise wire.WireError(f"{where}: not a gradtui record ({exc})") from None
    try:
        return wire.check_hello(payload), end
    except wire.WireError as exc:
        raise wire.WireError(f"{where}: {exc}") from None


# ---------------------------------------------------------------- writing


class RecordWriter:
    """Append events to a record file."""

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"record path {str(self.path)!r} is a directory; give a file name")
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            self._fd: int | None = os.open(self.path, flags, 0o644)
        except FileExistsError:
            raise FileExistsError(
                f"record file {str(self.path)!r} already exists; choose another path or pass overwrite=True"
            ) from None
        self.write_frame(wire.hello_frame(role="record"))

    def write_frame(self, frame: bytes) -> None:
        """Append one already-encoded frame (`wire.encode`), in one `os.write`.

        Raises:
            ValueError: the record is closed.
            wire.WireError: `frame` is not exactly one whole frame.
        """
        if self._fd is None:
            raise ValueError(f"record {str(self.path)!r} is closed")
        try:
            span = wire.next_frame(frame)
        except wire.WireError as exc:
            raise wire.WireError(f"cannot record {len(frame)} bytes that are not a frame: {exc}") from None
        if span is None or span[1] != len(frame):
            raise wire.WireError(f"cannot record {len(frame)} bytes that are not exactly one whole frame")
        view = memoryview(frame)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def write(self, event: Event) -> None:
        """Append one event as one frame."""
        self.write_frame(wire.encode(event))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------- reading whole


@dataclass
class Record:
    """The events of a record file and whether it ended mid-frame."""

    events: list[Event] = field(default_factory=list)
    truncated_bytes: int = 0
    """Bytes after the last whole frame (a file cut mid-write)."""


def read_record(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> Record:
    """Read every whole frame of a record file.

    Raises:
        FileNotFoundError: no such file.
        wire.WireError: the file is not a gradtui record, or is corrupt before its end.
    """
    out = Record()
    for event in iter_record(path, out, max_bytes=max_bytes):
        out.events.append(event)
    return out


def iter_record(
    path: str | os.PathLike[str], state: Record | None = None, *, max_bytes: int | None = None
) -> Iterator[Event]:
    """Stream the events of a record file, chunk by chunk."""
    p = Path(path)
    _refuse_directory(p)
    with open(p, "rb") as fh:
        chunk = fh.read(1 << 20)
        seen = len(chunk)
        start = parse_hello(chunk, p)
        if start is None:  # cut inside its hello: no events
            if state is not None:
                state.truncated_bytes = seen
            return
        data_start = start[1]
        dec = wire.FrameDecoder(expect_hello=False, offset=data_start)
        chunk = chunk[data_start:]
        while True:
            try:
                payloads = dec.feed(chunk)
            except wire.WireError as exc:
                raise wire.WireError(f"{p}: {exc}") from None
            for payload in payloads:
                try:
                    yield wire.decode_event(payload)
                except wire.WireError as exc:
                    raise wire.WireError(f"{p}: {exc}") from None
            if max_bytes is not None and seen >= max_bytes:
                break
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            seen += len(chunk)
    if state is not None:
        state.truncated_bytes = dec.pending


# ---------------------------------------------------------------- the index

KIND_START, KIND_STEP, KIND_UPDATE, KIND_OTHER, KIND_END = 0, 1, 2, 3, 4
"""`RecordIndex.kinds` values: RunStart, StepStats, UpdateStats, anything else, RunEnd."""
_KINDS = {"run_start": KIND_START, "step": KIND_STEP, "update": KIND_UPDATE, "run_end": KIND_END}

FOLLOW_RECENT = 300.0
"""With `follow=None`, a record without a RunEnd is followed if written to this recently (s)."""


class RecordIndex:
    """Where every frame of a record file is, with its kind, step and time.

    The events stay on disk (`read_event` reads one), so a long record costs little
    memory. `update()` indexes what has been written since the last call, and keeps
    following a record that is still being written until its `RunEnd` (see `follow`).
    A file cut mid-frame is indexed to its last whole frame, a damaged one up to the
    damage; either leaves a line in `notices`.

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
        _refuse_directory(self.path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            start = parse_hello(os.pread(self._fd, wire.HEADER.size + HELLO_MAX, 0), self.path)
            if start is None:
                raise wire.WireError(f"{self.path}: too short to be a gradtui record")
        except BaseException:
            os.close(self._fd)
            raise
        self.hello, self.data_start = start
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
        """Indices of frames that are neither steps nor updates nor the first RunStart (alerts, acks, logs, end)."""
        self.start_index = -1
        """Index of the first RunStart (-1 until there is one)."""
        self.first_step = -1
        self.last_step = -1
        self.done = False
        """Nothing more will be indexed: the end of the record, or of the file when not following."""
        self.following = follow is not False
        self.truncated_bytes = 0
        """Bytes after the last whole frame, once done."""
        self.notices: list[str] = []
        """What went wrong (a cut or damaged file), one line each."""
        self._chunk = chunk
        self._decided = follow is not None
        self._buf = bytearray()
        self._buf_at = self.data_start
        """File offset of `_buf[0]`."""
        self._key = -1
        self._time = math.nan

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
            data = os.pread(self._fd, self._chunk, self._buf_at + len(self._buf))
        except OSError as exc:
            self._finish(f"cannot read {self.path.name}: {exc}", 0)
            return 0
        if data:
            self._buf += data
            try:
                self._index_buffer()
            except wire.WireError as exc:
                self._finish(f"{self.path.name} is damaged: {exc}; replaying what precedes it", 0)
            return len(data)
        if not self._decided:
            self._decided = True
            recent = time.time() - os.fstat(self._fd).st_mtime < FOLLOW_RECENT
            with self.lock:
                self.following = recent and not self.ended
        if not self.following or self.ended:
            if self._buf and not self.ended:
                self._finish(
                    f"{self.path.name} ends mid-frame ({len(self._buf)} bytes after the last whole frame were "
                    "ignored): it was cut while being written",
                    len(self._buf),
                )
            else:
                self._finish(None, len(self._buf))
        elif os.fstat(self._fd).st_size < self._buf_at + len(self._buf):
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
            if notice:
                self.notices.append(notice)

    def _index_buffer(self) -> None:
        """Index every whole frame at the front of the buffer and drop them from it.

        Raises:
            wire.WireError: a damaged frame, after indexing every frame before it.
        """
        buf, base = self._buf, self._buf_at
        pos = 0
        batch: list[tuple[int, int, int, int, int, float]] = []
        try:
            # Less than a header left is a frame still being written (or bytes cut off), never damage.
            while len(buf) - pos >= wire.HEADER.size and (span := wire.next_frame(buf, pos, base=base)) is not None:
                start, end = span
                try:
                    payload = wire.unpack_payload(bytes(buf[start:end]))
                except wire.WireError as exc:
                    raise wire.WireError(f"{exc} (frame at byte {base + pos})") from None
                kind = _KINDS.get(payload["t"], KIND_OTHER)
                step = payload.get("step")
                own = step if isinstance(step, int) and not isinstance(step, bool) else -1
                t = payload.get("time") if kind == KIND_STEP else payload.get("started") if kind == KIND_START else None
                if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
                    self._time = float(t)
                self._key = max(self._key, own)
                batch.append((base + start, end - start, kind, own, self._key, self._time))
                pos = end
        finally:
            self._commit(batch)
            del buf[:pos]
            self._buf_at += pos

    def _commit(self, batch: list[tuple[int, int, int, int, int, float]]) -> None:
        if not batch:
            return
        with self.lock:
            base = len(self.offsets)
            for i, (off, length, kind, own, key, t) in enumerate(batch):
                self.offsets.append(off)
                self.lengths.append(length)
                self.kinds.append(kind)
                self.keys.append(key)
                self.times.append(t)
                if kind == KIND_STEP:
                    self.last_step = max(self.last_step, own)
                    if self.first_step < 0:
                        self.first_step = own
                if kind == KIND_START and self.start_index < 0:
                    self.start_index = base + i
                elif kind not in (KIND_STEP, KIND_UPDATE, KIND_START):
                    self.others.append(base + i)
