"""`gradtui run`: a script as a child of the viewer, its output, its exit, detaching."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from attach_helpers import env_for, stop_process, wait_for, write_scripts

from gradtui import cli
from gradtui.model.events import Event, LogLine, RunEnd, RunStart, StepStats
from gradtui.sources.attach import SocketSource
from gradtui.sources.child import RunSource, describe_exit, script_label
from gradtui.wire import runs


def _collect(
    source: SocketSource | RunSource, until: Callable[[list[Event]], bool], timeout: float, what: str
) -> list[Event]:
    got: list[Event] = []

    def check() -> bool:
        got.extend(source.poll())
        return until(got)

    wait_for(check, timeout, what)
    return got


def _texts(events: list[Event], stream: str) -> list[str]:
    return [e.text for e in events if isinstance(e, LogLine) and e.stream == stream]


@pytest.fixture
def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "rt"
    monkeypatch.setenv("GRADTUI_RUNTIME_DIR", str(path))
    return path


def test_a_crashing_script_shows_its_traceback_and_exit_code(tmp_path: Path, rt: Path) -> None:
    train, _ = write_scripts(tmp_path)
    src = RunSource(
        [sys.executable, str(train), "--crash-at", "5", "--print-every", "1"], env=env_for(rt)
    )
    try:
        got = _collect(src, lambda ev: src.finished.is_set() and len(src.events) == 0, 60, "the script's exit")
        got += src.poll()
    finally:
        src.close()
    assert src.exit_code == 1
    assert [e.step for e in got if isinstance(e, StepStats)] == list(range(6))
    output = _texts(got, "output")
    assert "training started" in output and "step 4 loss" in " ".join(output)
    assert "Traceback (most recent call last):" in output
    assert output[-1] == "ValueError: boom at step 5"
    status = _texts(got, "gradtui")
    assert status == ["train.py exited with code 1"]
    # The exit status comes after every line the script printed.
    last_output = max(i for i, e in enumerate(got) if isinstance(e, LogLine) and e.stream == "output")
    assert got.index(next(e for e in got if isinstance(e, LogLine) and e.stream == "gradtui")) > last_output
    ends = [e for e in got if isinstance(e, RunEnd)]
    assert ends[0].status == "error" and "ValueError: boom at step 5" in ends[0].error
    assert "ValueError: boom at step 5" in src.log_path.read_text()
    assert list(rt.glob("*.sock")) == [], "the crashed run removed its socket"


def test_a_script_that_never_watches_still_reports_its_output_and_status(tmp_path: Path, rt: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text("import sys\nprint('hello from plain')\nprint('to stderr', file=sys.stderr)\nsys.exit(3)\n")
    src = RunSource([sys.executable, str(script)], env=env_for(rt))
    try:
        got = _collect(src, lambda ev: any(isinstance(e, RunEnd) for e in ev), 30, "the script's end")
    finally:
        src.close()
    assert _texts(got, "output") == ["hello from plain", "to stderr"]
    assert _texts(got, "gradtui") == ["plain.py exited with code 3"]
    end = [e for e in got if isinstance(e, RunEnd)][0]
    assert end.status == "error" and "exited with code 3" in end.error
    assert not any(isinstance(e, RunStart) for e in got)


@pytest.mark.usefixtures("every_step_sampling")  # counts sampled steps
def test_detaching_leaves_the_script_running_and_attach_picks_it_up(tmp_path: Path, rt: Path) -> None:
    train, _ = write_scripts(tmp_path)
    stop = tmp_path / "stop"
    src = RunSource(
        [sys.executable, str(train), "--until", str(stop), "--sleep", "0.01", "--print-every", "10"],
        env=env_for(rt),
    )
    attached: SocketSource | None = None
    try:
        before = _collect(
            src, lambda ev: sum(isinstance(e, StepStats) for e in ev) >= 20, 60, "steps before detaching"
        )
        message = src.detach()
        assert f"pid {src.pid}" in message and f"gradtui attach {src.pid}" in message and str(src.log_path) in message
        size = src.log_path.stat().st_size
        time.sleep(1.0)
        assert src.process.poll() is None, "the script keeps running without its viewer"
        assert src.log_path.stat().st_size > size, "and keeps printing (no broken pipe)"

        info = runs.resolve(runs.list_runs(rt), str(src.pid))
        assert info.log == str(src.log_path) and info.socket is not None
        attached = SocketSource(info.socket, log_path=info.log)
        last_before = max(e.step for e in before if isinstance(e, StepStats))
        got = _collect(
            attached,
            lambda ev: max((e.step for e in ev if isinstance(e, StepStats)), default=-1) > last_before + 100
            and any(isinstance(e, LogLine) for e in ev),
            60,
            "history and live steps after attaching again",
        )
        assert isinstance(got[0], RunStart)
        steps = [e.step for e in got if isinstance(e, StepStats)]
        assert steps == list(range(steps[-1] + 1)), "the whole history, then live, with no gap"
        assert any(t.startswith("step ") for t in _texts(got, "output"))
        stop.touch()
        assert src.process.wait(30) == 0
        _collect(attached, lambda ev: any(isinstance(e, RunEnd) for e in ev), 20, "the end of the run")
        assert list(rt.glob("*.sock")) == []
    finally:
        if attached is not None:
            attached.close()
        stop.touch()
        stop_process(src.process)
        src.close()


def test_quitting_without_detaching_stops_the_script(tmp_path: Path, rt: Path) -> None:
    script = tmp_path / "loop.py"
    script.write_text("import time\nprint('looping', flush=True)\nwhile True:\n    time.sleep(0.05)\n")
    src = RunSource([sys.executable, str(script)], env=env_for(rt))
    _collect(src, lambda ev: "looping" in _texts(ev, "output"), 30, "the script to start")
    src.close()
    assert src.process.poll() is not None
    assert src.exit_code is not None
    got = src.poll()
    assert _texts(got, "gradtui") == [f"loop.py {describe_exit(src.exit_code)}"]


def test_run_cli_refuses_a_missing_script_in_one_line(
    rt: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["run", str(tmp_path / "nope.py")]) == 2
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("gradtui: error: ") for line in err)
    assert "no such script" in err[0]


def test_script_labels() -> None:
    assert script_label([sys.executable, "/a/b/train.py", "--x"]) == "train.py"
    assert script_label([sys.executable, "-m", "pkg.train"]) == "pkg.train"
    assert script_label(["torchrun", "--nproc", "2"]) == "torchrun"
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert os.sep not in script_label(["/usr/bin/env"])
