"""Issue 12, item 6: a damaged record is read past the damage, never thrown away whole.

Before: one flipped bit made `report` refuse the whole file (rc 2, no summary), replay stop
there (half the run lost on average), and a flipped length field read as a clean truncation.
After: every reader resynchronises on the next valid frame and says what it skipped.
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradtui import cli
from gradtui.model.events import Event, LayerInfo, LogLine, RunEnd, RunStart, StepStats, UpdateStats
from gradtui.sources.replay import ReplaySource
from gradtui.wire import codec as wire
from gradtui.wire.load import load
from gradtui.wire.record import RecordWriter, read_record

STEPS = 40
MIDDLE = 20
"""The step whose frame is damaged."""
LAYERS = 3


def _start() -> RunStart:
    return RunStart(
        run="forty", pid=1, started=1000.0, layers=tuple(LayerInfo(f"fc{i}", "Linear", 12) for i in range(LAYERS)),
        lrs=(0.1,), clip_mode="off", clip_threshold=1.0, every=1, detail_every=10, device="cpu",
    )


def _step(i: int) -> StepStats:
    g = np.full(LAYERS, 1.0 + i)
    return StepStats(
        step=i, time=1000.0 + i, loss=1.0 / (i + 1), lrs=(0.1,), grad_norm=g, has_grad=np.ones(LAYERS, bool),
        nonfinite=np.zeros(LAYERS, np.int64), global_norm=float(np.linalg.norm(g)), clipped_norm=1.0,
        clip_factor=1.0, clip_mode="off", clip_threshold=1.0, steps_per_sec=10.0,
    )


def _events() -> list[Event]:
    out: list[Event] = [_start()]
    for i in range(STEPS):
        out.append(_step(i))
        if i % 10 == 5:
            out.append(UpdateStats(step=i, update_ratio=np.full(LAYERS, 1e-3)))
        if i == 30:
            out.append(LogLine(text="half way"))
    out.append(RunEnd(step=STEPS, status="ok"))
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int, int]:
    """The bytes of a 40-step record, and where the frame of step `MIDDLE` starts and ends."""
    path = tmp_path_factory.mktemp("clean") / "run.gtr"
    w = RecordWriter(path)
    for e in _events():
        w.write(e)
    w.close()
    data = path.read_bytes()
    frame = wire.encode(_step(MIDDLE))
    at = data.index(frame)
    return data, at, at + len(frame)


def _flip(data: bytes, offset: int, bit: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def _steps(events: list[Event]) -> list[int]:
    return [e.step for e in events if isinstance(e, StepStats)]


EVERY_STEP_BUT_MIDDLE = [i for i in range(STEPS) if i != MIDDLE]

# (name, byte offset in the frame: 0-1 magic, 2-5 length, 6-9 CRC, 10.. payload, bit)
CLASSES = [
    ("magic first byte", 0, 0),
    ("magic second byte", 1, 7),
    ("length +1", 2, 0),
    ("length +128", 2, 7),
    ("length +256", 3, 0),
    ("length +64 KiB (past the end of the file)", 4, 0),
    ("length +2 GiB (over MAX_FRAME)", 5, 7),
    ("CRC low bit", 6, 0),
    ("CRC high bit", 9, 7),
    ("payload first byte", 10, 3),
    ("payload middle", None, 5),
    ("payload last byte", -1, 1),
]


def _offset(where: int | None, at: int, end: int) -> int:
    if where is None:
        return (at + wire.HEADER.size + end) // 2
    return end + where if where < 0 else at + where


@pytest.mark.parametrize(("name", "where", "bit"), CLASSES, ids=[c[0] for c in CLASSES])
def test_a_flipped_bit_costs_one_step_and_is_reported(
    tmp_path: Path, clean: tuple[bytes, int, int], name: str, where: int | None, bit: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, at, end = clean
    path = tmp_path / "bad.gtr"
    path.write_bytes(_flip(data, _offset(where, at, end), bit))

    rec = read_record(path)
    assert _steps(rec.events) == EVERY_STEP_BUT_MIDDLE
    assert isinstance(rec.events[-1], RunEnd)
    assert rec.truncated_bytes == 0, "damage read as a clean truncation"
    [damage] = rec.damage
    assert (damage.offset, damage.bytes) == (at, end - at)
    assert (damage.after_step, damage.before_step) == (MIDDLE - 1, MIDDLE + 1)

    assert cli.main(["report", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["steps"] == STEPS and out["sampled_steps"] == STEPS - 1 and out["status"] == "ok"
    assert out["loss"]["first"] == 1.0 and out["loss"]["last"] == 1.0 / STEPS
    assert out["truncated_bytes"] == 0
    assert [(d["offset"], d["bytes"], d["after_step"], d["before_step"]) for d in out["damage"]] == [
        (at, end - at, MIDDLE - 1, MIDDLE + 1)
    ]
    assert "damaged" in captured.err and f"at byte {at}" in captured.err

    with pytest.warns(RuntimeWarning, match="damaged"):
        run = load(path)
    assert run.steps.tolist() == EVERY_STEP_BUT_MIDDLE and run.status == "ok"
    assert run.grad_norm[MIDDLE - 1 : MIDDLE + 1, 0].tolist() == [float(MIDDLE), float(MIDDLE + 2)]
    assert run.damage == out["damage"]


def test_no_bit_of_a_frame_header_or_its_length_reads_as_a_truncation(
    tmp_path: Path, clean: tuple[bytes, int, int]
) -> None:
    """Every one of the 80 header bits (the issue: 9 of 40 length flips were called a clean cut)."""
    data, at, end = clean
    path = tmp_path / "bad.gtr"
    for offset in range(at, at + wire.HEADER.size):
        for bit in range(8):
            path.write_bytes(_flip(data, offset, bit))
            rec = read_record(path)
            where = f"byte {offset - at} bit {bit}"
            assert rec.truncated_bytes == 0 and len(rec.damage) == 1, where
            assert _steps(rec.events) == EVERY_STEP_BUT_MIDDLE, where


def test_every_payload_byte_is_survived(tmp_path: Path, clean: tuple[bytes, int, int]) -> None:
    data, at, end = clean
    path = tmp_path / "bad.gtr"
    for offset in range(at + wire.HEADER.size, end):
        path.write_bytes(_flip(data, offset, offset % 8))
        rec = read_record(path)
        assert _steps(rec.events) == EVERY_STEP_BUT_MIDDLE and rec.damage[0].frames == 1, offset - at


def test_a_burst_of_garbage_loses_only_the_frames_it_covers(tmp_path: Path, clean: tuple[bytes, int, int]) -> None:
    data, at, end = clean
    rng = np.random.default_rng(6)
    garbage = rng.integers(0, 256, 3 * (end - at), dtype=np.uint8).tobytes()
    path = tmp_path / "bad.gtr"
    path.write_bytes(data[: at + 5] + garbage + data[at + 5 + len(garbage) :])
    rec = read_record(path)
    steps = _steps(rec.events)
    lost = sorted(set(range(STEPS)) - set(steps))
    assert lost and lost[0] == MIDDLE and len(lost) <= 4 and steps[-1] == STEPS - 1
    assert rec.truncated_bytes == 0 and len(rec.damage) == 1 and rec.damage[0].frames is None
    assert rec.damage[0].after_step == MIDDLE - 1 and rec.damage[0].before_step == lost[-1] + 1


def test_a_damaged_hello_or_run_start_still_reads_the_run(
    tmp_path: Path, clean: tuple[bytes, int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    data, _, _ = clean
    path = tmp_path / "bad.gtr"
    path.write_bytes(_flip(data, 3, 0))  # the hello's length field
    rec = read_record(path)
    assert isinstance(rec.events[0], RunStart) and _steps(rec.events) == list(range(STEPS))
    assert rec.damage[0].offset == 0

    hello = len(wire.hello_frame(role="record"))
    path.write_bytes(_flip(data, hello + 20, 2))  # inside the RunStart
    assert cli.main(["report", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sampled_steps"] == STEPS
    assert [layer["name"] for layer in out["layers"]] == ["layer0", "layer1", "layer2"]  # by index, as the viewer
    assert out["damage"][0]["offset"] == hello and out["damage"][0]["before_step"] == 0


def test_a_cut_after_damage_is_both(tmp_path: Path, clean: tuple[bytes, int, int]) -> None:
    data, at, end = clean
    path = tmp_path / "bad.gtr"
    path.write_bytes(_flip(data, at + 3, 1)[:-7])  # damage in the middle, then cut inside the RunEnd
    rec = read_record(path)
    assert len(rec.damage) == 1 and rec.truncated_bytes > 0
    assert _steps(rec.events) == EVERY_STEP_BUT_MIDDLE and not isinstance(rec.events[-1], RunEnd)


def test_the_report_table_shows_the_rest_and_warns(
    tmp_path: Path, clean: tuple[bytes, int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    data, at, _ = clean
    path = tmp_path / "bad.gtr"
    path.write_bytes(_flip(data, at + 12, 4))
    assert cli.main(["report", str(path)]) == 0
    captured = capsys.readouterr()
    assert "steps 40" in captured.out and "finished" in captured.out
    warning = [line for line in captured.err.splitlines() if line.startswith("gradtui: warning:")]
    assert len(warning) == 1 and "1 region(s)" in warning[0] and "the report covers the rest" in warning[0]
    assert f"after step {MIDDLE - 1}, before step {MIDDLE + 1}" in captured.err


def _play_all(src: ReplaySource) -> list[Event]:
    got: list[Event] = []
    deadline = time.monotonic() + 30
    while not src.at_end and time.monotonic() < deadline:
        got.extend(src.poll())
        time.sleep(0.01)
    got.extend(src.poll())
    return got


def test_replay_plays_on_past_the_damage_and_says_so_once(tmp_path: Path, clean: tuple[bytes, int, int]) -> None:
    data, at, _ = clean
    path = tmp_path / "bad.gtr"
    path.write_bytes(_flip(data, at + 4, 0))  # the length field: 64 KiB past the end of the file
    src = ReplaySource(path, speed=math.inf, follow=False)
    try:
        got = _play_all(src)
    finally:
        src.close()
    assert _steps(got) == EVERY_STEP_BUT_MIDDLE and isinstance(got[-1], RunEnd)
    notices = [e.text for e in got if isinstance(e, LogLine) and e.stream == "gradtui"]
    assert len(notices) == 1 and "damaged" in notices[0] and "ends mid-frame" not in notices[0]
    assert f"between steps {MIDDLE - 1} and {MIDDLE + 1}" in notices[0]
    assert src.truncated_bytes == 0


def test_a_followed_record_resyncs_as_it_grows(tmp_path: Path, clean: tuple[bytes, int, int]) -> None:
    """A live record whose length field was hit must not wait forever for bytes that never come."""
    data, at, end = clean
    bad = _flip(data, at + 4, 0)
    path = tmp_path / "live.gtr"
    path.write_bytes(bad[: end + 50])  # the damaged frame and part of the next
    src = ReplaySource(path, speed=math.inf, follow=True)
    try:
        got = src.poll()
        deadline = time.monotonic() + 5
        while src.last_step < MIDDLE - 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(path, "ab") as fh:
            fh.write(bad[end + 50 :])
        deadline = time.monotonic() + 30
        while not any(isinstance(e, RunEnd) for e in got) and time.monotonic() < deadline:
            got.extend(src.poll())
            time.sleep(0.02)
    finally:
        src.close()
    assert _steps(got) == EVERY_STEP_BUT_MIDDLE


def test_frames_of_unknown_types_and_joined_records_are_skipped(tmp_path: Path) -> None:
    """A CRC-valid frame that is no event of ours costs that frame; a second hello (records joined
    with cat) costs nothing."""
    path = tmp_path / "joined.gtr"
    body = b"\x81\xa1t\xa6future"  # {"t": "future"}
    alien = struct.pack("<2sII", b"GT", len(body), zlib.crc32(body)) + body
    frames = [wire.encode(e) for e in _events()]
    path.write_bytes(wire.hello_frame(role="record") + b"".join(frames[:5]) + alien + wire.hello_frame(role="record")
                     + b"".join(frames[5:]))
    rec = read_record(path)
    assert _steps(rec.events) == list(range(STEPS))
    [damage] = rec.damage
    assert damage.frames == 1 and "unknown event type 'future'" in damage.reason


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=64), where=st.integers(1, STEPS))
def test_garbage_between_frames_costs_no_frame(garbage: bytes, where: int) -> None:
    """Bytes that are no frame, spliced in before the frame of step `where - 1`'s successor: every
    real frame still reads (the scanner tries every byte), and the garbage is the damage."""
    events = _events()
    frames = [wire.encode(e) for e in events]
    cut = [i for i, e in enumerate(events) if isinstance(e, StepStats)][where - 1] + 1
    data = wire.hello_frame(role="record") + b"".join(frames[:cut]) + garbage + b"".join(frames[cut:])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spliced.gtr"
        path.write_bytes(data)
        rec = read_record(path)
    assert _steps(rec.events) == list(range(STEPS)) and rec.truncated_bytes == 0
    assert [(d.bytes, d.after_step) for d in rec.damage] == [(len(garbage), where - 1)]
