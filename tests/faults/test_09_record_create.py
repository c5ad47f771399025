"""Issue 12, item 9: a full disk at the start, or during the run.

Before: with room for the hello but not the RunStart, `watch()` went on with a record
holding a hello and part of a frame, which blocked the re-run ("already exists"); the log
line named the sink, viewers were not told, and a record cut by a full disk ended mid-frame.
After: at the start `watch()` raises a `RecordPathError` naming the path and leaves no file;
during the run training goes on, the record is dropped with one log line naming its path,
the viewers get one `LogLine`, and the record ends on a whole frame.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from gradtui.model.events import LogLine, RunStart, StepStats
from gradtui.wire import codec as wire
from gradtui.wire.record import RecordPathError, RecordWriter, read_record

torch = pytest.importorskip("torch")
import gradtui  # noqa: E402 - after the torch check

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="tells a record's descriptor by /proc")

HELLO = len(wire.hello_frame(role="record"))


class FullDisk:
    """`os.write` as on a disk with `room` bytes left for files under `where`: a short write, then ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, where: Path, room: int) -> None:
        self.room = room
        self.where = str(where)
        self.refused = 0
        self._real = os.write
        monkeypatch.setattr(os, "write", self.write)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(self.where):
            return self._real(fd, data)
        n = min(len(data), self.room)
        if n == 0:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        wrote = self._real(fd, bytes(data[:n]))
        self.room -= wrote
        return wrote


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _train(mon: gradtui.Monitor, model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        loss = model(torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        mon.step(loss)
        opt.step()


def _run_start_size(tmp_path: Path) -> int:
    """Bytes of the RunStart frame `watch` writes for `_model()` (measured on a roomy disk)."""
    path = tmp_path / "measure.gtr"
    gradtui.watch(_model(), record=path, detectors=False).close()
    data = path.read_bytes()
    start = next(e for e in read_record(path).events if isinstance(e, RunStart))
    frame = wire.encode(start)
    assert frame in data
    path.unlink()
    return len(frame)


def test_a_full_disk_at_the_start_raises_naming_the_path_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = _run_start_size(tmp_path)
    where = tmp_path / "disk"
    where.mkdir()
    # No room; room for part of the hello; for the hello; for the hello and part of the RunStart.
    for room in (0, HELLO // 2, HELLO, HELLO + start // 2, HELLO + start - 1):
        path = where / "run.gtr"
        with monkeypatch.context() as patch:
            FullDisk(patch, where, room)
            with pytest.raises(RecordPathError) as info:
                gradtui.watch(_model(), record=path, queue=True)
        exc = info.value
        assert str(path) in str(exc) and exc.filename == str(path) and exc.errno == errno.ENOSPC, room
        assert "No space left on device" in str(exc) and "<gradtui" not in str(exc)
        assert list(where.iterdir()) == [], f"room {room}: a file was left behind"
        # The user frees some space and runs again: nothing blocks it.
        mon = gradtui.watch(_model(), record=path, detectors=False)
        mon.close()
        assert isinstance(read_record(path).events[0], RunStart)
        path.unlink()


def test_a_full_record_folder_at_the_start_leaves_no_file_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = _run_start_size(tmp_path)
    folder = tmp_path / "runs"
    FullDisk(monkeypatch, folder, HELLO + start // 2)
    with pytest.raises(RecordPathError) as info:
        gradtui.watch(_model(), record=str(folder) + os.sep)
    assert str(folder) in str(info.value)
    assert list(folder.iterdir()) == []


@pytest.mark.usefixtures("every_step_sampling")  # counts sampled steps
def test_a_full_disk_mid_run_drops_the_record_once_and_tells_the_viewers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    start = _run_start_size(tmp_path)
    path = tmp_path / "run.gtr"
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    disk = FullDisk(monkeypatch, tmp_path, HELLO + start + 3000)  # a few steps fit, then the disk is full
    with caplog.at_level(logging.ERROR, logger="gradtui"):
        mon = gradtui.watch(model, opt, record=path, queue=True, detectors=False)
        _train(mon, model, opt, 40)  # training goes on
        mon.close()
    assert mon.step_count == 40 and disk.refused == 1  # dropped at the first refusal, never tried again

    lines = [r.getMessage() for r in caplog.records if r.name == "gradtui"]
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and "No space left on device" in lines[0] and "<gradtui" not in lines[0]

    assert mon.events is not None
    seen = mon.events.drain()
    told = [e for e in seen if isinstance(e, LogLine) and e.stream == "gradtui"]
    assert len(told) == 1 and str(path) in told[0].text and "training goes on" in told[0].text
    assert sum(isinstance(e, StepStats) for e in seen) == 40

    rec = read_record(path)
    recorded = [e.step for e in rec.events if isinstance(e, StepStats)]
    assert rec.truncated_bytes == 0, "the record ends mid-frame"
    assert 0 < len(recorded) < 40 and recorded == list(range(len(recorded)))
    assert f"up to step {recorded[-1]}" in told[0].text


def test_a_write_cut_short_by_a_full_disk_is_taken_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.gtr"
    w = RecordWriter(path)
    w.write_frame(wire.encode_frame({"t": "log", "text": "kept", "stream": "log"}))
    size = path.stat().st_size
    FullDisk(monkeypatch, tmp_path, 7)
    with pytest.raises(OSError, match="No space"):
        w.write_frame(wire.encode_frame({"t": "log", "text": "x" * 100, "stream": "log"}))
    w.close()
    assert path.stat().st_size == size
    rec = read_record(path)
    assert rec.truncated_bytes == 0 and [e.text for e in rec.events if isinstance(e, LogLine)] == ["kept"]


def test_a_watch_that_fails_after_opening_its_record_leaves_no_file_and_no_hook(tmp_path: Path) -> None:
    import socket

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hooks = len(opt._optimizer_step_post_hooks)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            gradtui.watch(model, opt, record=tmp_path / "run.gtr", listen=f"127.0.0.1:{port}")
    assert not (tmp_path / "run.gtr").exists(), "a re-run with the same record path must work"
    assert len(opt._optimizer_step_post_hooks) == hooks, "nothing stays hooked into the optimizer"
    mon = gradtui.watch(model, opt, record=tmp_path / "run.gtr", detectors=False)
    _train(mon, model, opt, 2)
    mon.close()
