"""Reading a record past damage: resynchronise on the next valid frame.

A record is a run of frames written one `os.write` each. A flipped bit or a torn sector
must cost the frames it touches, not the rest of the file, so readers use `FrameScanner`
instead of a strict `codec.FrameDecoder`: at a frame that does not check out it looks for
the next place where a whole valid frame starts (magic `b"GT"`, a length within
`MAX_FRAME`, a matching CRC-32, a payload that decodes) and carries on from there,
reporting what it skipped as a `Damage`.

A file cut mid-write is not damage: at the end of the input, an incomplete frame that no
valid frame follows is the `pending` tail (a frame still being written, or lost in a
crash). One that valid frames follow is damage (its length field was hit).

`parse_hello` and `read_start` check the start of a file; `read_start` also accepts a
record whose hello frame itself is damaged when valid event frames follow it.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any

from gradtui.model.events import EVENT_TYPES
from gradtui.wire import codec as wire

HELLO_MAX = 1 << 16
"""Largest hello frame a record may start with: a longer first frame is not a hello."""


@dataclass
class Damage:
    """Bytes of a record skipped because they did not read as frames."""

    offset: int
    """File offset of the first byte skipped."""
    bytes: int
    frames: int | None
    """Frames lost, when that is known (a frame whose header held but whose body did not); else None."""
    reason: str
    """What was wrong with the first bad frame."""
    after_step: int | None = None
    """The last step read before the damage (None: none before it)."""
    before_step: int | None = None
    """The first step read after it (None: none after it)."""

    def entry(self) -> dict[str, Any]:
        """As an entry of `gradtui report --json`'s `damage`."""
        return {
            "offset": self.offset,
            "bytes": self.bytes,
            "frames": self.frames,
            "after_step": self.after_step,
            "before_step": self.before_step,
            "reason": self.reason,
        }

    def describe(self) -> str:
        """One line: where, how much, and between which steps."""
        lost = "an unknown number of frames" if self.frames is None else f"{self.frames} frame(s)"
        if self.after_step is None and self.before_step is None:
            where = "no step read on either side"
        elif self.before_step is None:
            where = f"after step {self.after_step}, nothing read after it"
        elif self.after_step is None:
            where = f"before step {self.before_step}"
        else:
            where = f"between steps {self.after_step} and {self.before_step}"
        return f"{self.bytes} bytes skipped at byte {self.offset} ({lost}; {where}): {self.reason}"


@dataclass(frozen=True, slots=True)
class Frame:
    """A whole valid frame: where its payload is in the file, and the payload."""

    offset: int
    """File offset of the payload (the header is the `HEADER.size` bytes before it)."""
    length: int
    payload: dict[str, Any]


_FRAME, _SHORT, _BAD, _UNDECODABLE = range(4)


class FrameScanner:
    """Frames of a byte stream, fed in pieces; damage is skipped and reported, never raised.

    `feed` returns the whole frames and the closed `Damage` regions in stream order; a
    region is closed by the valid frame that ends it, or by `finish`, called once at the
    end of the input. After `finish`, `pending` is the cut tail (0 when none).

    Args:
        offset: Stream offset of the first byte fed (the start of the events of a record).
        max_frame: Longest payload accepted.
    """

    def __init__(self, offset: int = 0, *, max_frame: int = wire.MAX_FRAME) -> None:
        self._buf = bytearray()
        self._at = offset
        """Stream offset of `_buf[0]`."""
        self._max_frame = max_frame
        self._damage: Damage | None = None
        self._done = False

    @property
    def pending(self) -> int:
        """Bytes held that are not yet a whole frame (a frame being written, or a cut tail)."""
        return len(self._buf)

    @property
    def offset(self) -> int:
        """Stream offset of the first byte held (just past the last whole frame or damage)."""
        return self._at

    def feed(self, data: bytes) -> list[Frame | Damage]:
        """Add bytes; return what they complete."""
        if self._done:
            raise ValueError("FrameScanner.feed after finish")
        self._buf += data
        return self._scan(final=False)

    def finish(self) -> list[Frame | Damage]:
        """The end of the input: decide the bytes still held (damage, more frames, or a cut tail)."""
        self._done = True
        return self._scan(final=True)

    # ------------------------------------------------------------ internals

    def _next_valid(self, start: int, final: bool) -> tuple[int, bool] | None:
        """The first place at or after `start` where a whole valid frame starts: `(index, True)`;
        else `(index, False)` for the first place one may still start once more bytes come;
        else None."""
        buf = self._buf
        undecided: int | None = None
        i = start
        while True:
            j = buf.find(wire.MAGIC, i)
            if j < 0:
                if not final and undecided is None and len(buf) > start and buf[-1:] == wire.MAGIC[:1]:
                    undecided = len(buf) - 1
                return None if undecided is None else (undecided, False)
            kind = _classify(buf, j, self._at, self._max_frame)[0]
            if kind == _FRAME:
                return j, True
            if kind == _SHORT and not final and undecided is None:
                undecided = j
            i = j + 1

    def _open(self, pos: int, reason: str, frames: int | None) -> None:
        d = self._damage
        if d is None:
            self._damage = Damage(self._at + pos, 0, frames, reason)
        else:
            d.frames = None if d.frames is None or frames is None else d.frames + frames

    def _close(self, pos: int, out: list[Frame | Damage]) -> None:
        d, self._damage = self._damage, None
        if d is not None:
            d.bytes = self._at + pos - d.offset
            out.append(d)

    def _scan(self, final: bool) -> list[Frame | Damage]:
        buf = self._buf
        out: list[Frame | Damage] = []
        pos = 0
        while pos < len(buf):
            kind, end, payload, why = _classify(buf, pos, self._at, self._max_frame)
            if kind == _FRAME:
                assert payload is not None
                self._close(pos, out)
                body = pos + wire.HEADER.size
                out.append(Frame(self._at + body, end - body, payload))
                pos = end
                continue
            if kind == _UNDECODABLE:
                self._open(pos, why, 1)  # its checksum holds, so its length does: exactly this frame is lost
                pos = end
                continue
            found = self._next_valid(pos + 1, final)
            valid = found is not None and found[1]
            if kind == _SHORT and not valid:
                if not final:
                    break  # the rest of a frame may still come
                if self._damage is None and not self._misdeclared(pos):
                    break  # a cut tail: it stays `pending`
                self._open(pos, f"frame at byte {self._at + pos} runs past the end of the file", None)
                pos = len(buf)
                break
            frames: int | None = None
            if kind == _SHORT:
                # A whole frame starts inside the bytes this one claims: its length field was hit.
                why = f"frame at byte {self._at + pos} claims bytes past the next whole frame"
            else:
                target = found[0] if found is not None and valid else len(buf) if final and found is None else None
                if target is not None and self._declared_end(pos) == target:
                    frames = 1  # its header held and the next frame starts where it said it ends
            self._open(pos, why, frames)
            if found is None:
                pos = len(buf)  # nothing here can start a frame
                break
            pos = found[0]
            if not valid:
                break  # wait for more bytes where a frame may start
        if final:
            self._close(pos, out)
        del buf[:pos]
        self._at += pos
        return out

    def _declared_end(self, pos: int) -> int | None:
        """Where the frame at `pos` says it ends, when its magic and length look sound."""
        if len(self._buf) - pos < wire.HEADER.size:
            return None
        magic, length, _ = wire.HEADER.unpack_from(self._buf, pos)
        if magic != wire.MAGIC or length > self._max_frame:
            return None
        return int(pos + wire.HEADER.size + length)

    def _misdeclared(self, pos: int) -> bool:
        """The bytes from `pos` to the end are a whole frame whose length field was hit (its
        checksum matches what is there), not a frame cut short."""
        if len(self._buf) - pos <= wire.HEADER.size:
            return False
        crc: int = wire.HEADER.unpack_from(self._buf, pos)[2]
        return zlib.crc32(memoryview(self._buf)[pos + wire.HEADER.size :]) == crc


def _classify(
    buf: bytes | bytearray, pos: int, at: int, max_frame: int
) -> tuple[int, int, dict[str, Any] | None, str]:
    """What starts at `buf[pos]` (`at`: the stream offset of `buf[0]`): (kind, end of its
    payload, the payload, why it is bad)."""
    try:
        span = wire.next_frame(buf, pos, max_frame, base=at)
    except wire.WireError as exc:
        return _BAD, 0, None, str(exc)
    if span is None:
        return _SHORT, 0, None, ""
    start, end = span
    try:
        return _FRAME, end, wire.unpack_payload(bytes(buf[start:end])), ""
    except wire.WireError as exc:
        return _UNDECODABLE, end, None, f"{exc} (frame at byte {at + pos})"


# ---------------------------------------------------------------- the start of a record


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


@dataclass
class Start:
    """Where the events of a record start."""

    hello: dict[str, Any]
    """The hello payload ({} when the hello was damaged)."""
    data_start: int
    """File offset of the first event frame."""
    damage: Damage | None = None
    """The hello frame itself was damaged: these bytes were skipped."""


def _first_event_frame(head: bytes) -> int | None:
    """Where the first whole frame of a known event type starts after byte 0 of `head`."""
    for item in FrameScanner(1).feed(head[1:]):
        if isinstance(item, Frame) and item.payload.get("t") in EVENT_TYPES:
            return item.offset - wire.HEADER.size
    return None


def read_start(head: bytes, where: str | os.PathLike[str]) -> Start | None:
    """`parse_hello`, but a damaged hello with whole event frames after it is a damaged record, not a foreign file.

    A first frame that checks out but is not a hello of our version is still refused, as is
    a file with no whole event frame in `head`. Returns None when the file ends inside its
    hello frame.

    Raises:
        wire.WireError: as `parse_hello`.
    """
    try:
        got = parse_hello(head, where)
    except wire.WireError as exc:
        if _classify(head, 0, 0, HELLO_MAX)[0] not in (_BAD, _UNDECODABLE):
            raise  # a sound frame that is not our hello: another kind of file, or another version
        first = _first_event_frame(head)
        if first is None:
            raise
        return Start({}, first, Damage(0, first, 1, f"the hello frame is damaged ({exc})"))
    if got is not None:
        return Start(got[0], got[1])
    first = _first_event_frame(head)
    if first is None:
        return None
    return Start({}, first, Damage(0, first, 1, "the hello frame claims bytes past the next whole frame"))
