"""The wire format: framed msgpack, shared by sockets, pipes and record files.

A stream is a sequence of frames. Each frame is a 10-byte header (magic ``b"GT"``,
payload length and CRC-32 of the payload, both little-endian u32) followed by a
msgpack map with a type tag ``"t"``. The first frame of every stream is a hello
frame carrying the schema version. NumPy arrays travel as msgpack extension values:
a dtype code, the shape, and the raw little-endian buffer. Nothing here ever
unpickles or evaluates data: a decoder that meets garbage raises `WireError`.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
import typing
import zlib
from collections.abc import Iterator
from types import NoneType, UnionType
from typing import Any

import msgpack
import numpy as np

from gradtui.model.commands import COMMAND_TYPES, Command, UnknownCommand, command_kind
from gradtui.model.events import EVENT_TYPES, Event, LayerInfo

WIRE_VERSION = 1
MAGIC = b"GT"
HEADER = struct.Struct("<2sII")
MAX_FRAME = 16 * 1024 * 1024
"""Largest payload accepted; a header announcing more is refused before any allocation."""
MAX_ITEMS = 1 << 20
"""Most containers plus container elements one frame may decode to. Per-layer data travels as
array extensions (one item each), so only a `RunStart` grows with the model, by about five items
a layer: 200k layers fit. An item costs up to ~72 bytes of Python objects, so this bounds what a
hostile 16 MiB frame of small containers costs (else ~1.2 GB) to well under 100 MB."""
MAX_CONTAINER = MAX_ITEMS // 4
"""Most elements in one list or map: the budget is checked as each container closes, so this is
how far past it a frame can get."""

_ARRAY_EXT = 1
_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f8"),
    2: np.dtype("<f4"),
    3: np.dtype("<i8"),
    4: np.dtype("<i4"),
    5: np.dtype("|b1"),
    6: np.dtype("|u1"),
}
_DTYPE_CODES = {dt: code for code, dt in _DTYPES.items()}
_MAX_NDIM = 4


class WireError(ValueError):
    """Bytes that are not a valid gradtui stream (garbage, bad version, bad frame)."""


# ---------------------------------------------------------------- frames


def encode_frame(payload: dict[str, Any]) -> bytes:
    """Frame one msgpack map."""
    body: bytes = msgpack.packb(payload, default=_pack_default, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise WireError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


def hello_frame(role: str = "probe", **extra: Any) -> bytes:
    """The first frame of a stream: schema version and who is speaking."""
    return encode_frame({"t": "hello", "v": WIRE_VERSION, "role": role, **extra})


class FrameDecoder:
    """Incremental decoder: feed bytes, get whole payloads (dicts) back.

    A partial frame at the end stays buffered until more bytes come. Garbage, a bad
    checksum, an oversize length (see `next_frame`) or a missing/unknown hello raises
    `WireError`; after that the decoder refuses further input.
    """

    def __init__(self, *, expect_hello: bool = True, max_frame: int = MAX_FRAME, offset: int = 0) -> None:
        self._buf = bytearray()
        self._expect_hello = expect_hello
        self._max_frame = max_frame
        self._failed: WireError | None = None
        self.hello: dict[str, Any] | None = None
        self.offset = offset
        """Stream offset after the last whole frame (hello included): `offset` (the stream
        offset of the first byte fed, 0 by default) plus the bytes of whole frames so far."""

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return every payload completed by them, hello excluded."""
        if self._failed is not None:
            raise self._failed
        self._buf += data
        out: list[dict[str, Any]] = []
        try:
            while True:
                payload = self._next_payload()
                if payload is None:
                    return out
                if self._expect_hello and self.hello is None:
                    self.hello = check_hello(payload)
                else:
                    out.append(payload)
        except WireError as exc:
            self._failed = exc
            raise

    def _next_payload(self) -> dict[str, Any] | None:
        span = next_frame(self._buf, 0, self._max_frame, base=self.offset)
        if span is None:
            return None
        start, end = span
        body = bytes(self._buf[start:end])
        del self._buf[:end]
        self.offset += end
        return unpack_payload(body)


def next_frame(
    buf: bytes | bytearray | memoryview, pos: int = 0, max_frame: int = MAX_FRAME, *, base: int = 0
) -> tuple[int, int] | None:
    """Find the frame that starts at `buf[pos]`: the one place a frame header is read.

    Returns `(body_start, body_end)`, indices into `buf` of the payload of a whole frame
    whose checksum matches (the next frame starts at `body_end`), or None when `buf`
    holds only the beginning of a frame and more bytes are needed. `base` is the stream
    offset of `buf[0]`, for the messages.

    Raises:
        WireError: bad magic (as soon as the first byte shows it), a length over
            `max_frame` (before any allocation), or a checksum mismatch.
    """
    at = base + pos
    avail = len(buf) - pos
    if avail < HEADER.size:
        if avail > 0 and not MAGIC.startswith(bytes(buf[pos : pos + 2])):
            raise WireError(f"bad frame magic at byte {at}")
        return None
    magic, length, crc = HEADER.unpack_from(buf, pos)
    if magic != MAGIC:
        raise WireError(f"bad frame magic at byte {at}: {bytes(magic)!r}")
    if length > max_frame:
        raise WireError(f"frame of {length} bytes at byte {at} exceeds the {max_frame}-byte limit")
    start = pos + HEADER.size
    end = start + length
    if len(buf) < end:
        return None
    with memoryview(buf)[start:end] as body:
        if zlib.crc32(body) != crc:
            raise WireError(f"checksum mismatch in frame at byte {at}")
    return start, end


class _ItemBudget:
    """Counts decoded items through msgpack's container hooks and stops a frame at `MAX_ITEMS`.

    msgpack's own limits are per container; a frame of many small containers needs a total.
    """

    __slots__ = ("left",)

    def __init__(self, items: int) -> None:
        self.left = items

    def _spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise WireError(f"frame holds more than {MAX_ITEMS} values")

    def on_list(self, obj: list[Any]) -> list[Any]:
        self._spend(1 + len(obj))
        return obj

    def on_map(self, obj: dict[Any, Any]) -> dict[Any, Any]:
        self._spend(1 + 2 * len(obj))
        return obj


def unpack_payload(body: bytes) -> dict[str, Any]:
    """Decode one frame body to a dict with a string "t" tag.

    Raises:
        WireError: garbage, a container nested too deep (msgpack's own stack of 1024 levels),
            a string, extension or container over its limit, or more than `MAX_ITEMS` values.
    """
    if len(body) > MAX_FRAME:
        raise WireError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    budget = _ItemBudget(MAX_ITEMS)
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            ext_hook=_ext_hook,
            use_list=True,
            list_hook=budget.on_list,
            object_hook=budget.on_map,
            # A header's count is allocated before its elements are read: cap it per container too.
            max_array_len=MAX_CONTAINER,
            max_map_len=MAX_CONTAINER,
            max_str_len=MAX_FRAME,
            max_bin_len=MAX_FRAME,
            max_ext_len=MAX_FRAME,
        )
    except WireError:
        raise
    except Exception as exc:  # msgpack raises many types for garbage (RecursionError too): fold them into one.
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise WireError(f"undecodable frame: {detail}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise WireError("frame is not a map with a type tag")
    return obj


def check_hello(payload: dict[str, Any]) -> dict[str, Any]:
    """Validate a hello payload; raises WireError on anything but our known version."""
    if payload.get("t") != "hello":
        raise WireError(f"stream does not start with a hello frame (got {payload.get('t')!r})")
    version = payload.get("v")
    if type(version) is not int or version != WIRE_VERSION:  # 1.0 and True are not version 1
        raise WireError(f"unsupported wire version {version!r} (this gradtui speaks {WIRE_VERSION})")
    return payload


def iter_frames(data: bytes) -> Iterator[dict[str, Any]]:
    """Whole payloads of a complete byte string that starts with hello."""
    dec = FrameDecoder()
    yield from dec.feed(data)


# ---------------------------------------------------------------- arrays


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _pack_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


_SHAPES = [struct.Struct(f"<BB{ndim}I") for ndim in range(_MAX_NDIM + 1)]
_NATIVE_LE = sys.byteorder == "little"


def _pack_array(arr: np.ndarray) -> msgpack.ExtType:
    # Already little-endian and of a sendable dtype (every array the probe makes): its bytes as they are.
    code = _DTYPE_CODES.get(arr.dtype) if _NATIVE_LE else None
    convert_to = None
    if code is None:
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder not in ("|", "<", "=") else arr.dtype
        convert_to = dt.newbyteorder("<") if dt.byteorder == "=" else dt
        code = _DTYPE_CODES.get(np.dtype(convert_to))
        if code is None:
            raise WireError(f"arrays of dtype {arr.dtype} cannot be sent")
    if arr.ndim > _MAX_NDIM:
        raise WireError(f"arrays of {arr.ndim} dimensions cannot be sent")
    data = arr.tobytes() if convert_to is None else np.ascontiguousarray(arr, dtype=convert_to).tobytes()
    return msgpack.ExtType(_ARRAY_EXT, _SHAPES[arr.ndim].pack(code, arr.ndim, *arr.shape) + data)


def _ext_hook(code: int, data: bytes) -> np.ndarray:
    if code != _ARRAY_EXT:
        raise WireError(f"unknown extension type {code}")
    if len(data) < 2:
        raise WireError("truncated array header")
    dcode, ndim = data[0], data[1]
    dt = _DTYPES.get(dcode)
    if dt is None or ndim > _MAX_NDIM or len(data) < 2 + 4 * ndim:
        raise WireError("bad array header")
    shape = struct.unpack_from(f"<{ndim}I", data, 2)
    count = 1
    for n in shape:
        count *= n
    raw = data[2 + 4 * ndim :]
    if count * dt.itemsize != len(raw):
        raise WireError(f"array of shape {shape} does not match its {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dt).reshape(shape).astype(dt.newbyteorder("="), copy=True)


# ---------------------------------------------------------------- typed messages


def _to_plain(value: Any) -> Any:
    if isinstance(value, LayerInfo):
        return [value.name, value.kind, value.numel]
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def encode_message(msg: Event | Command) -> dict[str, Any]:
    """A typed event or command as a wire payload."""
    tag = _EVENT_TAGS.get(type(msg))
    if tag is None:
        tag = command_kind(typing.cast(Command, msg))
    out: dict[str, Any] = {"t": tag}
    for name in _field_names(type(msg)):
        out[name] = _to_plain(getattr(msg, name))
    return out


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """A message type's fields, read once (`dataclasses.fields` costs a few us at every event)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def encode(msg: Event | Command) -> bytes:
    """A typed event or command as one frame."""
    return encode_frame(encode_message(msg))


_EVENT_TAGS = {cls: tag for tag, cls in EVENT_TYPES.items()}


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and NoneType in args:
            return None
        errors = []
        for arg in args:
            if arg is NoneType:
                continue
            try:
                return _convert(arg, value, where)
            except WireError as exc:
                errors.append(str(exc))
        raise WireError("; ".join(errors) or f"{where}: bad value")
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise WireError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WireError(f"{where}: expected a number, got {type(value).__name__}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WireError(f"{where}: expected an integer, got {type(value).__name__}")
        return value
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise WireError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
        return value
    if tp is np.ndarray:
        if not isinstance(value, np.ndarray):
            raise WireError(f"{where}: expected an array, got {type(value).__name__}")
        return value
    if tp is LayerInfo:
        if not (isinstance(value, list) and len(value) == 3):
            raise WireError(f"{where}: expected [name, kind, numel]")
        return LayerInfo(
            _convert(str, value[0], where + ".name"),
            _convert(str, value[1], where + ".kind"),
            _convert(int, value[2], where + ".numel"),
        )
    raise WireError(f"{where}: unsupported field type {tp!r}")  # pragma: no cover - a schema bug


_HINTS: dict[type, dict[str, Any]] = {}


def _build(cls: type, payload: dict[str, Any]) -> Any:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in payload:
            kwargs[f.name] = _convert(hints[f.name], payload[f.name], f"{payload['t']}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise WireError(f"{payload['t']}: missing field {f.name!r}")
    # Unknown extra fields are ignored: a newer minor schema may add fields.
    return cls(**kwargs)


def decode_event(payload: dict[str, Any]) -> Event:
    """A wire payload as a typed event; unknown types or bad fields raise WireError."""
    cls = EVENT_TYPES.get(payload["t"])
    if cls is None:
        raise WireError(f"unknown event type {payload['t']!r}")
    event: Event = _build(cls, payload)
    return event


def decode_command(payload: dict[str, Any]) -> Command:
    """A wire payload as a command; an unknown kind decodes to `UnknownCommand`."""
    cls = COMMAND_TYPES.get(payload["t"])
    if cls is None:
        cid = payload.get("id")
        return UnknownCommand(kind=str(payload["t"])[:64], id=cid if isinstance(cid, str) else "")
    cmd: Command = _build(cls, payload)
    return cmd
