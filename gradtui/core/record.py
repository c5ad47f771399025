"""Record files: the wire stream written to disk, append-only, one frame per write.

Every frame goes to the kernel in a single `os.write` on an unbuffered descriptor, so
a crash of the training process loses at most the frame being written, and a reader
can follow the file while it grows. A file cut at any byte reads back to its last
whole frame.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gradtui.core import wire
from gradtui.core.events import Event

RECORD_SUFFIX = ".gtr"


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
        self._write(wire.hello_frame(role="record"))

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise ValueError(f"record {str(self.path)!r} is closed")
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def write(self, event: Event) -> None:
        """Append one event as one frame."""
        self._write(wire.encode(event))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
    if p.is_dir():
        raise IsADirectoryError(f"{str(p)!r} is a directory, not a record file")
    dec = wire.FrameDecoder()
    seen = 0
    with open(p, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            seen += len(chunk)
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
    if seen == 0:
        raise wire.WireError(f"{p}: empty file, not a gradtui record")
    if state is not None:
        state.truncated_bytes = dec.pending
