"""The wire format and record files: round trips, truncation, garbage."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradtui.model.commands import SetClip, SetLR, SetPaused, UnknownCommand
from gradtui.model.events import (
    Alert,
    CommandResult,
    Dropped,
    Event,
    LayerInfo,
    LogLine,
    RunEnd,
    RunStart,
    StepStats,
    UpdateStats,
)
from gradtui.wire import codec as wire
from gradtui.wire.record import RecordWriter, read_record


def sample_events() -> list[Event]:
    n = 3
    return [
        RunStart(
            run="r", pid=42, started=1.5, layers=tuple(LayerInfo(f"l{i}", "Linear", 10 * i) for i in range(n)),
            lrs=(0.1, 0.01), clip_mode="off", clip_threshold=1.0, every=1, detail_every=5, device="cpu",
        ),
        StepStats(
            step=0, time=2.0, loss=math.nan, lrs=(0.1, 0.01), grad_norm=np.array([1.0, math.nan, math.inf]),
            has_grad=np.array([True, False, True]), nonfinite=np.array([0, 0, 4], np.int64), global_norm=math.inf,
            clipped_norm=math.inf, clip_factor=1.0, clip_mode="off", clip_threshold=1.0, steps_per_sec=0.0,
            mean_abs=np.array([0.1, math.nan, 0.2]), max_abs=np.ones(n), zero_frac=np.zeros(n),
            weight_norm=np.full(n, 3.0),
        ),
        UpdateStats(step=0, update_ratio=np.array([1e-3, math.nan, 2e-3])),
        CommandResult("abc", "set_lr", True, 1, "lr 0.1 -> 0.05 (all groups)"),
        Alert(step=1, layer=None, kind="loss_spike", active=True, value=9.0, threshold=6.0, message="é ünïcode"),
        Alert(step=2, layer="l1", kind="vanishing", active=False, value=1e-9, threshold=1e-6),
        Dropped(count=3, total=10),
        LogLine("hello\tworld", "stderr"),
        RunEnd(step=3, status="error", error="Traceback ..."),
    ]


def same(a: Event, b: Event) -> bool:
    if type(a) is not type(b):
        return False
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            if not (isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)):
                return False
        elif isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif x != y:
            return False
    return True


def test_every_event_round_trips() -> None:
    events = sample_events()
    data = wire.hello_frame() + b"".join(wire.encode(e) for e in events)
    back = [wire.decode_event(p) for p in wire.FrameDecoder().feed(data)]
    assert len(back) == len(events)
    for a, b in zip(events, back, strict=True):
        assert same(a, b), (a, b)


def test_commands_round_trip_and_unknown_kind_is_kept_for_refusal() -> None:
    cmds = [SetLR(value=0.1), SetLR(factor=0.5, group=1), SetClip("value", 0.5), SetPaused(True)]
    payloads = wire.FrameDecoder().feed(wire.hello_frame() + b"".join(wire.encode(c) for c in cmds))
    assert [wire.decode_command(p) for p in payloads] == cmds
    odd = wire.unpack_payload(msgpack.packb({"t": "launch_rockets", "id": "z9"}))
    assert wire.decode_command(odd) == UnknownCommand(kind="launch_rockets", id="z9")


def test_byte_by_byte_feeding_gives_the_same_events() -> None:
    data = wire.hello_frame() + b"".join(wire.encode(e) for e in sample_events())
    dec = wire.FrameDecoder()
    got = []
    for i in range(len(data)):
        got += dec.feed(data[i : i + 1])
    assert len(got) == len(sample_events()) and dec.pending == 0


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"XX" + bytes(8), "bad frame magic"),
        (wire.HEADER.pack(wire.MAGIC, wire.MAX_FRAME + 1, 0), "exceeds"),
        (wire.HEADER.pack(wire.MAGIC, 3, 0) + b"abc", "checksum"),
        (wire.encode_frame({"t": "hello", "v": 99}), "unsupported wire version 99"),
        (wire.encode_frame({"t": "step", "v": 1}), "does not start with a hello"),
    ],
)
def test_decoder_refuses_bad_streams(data: bytes, match: str) -> None:
    with pytest.raises(wire.WireError, match=match):
        wire.FrameDecoder().feed(data)


def _frame(body: bytes) -> bytes:
    return wire.HEADER.pack(wire.MAGIC, len(body), zlib.crc32(body)) + body


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb({"t": "step", "step": "x"}), "expected an integer"),
        (msgpack.packb({"t": "nope"}), "unknown event type"),
        (msgpack.packb({"t": "dropped", "count": 1}), "missing field 'total'"),
        (msgpack.packb({"t": "update", "step": 1, "update_ratio": msgpack.ExtType(1, b"\x01\x01\xff\xff\xff\x7f")}),
         "does not match"),
        (msgpack.packb({"t": "update", "step": 1, "update_ratio": msgpack.ExtType(9, b"")}), "unknown extension"),
    ],
)
def test_bad_payloads_raise_wire_error(payload: bytes, match: str) -> None:
    with pytest.raises(wire.WireError, match=match):
        for p in wire.FrameDecoder().feed(wire.hello_frame() + _frame(payload)):
            wire.decode_event(p)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    for prefix in (b"", wire.hello_frame()):
        try:
            for p in wire.FrameDecoder().feed(prefix + data):
                wire.decode_event(p)
        except wire.WireError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_payloads_in_valid_frames_never_escape(body: bytes) -> None:
    try:
        for p in wire.FrameDecoder().feed(wire.hello_frame() + _frame(body)):
            wire.decode_event(p)
            wire.decode_command(p)
    except wire.WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=5),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
                    max_leaves=20),
       st.sampled_from(sorted(wire.EVENT_TYPES)))
def test_structured_garbage_fields_raise_wire_error(value: object, tag: str) -> None:
    payload = {"t": tag, **{f: value for f in wire.EVENT_TYPES[tag].__dataclass_fields__}}
    try:
        wire.decode_event(wire.unpack_payload(msgpack.packb(payload)))
    except wire.WireError:
        pass


def test_oversize_announcement_is_refused_before_allocation() -> None:
    dec = wire.FrameDecoder()
    dec.feed(wire.hello_frame())
    with pytest.raises(wire.WireError, match="exceeds"):
        dec.feed(struct.pack("<2sII", b"GT", 2**32 - 1, 0))
    with pytest.raises(wire.WireError):  # a failed decoder stays failed
        dec.feed(wire.hello_frame())


# ---------------------------------------------------------------- records


def test_record_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "run.gtr"
    w = RecordWriter(path)
    for e in sample_events():
        w.write(e)
    w.close()
    rec = read_record(path)
    assert rec.truncated_bytes == 0
    assert all(same(a, b) for a, b in zip(sample_events(), rec.events, strict=True))
    assert len(rec.events) == len(sample_events())


def test_record_refuses_to_replace_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "run.gtr"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already exists"):
        RecordWriter(path)
    assert path.read_bytes() == b"precious"
    RecordWriter(path, overwrite=True).close()
    assert read_record(path).events == []


def test_record_cut_at_any_byte_reads_back_to_its_last_whole_frame(tmp_path: Path) -> None:
    events = sample_events()
    hello = wire.hello_frame(role="record")
    frames = [wire.encode(e) for e in events]
    data = hello + b"".join(frames)
    ends = [len(hello)]
    for f in frames:
        ends.append(ends[-1] + len(f))
    path = tmp_path / "cut.gtr"
    for cut in range(1, len(data) + 1):
        path.write_bytes(data[:cut])
        rec = read_record(path)
        whole = sum(1 for e in ends[1:] if e <= cut)
        assert len(rec.events) == whole, cut
        last_end = max([e for e in ends if e <= cut], default=0)
        assert rec.truncated_bytes == cut - last_end
    path.write_bytes(b"")
    with pytest.raises(wire.WireError, match="empty file"):
        read_record(path)


def test_record_written_by_the_probe_matches_its_queue(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import gradtui

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "probe.gtr"
    mon = gradtui.watch(model, opt, record=path, queue=True, detail_every=2, detectors=False)
    x, y = torch.randn(5, 3), torch.randn(5, 1)
    for i in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        mon.step(loss)
        # This step is written once the optimizer's post-step hook has measured the norm it
        # steps with, by the probe's publishing thread: flushed, every earlier step is readable.
        mon.flush()
        assert sum(isinstance(e, StepStats) for e in read_record(path).events) == i
        opt.step()
        mon.flush()
        assert sum(isinstance(e, StepStats) for e in read_record(path).events) == i + 1
    mon.close()
    assert mon.events is not None
    queued = mon.events.drain()
    recorded = read_record(path).events
    assert len(queued) == len(recorded) and all(same(a, b) for a, b in zip(queued, recorded, strict=True))


def test_new_step_fields_round_trip_and_old_records_read_with_their_defaults() -> None:
    base = sample_events()[1]
    assert isinstance(base, StepStats)
    import dataclasses

    new = dataclasses.replace(base, schedule_lrs=(0.2, 0.02), stepped_norm=0.75)
    back = wire.decode_event(wire.unpack_payload(wire.encode(new)[wire.HEADER.size :]))
    assert isinstance(back, StepStats) and back.schedule_lrs == (0.2, 0.02) and back.stepped_norm == 0.75
    old = wire.encode_message(new)
    del old["schedule_lrs"], old["stepped_norm"]  # a record made before these fields
    back = wire.decode_event(wire.unpack_payload(wire.encode_frame(old)[wire.HEADER.size :]))
    assert isinstance(back, StepStats) and back.schedule_lrs == () and math.isnan(back.stepped_norm)


@pytest.mark.parametrize("version", [1.0, True, "1", None])
def test_a_hello_must_carry_the_integer_version(version: object) -> None:
    """Before: v=1.0 and v=True passed as version 1 (they compare equal)."""
    frame = wire.encode_frame({"t": "hello", "v": version, "role": "probe"})
    with pytest.raises(wire.WireError, match="unsupported wire version"):
        wire.FrameDecoder().feed(frame)


@pytest.mark.parametrize(
    "values",
    [
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.arange(12, dtype=np.int32).reshape(2, 3, 2),
        np.array([True, False, True]),
        np.zeros((0, 5), np.float32),
    ],
)
def test_an_array_travels_as_the_same_bytes_whatever_its_layout_or_byte_order(values: np.ndarray) -> None:
    """The wire carries little-endian C-order bytes: a strided view or a big-endian copy of an
    array encodes exactly as its contiguous little-endian form, and decodes to the same values."""
    reference = msgpack.packb(values.astype(values.dtype.newbyteorder("<")), default=wire._pack_default)
    strided = np.asfortranarray(values)
    swapped = values.astype(values.dtype.newbyteorder(">"))
    for form in (values, strided, swapped, np.ascontiguousarray(values.T).T):
        assert msgpack.packb(form, default=wire._pack_default) == reference
        back = msgpack.unpackb(msgpack.packb(form, default=wire._pack_default), ext_hook=wire._ext_hook)
        assert back.dtype == values.dtype.newbyteorder("<") and np.array_equal(back, values)
