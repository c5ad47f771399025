"""Replaying record files: pacing, pause, speed, seek, follow, cut and damaged files."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from attach_helpers import env_for, start, stop_process, wait_for, write_scripts

from gradtui import cli
from gradtui.model.commands import SetLR
from gradtui.model.events import (
    Alert,
    CommandResult,
    Event,
    LayerInfo,
    LogLine,
    RunEnd,
    RunStart,
    RunSteps,
    StepStats,
    UpdateStats,
)
from gradtui.model.store import RunStore
from gradtui.sources.replay import ReplaySource
from gradtui.wire import codec as wire
from gradtui.wire.record import RecordWriter, read_record

T0 = 1_700_000_000.0
DT = 0.125  # exact in binary: recorded times add up without rounding
N = 200
GAP_BEFORE = 100
"""Step 100 comes an hour after step 99 (a run paused overnight)."""


def _step(i: int, t: float, n: int = 3) -> StepStats:
    return StepStats(
        step=i, time=t, loss=1.0 / (i + 1), lrs=(0.1,), grad_norm=np.full(n, float(i)), has_grad=np.ones(n, bool),
        nonfinite=np.zeros(n, np.int64), global_norm=1.0, clipped_norm=1.0, clip_factor=1.0, clip_mode="off",
        clip_threshold=1.0, steps_per_sec=8.0,
    )


def _times() -> list[float]:
    return [T0 + (i + 1) * DT + (3600.0 if i >= GAP_BEFORE else 0.0) for i in range(N)]


@pytest.fixture
def record(tmp_path: Path) -> Path:
    path = tmp_path / "run.gtr"
    w = RecordWriter(path)
    w.write(
        RunStart(
            run="synthetic", pid=1, started=T0, layers=tuple(LayerInfo(f"l{i}", "Linear", 10) for i in range(3)),
            lrs=(0.1,), clip_mode="off", clip_threshold=1.0, every=1, detail_every=10, device="cpu",
        )
    )
    for i, t in enumerate(_times()):
        if i == 50:
            w.write(CommandResult("c1", "set_lr", True, 50, "lr 0.1 -> 0.05"))
        w.write(_step(i, t))
        if i % 10 == 0:
            w.write(UpdateStats(step=i, update_ratio=np.full(3, 1e-3)))
        if i == 120:
            w.write(Alert(step=120, layer="l0", kind="exploding", active=True, value=5.0, threshold=1.0))
        if i % 40 == 0:
            w.write(LogLine(text=f"log at {i}"))
    w.write(RunEnd(step=N, status="ok"))
    w.close()
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _steps(events: list[Event]) -> list[int]:
    return [e.step for e in events if isinstance(e, StepStats)]


def _play_all(src: ReplaySource, timeout: float = 30.0) -> list[Event]:
    got: list[Event] = []

    def done() -> bool:
        got.extend(src.poll())
        return src.at_end

    wait_for(done, timeout, "the replay to reach the end")
    got.extend(src.poll())
    return got


def _same(a: list[Event], b: list[Event]) -> None:
    assert [type(e) for e in a] == [type(e) for e in b]
    for x, y in zip(a, b, strict=True):
        if isinstance(x, StepStats) and isinstance(y, StepStats):
            assert x.step == y.step and x.time == y.time
            np.testing.assert_array_equal(x.grad_norm, y.grad_norm)
        else:
            assert x == y or isinstance(x, UpdateStats)


def test_at_max_speed_every_event_plays_in_file_order(record: Path) -> None:
    src = ReplaySource(record, speed=math.inf, follow=False)
    try:
        assert src.wait_indexed()
        got = _play_all(src)
    finally:
        src.close()
    _same(got, read_record(record).events)
    assert src.position == N - 1 and src.last_step == N - 1 and src.first_step == 0
    assert "end of record" in src.status


def test_playback_follows_recorded_time_with_speed_pause_and_short_gaps(record: Path) -> None:
    clock = Clock()
    src = ReplaySource(record, follow=False, clock=clock, max_gap=1.0)
    try:
        assert src.wait_indexed()
        first = src.poll()
        assert isinstance(first[0], RunStart) and _steps(first) == []
        clock.now += 1.0  # one recorded second: 8 steps
        assert _steps(src.poll()) == list(range(8))
        assert src.toggle_play() is False
        clock.now += 5.0
        assert _steps(src.poll()) == [], "paused"
        assert src.toggle_play() is True
        assert src.set_speed(4.0) == 4.0
        clock.now += 0.5  # two recorded seconds at 4x: 16 steps
        assert _steps(src.poll()) == list(range(8, 24))
        assert src.set_speed(1e9) == 4096.0
        assert src.set_speed(1.0) == 1.0
        # An hour-long pause in the recording plays as at most max_gap.
        assert src.seek(GAP_BEFORE - 1) == GAP_BEFORE - 1
        assert _steps(src.poll())[-1] == GAP_BEFORE - 1
        clock.now += 0.5
        assert _steps(src.poll()) == []
        clock.now += 0.5
        assert _steps(src.poll()) == [GAP_BEFORE]
        clock.now += DT
        assert _steps(src.poll()) == [GAP_BEFORE + 1]
        with pytest.raises(ValueError, match="positive"):
            src.set_speed(0)
    finally:
        src.close()


def test_a_seek_starts_a_fresh_store_with_the_history_up_to_the_target(record: Path) -> None:
    clock = Clock()
    src = ReplaySource(record, follow=False, paused=True, backlog_steps=30, clock=clock)
    try:
        assert src.wait_indexed()
        src.poll()
        gen = src.generation
        assert src.seek(150) == 150
        assert src.generation == gen + 1
        got = src.poll()
        assert isinstance(got[0], RunStart)
        assert _steps(got) == list(range(121, 151))
        # Interventions, alerts and logs before the window are kept: they are part of the state.
        assert [e.command_id for e in got if isinstance(e, CommandResult)] == ["c1"]
        assert [e.step for e in got if isinstance(e, Alert)] == [120]
        assert [e.text for e in got if isinstance(e, LogLine)] == ["log at 0", "log at 40", "log at 80", "log at 120"]
        assert [e.step for e in got if isinstance(e, UpdateStats)] == [130, 140, 150]
        assert not any(isinstance(e, RunEnd) for e in got)
        assert src.position == 150 and "paused" in src.status
        store = RunStore()
        for e in got:
            store.apply(e)
        assert store.last is not None and store.last.step == 150 and store.count == 30
        assert store.active_flags and store.markers[0].step == 50

        assert src.seek(10) == 10
        back = src.poll()
        assert _steps(back) == list(range(11)) and not any(isinstance(e, CommandResult) for e in back)
        assert src.step_by(5) == 15
        assert _steps(src.poll())[-1] == 15
        assert src.seek(10**9) == N - 1  # clamped to the last step
        end = src.poll()
        assert _steps(end)[-1] == N - 1 and isinstance(end[-1], RunEnd) and src.at_end
        assert src.send(SetLR(value=1.0)) is not None
    finally:
        src.close()


def test_seek_goes_the_way_asked_and_stays_within_the_record(record: Path) -> None:
    """Keys pressed faster than the viewer polls: before the fix a seek set the position to -1
    until the next poll, so `>` `>` from step 150 landed on step 100 and `<` reached "step -1"."""
    src = ReplaySource(record, follow=False, paused=True, backlog_steps=10, clock=Clock())
    try:
        assert src.wait_indexed()
        src.poll()
        assert src.seek(150) == 150
        src.poll()
        # Forward twice, then back once, with no poll in between: each move builds on the last.
        assert src.step_by(10) == 160 and src.position == 160
        assert src.step_by(10) == 170 and src.position == 170
        assert src.step_by(-30) == 140
        got = src.poll()
        assert _steps(got) == list(range(131, 141)) and src.position == 140
        assert "step 140/199" in src.status
        # Back past the first step: the first step, never below it; once there, `<` does nothing.
        for _ in range(3):
            assert src.step_by(-100) >= 0
        assert src.position == 0 and "step 0/199" in src.status
        back = src.poll()
        assert _steps(back) == [0] and isinstance(back[0], RunStart)
        generation = src.generation
        assert src.step_by(-100) == 0 and src.generation == generation and src.poll() == []
        assert src.seek(-5) == 0 and _steps(src.poll()) == [0]
        # Forward past the last step: the last step and the run's end; once there, `>` does nothing.
        assert src.step_by(10**6) == N - 1
        end = src.poll()
        assert _steps(end)[-1] == N - 1 and isinstance(end[-1], RunEnd)
        generation = src.generation
        assert src.step_by(100) == N - 1 and src.generation == generation and src.poll() == []
        assert src.step_by(-100) == N - 101
        assert _steps(src.poll())[-1] == N - 101
    finally:
        src.close()


def test_a_record_cut_mid_frame_plays_to_its_last_whole_frame(record: Path, tmp_path: Path) -> None:
    data = record.read_bytes()
    cut = tmp_path / "cut.gtr"
    cut.write_bytes(data[: len(data) - 40])  # inside the last frames
    expected = read_record(cut)
    assert expected.truncated_bytes > 0
    src = ReplaySource(cut, speed=math.inf, follow=False)
    try:
        got = _play_all(src)
    finally:
        src.close()
    notices = [e.text for e in got if isinstance(e, LogLine) and e.stream == "gradtui"]
    assert len(notices) == 1 and "ends mid-frame" in notices[0]
    _same([e for e in got if not (isinstance(e, LogLine) and e.stream == "gradtui")], expected.events)
    assert src.truncated_bytes == expected.truncated_bytes


def test_a_damaged_record_plays_on_past_the_damage(record: Path, tmp_path: Path) -> None:
    """Before issue 12 replay stopped at the first damaged frame (half the run lost on average)."""
    data = bytearray(record.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF
    bad = tmp_path / "bad.gtr"
    bad.write_bytes(bytes(data))
    src = ReplaySource(bad, speed=math.inf, follow=False)
    try:
        got = _play_all(src)
    finally:
        src.close()
    steps = _steps(got)
    lost = sorted(set(range(N)) - set(steps))
    assert steps == sorted(steps) and len(lost) == 1 and 0 < lost[0] < N - 1  # one frame, one step
    assert isinstance(got[-1], RunEnd)
    notices = [e.text for e in got if isinstance(e, LogLine) and e.stream == "gradtui"]
    assert len(notices) == 1 and "damaged" in notices[0]
    assert f"between steps {lost[0] - 1} and {lost[0] + 1}" in notices[0]


@pytest.mark.usefixtures("every_step_sampling")  # counts sampled steps
def test_a_record_still_being_written_is_followed_to_its_end(tmp_path: Path) -> None:
    train, _ = write_scripts(tmp_path)
    rec = tmp_path / "live.gtr"
    steps = 120
    proc = start(
        [str(train), "--steps", str(steps), "--sleep", "0.02", "--record", str(rec), "--serve", "no"],
        env_for(tmp_path / "rt"), stderr=tmp_path / "train.err",
    )
    try:
        wait_for(lambda: rec.exists() and rec.stat().st_size > 2000, 60, "the record to start")
        src = ReplaySource(rec, speed=math.inf)  # follow=None: follows a fresh record without RunEnd
        got: list[Event] = []
        try:
            got.extend(src.poll())
            assert proc.poll() is None and src.following
            assert len(_steps(got)) < steps

            def ended() -> bool:
                got.extend(src.poll())
                return any(isinstance(e, RunEnd) for e in got)

            wait_for(ended, 60, "the followed record's RunEnd")
            wait_for(lambda: src.at_end, 5, "the replay to stop following")
        finally:
            src.close()
        assert proc.wait(30) == 0
    finally:
        stop_process(proc)
    assert _steps(got) == list(range(steps))
    assert not src.following and "end of record" in src.status


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"PK\x03\x04 a zip file", "not a gradtui record"), (None, "No such file")],
    ids=["empty", "garbage", "missing"],
)
def test_unreadable_records_get_one_clear_line(
    tmp_path: Path, content: bytes | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.gtr"
    if content is not None:
        path.write_bytes(content)
        with pytest.raises(wire.WireError):
            ReplaySource(path)
    assert cli.main(["replay", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradtui: error: ") and message in err[0]


@pytest.mark.parametrize(
    "content",
    [b"", b"PK\x03\x04 a zip file", b"hello world, not a record\n", b"GU\x00\x01"],
    ids=["empty", "zip", "text", "near-magic"],
)
def test_report_and_replay_refuse_a_file_in_the_same_words(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.gtr"
    path.write_bytes(content)
    assert cli.main(["report", str(path)]) == 2
    report = capsys.readouterr().err
    assert cli.main(["replay", str(path)]) == 2
    assert capsys.readouterr().err == report and report.count("\n") == 1


def test_a_record_cut_inside_its_hello_reads_as_the_report_reads_it(tmp_path: Path) -> None:
    """Before the fix the report read it (no events, the cut bytes ignored) and replay refused it
    ("too short to be a gradtui record")."""
    hello = wire.hello_frame(role="record")
    for cut in (1, 2, len(hello) // 2, len(hello) - 1):
        path = tmp_path / f"cut{cut}.gtr"
        path.write_bytes(hello[:cut])
        expected = read_record(path)
        assert expected.events == [] and expected.truncated_bytes == cut
        src = ReplaySource(path, speed=math.inf, follow=False)
        try:
            got = _play_all(src)
        finally:
            src.close()
        assert [type(e) for e in got] == [LogLine] and "ends mid-frame" in got[0].text  # type: ignore[attr-defined]
        assert src.truncated_bytes == cut and "no steps yet" in src.status


def test_replay_cli_refuses_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay", str(tmp_path)]) == 2
    assert "directory" in capsys.readouterr().err


def test_replay_never_needs_torch(record: Path) -> None:
    import subprocess

    code = (
        "import sys, math\nfrom gradtui.sources.replay import ReplaySource\n"
        f"s = ReplaySource({str(record)!r}, speed=math.inf, follow=False)\ns.wait_indexed()\n"
        "n = 0\nwhile not s.at_end:\n    n += len(s.poll())\n"
        "assert n > 200 and 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------- unsampled steps


def _strided_record(path: Path) -> Path:
    """Steps 0..101: those with step % 4 == 3 sampled, the others in RunSteps (0..2 first, 100..101 last)."""
    w = RecordWriter(path)
    w.write(
        RunStart(
            run="strided", pid=1, started=T0, layers=tuple(LayerInfo(f"l{i}", "Linear", 10) for i in range(3)),
            lrs=(0.1,), clip_mode="off", clip_threshold=1.0, every=4, detail_every=10, device="cpu",
        )
    )
    pending: list[int] = []
    for i in range(102):
        if i % 4 != 3:
            pending.append(i)
            continue
        w.write(RunSteps(pending[-1], np.array(pending), np.array([1.0 / (s + 1) for s in pending]), np.ones(3)))
        pending = []
        w.write(_step(i, T0 + i * DT))
        if i == 43:
            w.write(LogLine(text="log at 43"))
    w.write(RunSteps(pending[-1], np.array(pending), np.array([1.0 / (s + 1) for s in pending]), np.ones(2)))
    w.write(RunEnd(step=102, status="ok"))
    w.close()
    return path


def test_a_record_with_unsampled_steps_plays_every_step_in_order(tmp_path: Path) -> None:
    path = _strided_record(tmp_path / "strided.gtr")
    src = ReplaySource(path, speed=math.inf, follow=False)
    try:
        assert src.wait_indexed()
        got = _play_all(src)
    finally:
        src.close()
    assert [type(e) for e in got] == [type(e) for e in read_record(path).events]
    assert (src.first_step, src.last_step, src.position) == (0, 101, 101)
    store = RunStore()
    for e in got:
        store.apply(e)
    assert store.run_steps().tolist() == list(range(102))
    np.testing.assert_allclose(store.series("loss"), [1.0 / (s + 1) for s in range(102)])
    assert store.steps().tolist() == list(range(3, 102, 4)) and store.last_step == 101


def test_a_seek_into_a_strided_record_brings_the_unsampled_steps_of_its_backlog(tmp_path: Path) -> None:
    path = _strided_record(tmp_path / "strided.gtr")
    src = ReplaySource(path, follow=False, paused=True, backlog_steps=5, clock=Clock())
    try:
        assert src.wait_indexed()
        src.poll()
        assert src.seek(50) == 50  # the last event at or before step 50 is RunSteps 48..50
        got = src.poll()
    finally:
        src.close()
    assert isinstance(got[0], RunStart)
    assert _steps(got) == [31, 35, 39, 43, 47]
    unsampled = [int(s) for e in got if isinstance(e, RunSteps) for s in e.steps]
    assert unsampled == [s for s in range(32, 51) if s % 4 != 3]
    assert [e.text for e in got if isinstance(e, LogLine)] == ["log at 43"]
    store = RunStore()
    for e in got:
        store.apply(e)
    assert store.run_steps().tolist() == list(range(31, 51)) and store.last_step == 50
