"""Record files: the wire stream written to disk, append-only, one frame per write.

Every frame goes to the kernel in a single `os.write` on an unbuffered descriptor, so
a crash of the training process loses at most the frame being written, and a reader
can follow the file while it grows. A file cut at any byte reads back to its last
whole frame; a damaged one reads past the damage (`gradtui.wire.scan`), which is
reported in `Record.damage`. `open_record` picks the file for a run: a given file (never
replaced unless asked, never shared with a live writer: `gradtui.wire.record_lock`), or
a new file per run in a folder.

Three ways to read one: `read_record` (every event in memory), `iter_record` (streamed),
and `gradtui.wire.index.RecordIndex` (where every frame is; the events stay on disk).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradtui.model.events import Event, RunSteps, StepStats
from gradtui.wire import codec as wire
from gradtui.wire.record_lock import RecordBusy, holder_words, lock_holder, lock_record
from gradtui.wire.scan import Damage, Frame, FrameScanner, read_start

RECORD_SUFFIX = ".gtr"


def _refuse_directory(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory, not a record file")


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


class RecordBusyError(RecordPathError):
    """Another live writer holds the record file: it is left untouched."""

    holder: int | None = None
    """That writer's process id, when it can be told."""


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
    """Append events to a record file, holding its lock (`record_lock`) until `close`.

    Use `open_record` to pick the file (a folder gets a new one per run) and create
    missing folders; this class opens exactly `path`. The lock is taken before anything
    is truncated or written, so a record a live process writes is never touched.

    Raises:
        RecordExistsError: `path` exists and `overwrite` is False.
        RecordBusyError: another live writer holds `path` (whatever `overwrite` says).
        RecordPathError: `path` cannot be created or its hello frame cannot be written (no
            empty file is left behind); the message names the path.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._end = 0
        """File size after the last whole frame written."""
        if self.path.is_dir():
            raise _path_error(
                errno.EISDIR, f"record path {str(self.path)!r} is a folder; give a file name, or use open_record",
                self.path,
            )
        # Never O_TRUNC: the lock must be ours before an existing file is touched.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if overwrite else os.O_EXCL)
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileExistsError:
            raise self._exists() from None
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ENOENT):
                _refuse_file_ancestor(self.path.parent, f"record file {str(self.path)!r}")
            raise _path_error(
                exc.errno, f"cannot create record file {str(self.path)!r}: {_why(exc)}", self.path
            ) from None
        try:
            lock_record(fd)
        except RecordBusy as busy:
            os.close(fd)
            raise self._busy(busy.holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        try:
            if overwrite:
                os.ftruncate(fd, 0)
            self.write_frame(wire.hello_frame(role="record"))
        except OSError as exc:
            self.discard()
            raise _path_error(
                exc.errno, f"cannot write to record file {str(self.path)!r}: {_why(exc)}", self.path
            ) from None
        except BaseException:
            self.discard()
            raise

    def _exists(self) -> RecordPathError:
        try:
            holder = lock_holder(os.stat(self.path))
        except OSError:
            holder = None
        if holder is None:
            return _path_error(
                errno.EEXIST, f"record file {str(self.path)!r} already exists: {EXISTS_HINT}", self.path
            )
        return self._busy(holder)

    def _busy(self, holder: int | None) -> RecordBusyError:
        message = (
            f"record file {str(self.path)!r} is in use: {holder_words(holder)}; it was left untouched. "
            "Give another file, or a folder such as record='runs/' for a new file each run"
        )
        exc = RecordBusyError(errno.EBUSY, message)
        exc.filename = os.fspath(self.path)
        exc.holder = holder
        return exc

    def discard(self) -> None:
        """Close, and remove the file when it is still the (regular) file at `path`: for a
        record that never got its first event, which would block a re-run."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            st = os.fstat(fd)
            here = os.stat(self.path)
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def abandon(self, exc: OSError) -> RecordPathError:
        """`discard` a record whose first event could not be written; returns the error to raise."""
        self.discard()
        return _path_error(
            exc.errno, f"cannot write to record file {str(self.path)!r}: {_why(exc)} (nothing was recorded, and "
            "the file was removed)", self.path
        )

    def write_frame(self, frame: bytes) -> None:
        """Append one already-encoded frame (`wire.encode`), in one `os.write`.

        A write that fails part way (a full disk) is taken back, so the file still ends on
        a whole frame.

        Raises:
            ValueError: the record is closed.
            wire.WireError: `frame` is not exactly one whole frame.
            OSError: the write failed.
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
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            if len(view) < len(frame):
                try:
                    os.ftruncate(self._fd, self._end)
                except OSError:
                    pass
            raise
        self._end += len(frame)

    def write(self, event: Event) -> None:
        """Append one event as one frame."""
        self.write_frame(wire.encode(event))

    def close(self) -> None:
        """Close the file, which releases its lock."""
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
        except (FileExistsError, RecordBusyError):  # another process took it between the check and the open
            continue
    raise _path_error(
        errno.EEXIST, f"cannot pick a new record file in {text!r}: {stem}{RECORD_SUFFIX} and {_MAX_TRIES - 1} "
        "numbered names after it are all taken", path
    )


# ---------------------------------------------------------------- reading whole


@dataclass
class Record:
    """The events of a record file, and what could not be read of it."""

    events: list[Event] = field(default_factory=list)
    truncated_bytes: int = 0
    """Bytes after the last whole frame (a file cut mid-write)."""
    damage: list[Damage] = field(default_factory=list)
    """Damaged regions skipped, in file order (with the steps read on either side)."""


def read_record(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> Record:
    """Read every whole frame of a record file, past any damage (see `Record.damage`).

    Raises:
        FileNotFoundError: no such file.
        wire.WireError: the file is not a gradtui record.
    """
    out = Record()
    for event in iter_record(path, out, max_bytes=max_bytes):
        out.events.append(event)
    return out


class _Events:
    """Frames and damage (from a `FrameScanner`) as events, noting the steps around each damage."""

    def __init__(self, state: Record) -> None:
        self.state = state
        self.last_step: int | None = None
        self._awaiting: list[Damage] = []

    def damaged(self, damage: Damage) -> None:
        damage.after_step = self.last_step
        self.state.damage.append(damage)
        self._awaiting.append(damage)

    def events(self, items: list[Frame | Damage]) -> Iterator[Event]:
        for item in items:
            if isinstance(item, Damage):
                self.damaged(item)
                continue
            payload = item.payload
            if payload["t"] == "hello":
                # Records joined end to end (`cat a.gtr b.gtr`): the next RunStart starts the next run.
                continue
            try:
                event = wire.decode_event(payload)
            except wire.WireError as exc:
                at = item.offset - wire.HEADER.size
                self.damaged(Damage(at, item.length + wire.HEADER.size, 1, f"{exc} (frame at byte {at})"))
                continue
            if isinstance(event, (StepStats, RunSteps)):
                first = event.step
                if isinstance(event, RunSteps) and isinstance(event.steps, np.ndarray) and event.steps.size:
                    first = min(first, int(event.steps.ravel()[0]))
                for damage in self._awaiting:
                    damage.before_step = first
                self._awaiting.clear()
                self.last_step = event.step
            yield event


def iter_record(
    path: str | os.PathLike[str], state: Record | None = None, *, max_bytes: int | None = None
) -> Iterator[Event]:
    """Stream the events of a record file, chunk by chunk, past any damage.

    `state` (a `Record`, its `events` left alone) gets `truncated_bytes` and `damage` once
    the iterator is exhausted.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: the file cannot be read.
        wire.WireError: the file is not a gradtui record.
    """
    p = Path(path)
    _refuse_directory(p)
    state = state if state is not None else Record()
    reader = _Events(state)
    with open(p, "rb") as fh:
        chunk = fh.read(1 << 20)
        seen = len(chunk)
        start = read_start(chunk, p)
        if start is None:  # cut inside its hello: no events
            state.truncated_bytes = seen
            return
        if start.damage is not None:
            reader.damaged(start.damage)
        scanner = FrameScanner(start.data_start)
        items = scanner.feed(chunk[start.data_start :])
        while True:
            yield from reader.events(items)
            if max_bytes is not None and seen >= max_bytes:
                state.truncated_bytes = scanner.pending
                return
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            seen += len(chunk)
            items = scanner.feed(chunk)
        yield from reader.events(scanner.finish())
    state.truncated_bytes = scanner.pending
