"""Record files: the wire stream written to disk, append-only, one frame per write.

Every frame goes to the kernel in a single `os.write` on an unbuffered descriptor, so
a crash of the training process loses at most the frame being written, and a reader
can follow the file while it grows. A file cut at any byte reads back to its last
whole frame. `open_record` picks the file for a run: a given file (never replaced unless
asked), or a new file per run in a folder.

Three ways to read one: `read_record` (every event in memory), `iter_record` (streamed),
and `RecordIndex` (where every frame is, its kind, step and time; the events stay on
disk and are read one by one, and a record still being written can be followed). All
of them check the start of the file with `parse_hello` and read frames with the codec.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
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


class RecordPathError(OSError):
    """A record file that cannot be created or opened: the message names the path and why.

    `filename` and `errno` are set as on any `OSError`; each kind is also the matching
    built-in (`RecordExistsError` is a `FileExistsError`, and so on), so callers can catch
    either.
    """

    def __str__(self) -> str:
        return str(self.strerror)


class RecordExistsError(RecordPathError, FileExistsError):
    """The record file exists and `overwrite` was not given."""


class RecordPermissionError(RecordPathError, PermissionError):
    pass


class RecordNotADirectoryError(RecordPathError, NotADirectoryError):
    """A folder on the way to the record is a file."""


class RecordIsADirectoryError(RecordPathError, IsADirectoryError):
    pass


class RecordNotFoundError(RecordPathError, FileNotFoundError):
    pass


_PATH_ERRORS: dict[type[OSError], type[RecordPathError]] = {
    FileExistsError: RecordExistsError,
    PermissionError: RecordPermissionError,
    NotADirectoryError: RecordNotADirectoryError,
    IsADirectoryError: RecordIsADirectoryError,
    FileNotFoundError: RecordNotFoundError,
}


def _path_error(code: int | None, message: str, path: str | os.PathLike[str]) -> RecordPathError:
    """A `RecordPathError` of the kind `code` (an errno) means, saying `message`, for `path`."""
    kind = type(OSError(code, "")) if code is not None else OSError
    exc = _PATH_ERRORS.get(kind, RecordPathError)(code if code is not None else 0, message)
    exc.filename = os.fspath(path)
    return exc


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _refuse_file_ancestor(path: Path, what: str) -> None:
    """Raise a clear error when an existing ancestor of `path` (or `path`) is not a folder."""
    for above in (path, *path.parents):
        if os.path.lexists(above):
            if not above.is_dir():
                raise _path_error(
                    errno.ENOTDIR, f"cannot create {what}: {str(above)!r} is a file, not a folder", path
                )
            return


def _make_folder(folder: Path, what: str) -> None:
    """Create `folder` and its missing parents, or say clearly why not."""
    if folder.is_dir():
        return
    _refuse_file_ancestor(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        message = f"cannot create the folder {str(folder)!r} for {what}: {_why(exc)}"
        raise _path_error(exc.errno, message, folder) from None


EXISTS_HINT = "pass overwrite=True, or give a folder such as record='runs/' for a new file each run"


class RecordWriter:
    """Append events to a record file.

    Use `open_record` to pick the file (a folder gets a new one per run) and create
    missing folders; this class opens exactly `path`.

    Raises:
        RecordExistsError: `path` exists and `overwrite` is False.
        RecordPathError: `path` cannot be created or its hello frame cannot be written (no
            empty file is left behind); the message names the path.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        if self.path.is_dir():
            raise _path_error(
                errno.EISDIR, f"record path {str(self.path)!r} is a folder; give a file name, or use open_record",
                self.path,
            )
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileExistsError:
            raise _path_error(
                errno.EEXIST, f"record file {str(self.path)!r} already exists: {EXISTS_HINT}", self.path
            ) from None
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ENOENT):
                _refuse_file_ancestor(self.path.parent, f"record file {str(self.path)!r}")
            raise _path_error(
                exc.errno, f"cannot create record file {str(self.path)!r}: {_why(exc)}", self.path
            ) from None
        self._fd = fd
        try:
            self.write_frame(wire.hello_frame(role="record"))
        except OSError as exc:
            self._discard(fd)
            raise _path_error(
                exc.errno, f"cannot write to record file {str(self.path)!r}: {_why(exc)}", self.path
            ) from None
        except BaseException:
            self._discard(fd)
            raise

    def _discard(self, fd: int) -> None:
        """Close and remove the file just opened, when it is still the (regular) file at `path`."""
        self._fd = None
        try:
            st = os.fstat(fd)
            here = os.stat(self.path)
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)

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


# ---------------------------------------------------------------- choosing the file

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 80
_MAX_TRIES = 1000


def is_record_folder(record: str | os.PathLike[str]) -> bool:
    """Whether `record` names a folder for `open_record`, not a file.

    A folder is an existing directory, a path ending in a separator (`"runs/"`), or a path
    whose last part has no suffix and does not exist (`"runs"`). Anything else is a file:
    `"run.gtr"`, `"runs/today.gtr"`, or an existing file even without a suffix.
    """
    text = os.fspath(record)
    if text.endswith(os.sep) or (os.altsep is not None and text.endswith(os.altsep)):
        return True
    path = Path(text)
    if path.is_dir():
        return True
    if path.suffix:
        return False
    # Looked at again: another process may have just created the folder.
    return not os.path.lexists(path) or path.is_dir()


def safe_run_name(run: str) -> str:
    """`run` as a safe file name: letters, digits, `.`, `_` and `-` only, no leading dot or
    dash, at most 80 characters; "run" when nothing is left."""
    name = _UNSAFE.sub("_", run).lstrip(".-")[:_MAX_NAME]
    return name or "run"


def open_record(
    record: str | os.PathLike[str], *, run: str, overwrite: bool = False, now: float | None = None
) -> RecordWriter:
    """Open the record file for a run named `run`, creating missing folders.

    `record` is a file or a folder (see `is_record_folder`: an existing directory, a path
    ending in a separator, or a path with no suffix that does not exist):

    - a folder gets a new file at every run, `<run>-<YYYYmmdd-HHMMSS>.gtr` (the run name
      made safe, `safe_run_name`; local time), with `-2`, `-3`, ... before the suffix when
      that name is taken. Each file is created with O_EXCL, so two processes never share
      one; `overwrite` does not apply.
    - a file is created; one that exists already is refused unless `overwrite=True`
      (then it is replaced).

    Args:
        record: the file or folder.
        run: the run's name, used to name a file in a folder.
        overwrite: replace an existing record file.
        now: the time to name a folder's file by (default: the current time).

    Raises:
        RecordExistsError: the file exists and `overwrite` is False; the message names it
            and both ways out.
        RecordPathError: any other reason the file or its folders cannot be created (a
            parent that is a file, no permission, a full disk); the message names the path.
            It is an `OSError` (with `filename` and `errno`), and the matching built-in kind
            (`PermissionError`, `NotADirectoryError`, ...). No empty file is left behind.
        ValueError: `record` is empty.
    """
    text = os.fspath(record)
    if not text:
        raise ValueError("record path is empty: give a file such as 'run.gtr' or a folder such as 'runs/'")
    path = Path(text)
    if not is_record_folder(text):
        _make_folder(path.parent, f"record file {text!r}")
        return RecordWriter(path, overwrite=overwrite)
    _make_folder(path, f"records of run {run!r}")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    stem = f"{safe_run_name(run)}-{stamp}"
    for n in range(1, _MAX_TRIES + 1):
        candidate = path / (f"{stem}{RECORD_SUFFIX}" if n == 1 else f"{stem}-{n}{RECORD_SUFFIX}")
        if os.path.lexists(candidate):
            continue
        try:
            return RecordWriter(candidate)
        except FileExistsError:  # another process took it between the check and the open
            continue
    raise _path_error(
        errno.EEXIST, f"cannot pick a new record file in {text!r}: {stem}{RECORD_SUFFIX} and {_MAX_TRIES - 1} "
        "numbered names after it are all taken", path
    )


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
