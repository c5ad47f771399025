"""Attaching viewers to a live run: real training processes, real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from attach_helpers import env_for, read_lines, start, stop_process, wait_for, write_scripts

from gradtui import cli
from gradtui.model.commands import SetLR
from gradtui.model.events import (
    CommandResult,
    Dropped,
    Event,
    LayerInfo,
    RunEnd,
    RunStart,
    RunSteps,
    StepStats,
    UpdateStats,
)
from gradtui.probe.history import History
from gradtui.sources.attach import AttachError, SocketSource
from gradtui.wire import codec as wire
from gradtui.wire import runs
from gradtui.wire.queue import DropQueue

PHASE = 2.0
HISTORY = 500
HELLO = wire.hello_frame(role="viewer")


def _live(rt: Path) -> list[runs.RunInfo]:
    if not rt.exists():
        return []
    return runs.list_runs(rt)


def _run_step(rt: Path) -> int:
    found = _live(rt)
    return found[0].step if found else -1


def _phase(times: list[float], begin: float, end: float, margin: float = 0.25) -> tuple[int, float]:
    """Steps finished inside [begin, end] (margins trimmed) and their median duration in ms."""
    inside = [t for t in times if begin + margin <= t <= end - margin]
    gaps = np.diff(inside)
    return len(inside), float(np.median(gaps) * 1000) if len(gaps) >= 3 else float("nan")


def _poll_until(
    source: SocketSource, events: list[Event], predicate: Callable[[list[Event]], bool], timeout: float, what: str
) -> None:
    def check() -> bool:
        events.extend(source.poll())
        return bool(predicate(events))

    wait_for(check, timeout, what)


# ---------------------------------------------------------------- step rate under a bad viewer


@pytest.mark.usefixtures("every_step_sampling")  # counts sampled steps
def test_training_keeps_its_pace_with_viewers_attached_stalled_killed_and_reattached(tmp_path: Path) -> None:
    train, viewer = write_scripts(tmp_path)
    rt = tmp_path / "rt"
    env = env_for(rt)
    stop_file, times_file = tmp_path / "stop", tmp_path / "times.json"
    a_out, b_out = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    # Detail statistics on every step make frames (~1.2 kB a step) big enough for a stalled viewer
    # to overflow the kernel's socket buffer and a backlog cut to 300 kB within the stall; the
    # history is cut so that a new viewer's backlog holds what comes while it digests the history.
    proc = start(
        [str(train), "--until", str(stop_file), "--times", str(times_file), "--layers", "12",
         "--detail-every", "1", "--client-bytes", "300000", "--history-steps", str(HISTORY)],
        env, stderr=tmp_path / "train.err",
    )
    viewers: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(lambda: _run_step(rt) >= 20, 60, "the run to serve and step")
        info = _live(rt)[0]
        assert info.socket is not None and info.pid == proc.pid

        t_none = time.monotonic()
        time.sleep(PHASE)
        t_none_end = time.monotonic()

        a = start([str(viewer), info.socket, str(a_out)], env)
        viewers.append(a)
        wait_for(lambda: any(x["t"] == "step" for x in read_lines(a_out)), 30, "viewer A's first steps")
        t_attached = time.monotonic()
        time.sleep(PHASE)
        t_stalled = time.monotonic()
        a.send_signal(signal.SIGSTOP)
        step_at_stall = _run_step(rt)
        time.sleep(PHASE * 1.5)
        # Long enough for ~1.8 MB of frames: past the socket buffer and the viewer's backlog.
        wait_for(lambda: _run_step(rt) >= step_at_stall + 1500, 30, "1500 steps while viewer A is stalled")
        t_stalled_end = time.monotonic()
        a.send_signal(signal.SIGCONT)
        wait_for(lambda: any(x["t"] == "dropped" for x in read_lines(a_out)), 30, "viewer A to be told of its drops")
        a.kill()
        a.wait(10)
        t_killed = time.monotonic()
        time.sleep(PHASE)
        t_killed_end = time.monotonic()

        b = start([str(viewer), info.socket, str(b_out)], env)
        viewers.append(b)
        wait_for(lambda: any(x["t"] == "step" for x in read_lines(b_out)), 30, "viewer B's first steps")
        t_again = time.monotonic()
        time.sleep(PHASE)
        t_again_end = time.monotonic()
        stop_file.touch()
        assert proc.wait(60) == 0, (tmp_path / "train.err").read_text()
        wait_for(lambda: b.poll() is not None, 30, "viewer B to see the run end")
    finally:
        for p in viewers:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
            stop_process(p)
        stop_process(proc)

    times = json.loads(times_file.read_text())
    phases = {
        "none": (t_none, t_none_end),
        "attached": (t_attached, t_stalled),
        "stalled": (t_stalled, t_stalled_end),
        "killed": (t_killed, t_killed_end),
        "reattached": (t_again, t_again_end),
    }
    stats = {name: _phase(times, *span) for name, span in phases.items()}
    report = ", ".join(f"{k}: {n} steps, median {ms:.2f} ms" for k, (n, ms) in stats.items())
    print(f"\nstep time by viewer state: {report}")
    base = stats["none"][1]
    for name, (n, ms) in stats.items():
        span = phases[name][1] - phases[name][0] - 0.5
        # Liveness, not speed (a shared machine moves step times 2x): a probe that waits for a viewer
        # shows as no steps at all, or steps as long as the stall.
        assert ms < 5.0 * base, f"{name}: {report}"
        assert n >= 0.1 * span / (base / 1000), f"{name}: {report}"

    a_lines = read_lines(a_out)
    a_steps = [x["step"] for x in a_lines if x["t"] == "step"]
    assert a_steps == sorted(set(a_steps)), "viewer A got steps out of order or twice"
    drops = [x for x in a_lines if x["t"] == "dropped"]
    assert drops and drops[0]["count"] > 0
    print(f"viewer A was told it missed {sum(d['count'] for d in drops)} frames while stalled")
    first_drop = a_lines.index(drops[0])
    before = [x["step"] for x in a_lines[:first_drop] if x["t"] == "step"]
    after = [x["step"] for x in a_lines[first_drop:] if x["t"] == "step"]
    assert before == list(range(before[0], before[-1] + 1)), "no gap before the drop"
    assert after and after[0] > before[-1] + 1, "the dropped steps are missing, and only those"

    b_lines = read_lines(b_out)
    assert b_lines[0]["t"] == "run_start"
    b_steps = [x["step"] for x in b_lines if x["t"] == "step"]
    # History then live, in order, with no gap and no duplicate, up to the last step.
    assert b_steps == list(range(b_steps[0], len(times))), "viewer B's steps are not contiguous to the end"
    assert b_steps[0] <= max(0, len(times) - HISTORY)
    assert b_lines[-1]["t"] == "run_end" and b_lines[-1]["status"] == "ok"
    assert not any(x["t"] == "dropped" for x in b_lines)
    assert not _live(rt) and not list(rt.glob("*.sock"))


# ---------------------------------------------------------------- one served run, many checks


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    info: runs.RunInfo
    rt: Path
    token: str
    port: int
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("served")
    train, _ = write_scripts(tmp)
    rt = tmp / "rt"
    token_file = tmp / "token"
    stop_file = tmp / "stop"
    err = tmp / "train.err"
    proc = start(
        [str(train), "--until", str(stop_file), "--sleep", "0.005", "--listen", "127.0.0.1:0",
         "--token-file", str(token_file)],
        env_for(rt), stderr=err,
    )
    try:
        wait_for(lambda: _run_step(rt) >= 5, 60, "the served run to step")
        info = _live(rt)[0]
        assert info.listen is not None
        yield Served(proc, info, rt, token_file.read_text().strip(), int(info.listen.rsplit(":", 1)[1]), err)
        stop_file.touch()
        assert proc.wait(30) == 0, err.read_text()
        # A clean exit leaves nothing behind.
        assert list(rt.iterdir()) == []
    finally:
        stop_process(proc)


def test_socket_directory_and_sidecar_are_private_and_listed(served: Served) -> None:
    assert stat.S_IMODE(os.stat(served.rt).st_mode) == 0o700
    assert served.info.socket is not None
    st = os.stat(served.info.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(served.info.meta_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(served.rt.parent / "token").st_mode) == 0o600
    info = served.info
    assert (info.pid, info.script) == (served.proc.pid, "train.py")
    assert abs(info.started - time.time()) < 300 and info.step >= 5
    table = runs.format_table(runs.list_runs(served.rt))
    assert str(served.proc.pid) in table and "train.py" in table and "tcp 127.0.0.1:" in table


def test_two_viewers_a_command_from_one_is_applied_once_and_acknowledged_to_both(served: Served) -> None:
    assert served.info.socket is not None
    a, b = SocketSource(served.info.socket), SocketSource(served.info.socket)
    got_a: list[Event] = []
    got_b: list[Event] = []
    try:
        _poll_until(a, got_a, lambda ev: any(isinstance(e, StepStats) for e in ev), 20, "viewer A's steps")
        _poll_until(b, got_b, lambda ev: any(isinstance(e, StepStats) for e in ev), 20, "viewer B's steps")
        assert isinstance(got_a[0], RunStart) and isinstance(got_b[0], RunStart)
        lr_before = [e for e in got_a if isinstance(e, StepStats)][-1].lrs[0]
        cmd = SetLR(factor=0.5)
        assert a.send(cmd) is None

        def acked(ev: list[Event]) -> bool:
            return any(isinstance(e, CommandResult) and e.command_id == cmd.id for e in ev)

        _poll_until(a, got_a, acked, 20, "the acknowledgement at viewer A")
        _poll_until(b, got_b, acked, 20, "the acknowledgement at viewer B")
        time.sleep(0.3)  # steps after the change
        got_a += a.poll()
        got_b += b.poll()
        for got in (got_a, got_b):
            results = [e for e in got if isinstance(e, CommandResult) and e.command_id == cmd.id]
            assert len(results) == 1 and results[0].ok
            after = [e.lrs[0] for e in got if isinstance(e, StepStats) and e.step >= results[0].step]
            assert after and all(lr == pytest.approx(lr_before * 0.5) for lr in after), "applied exactly once"
    finally:
        a.close()
        b.close()
    assert served.proc.poll() is None


def _raw_unix(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def _read_to_eof(s: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            return data
        data += chunk


def test_tcp_viewers_need_the_token_and_a_wrong_one_gets_nothing(served: Served) -> None:
    for hello, reason in (
        (wire.hello_frame(role="viewer", token="not-the-token"), "wrong token"),
        (wire.hello_frame(role="viewer"), "missing token"),
    ):
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
            s.sendall(hello)
            assert _read_to_eof(s) == b"", "a refused viewer must not get a single byte"
        wait_for(lambda r=reason: r in served.log(), 10, f"the refusal ({reason}) in the run's log")
    with pytest.raises(AttachError, match="refused"):
        SocketSource(("127.0.0.1", served.port), token="nope")
    src = SocketSource(("127.0.0.1", served.port), token=served.token)
    got: list[Event] = []
    try:
        _poll_until(src, got, lambda ev: sum(isinstance(e, StepStats) for e in ev) >= 3, 20, "steps over TCP")
        assert isinstance(got[0], RunStart)
    finally:
        src.close()


def _steps(events: list[Event]) -> set[int]:
    """Every step the events carry, sampled (StepStats) or not (RunSteps)."""
    out = {e.step for e in events if isinstance(e, StepStats)}
    for e in events:
        if isinstance(e, RunSteps):
            out.update(e.steps.tolist())
    return out


@pytest.mark.parametrize(
    ("data", "logged"),
    [
        (b"garbage that is not a frame", "malformed hello"),
        (HELLO + b"XX" + b"\0" * 30, f"bad frame magic at byte {len(HELLO)}"),
        (HELLO + wire.HEADER.pack(wire.MAGIC, 1 << 30, 0), "frame of 1073741824 bytes"),
        (HELLO + wire.HEADER.pack(wire.MAGIC, 4, 0) + b"abcd", "checksum mismatch"),
        (HELLO + wire.encode_frame({"t": "set_lr", "value": "fast"}), "set_lr.value: expected a number"),
    ],
    ids=["garbage-hello", "garbage-frame", "oversize", "bad-checksum", "bad-command"],
)
def test_bad_frames_close_only_that_connection_with_a_logged_reason(served: Served, data: bytes, logged: str) -> None:
    assert served.info.socket is not None
    watcher = SocketSource(served.info.socket)
    try:
        with _raw_unix(served.info.socket) as s:
            if data.startswith(HELLO):
                # Attached first (the run answers), then the bad frame.
                s.sendall(HELLO)
                assert s.recv(1 << 16)
                data = data[len(HELLO) :]
            s.sendall(data)
            _read_to_eof(s)  # the server closes it
        wait_for(lambda: logged in served.log(), 10, f"{logged!r} in the run's log")
        # The run and the other viewer go on.
        got: list[Event] = []
        # Steps as the run sends them at its defaults: sampled ones whole, the others run-wide.
        _poll_until(watcher, got, lambda ev: len(_steps(ev)) > 100, 20, "more steps")
        step_before = max(_steps(got))
        _poll_until(watcher, got, lambda ev: max(_steps(ev)) > step_before + 5, 20, "live")
        assert not any(isinstance(e, RunEnd) for e in got)
    finally:
        watcher.close()
    assert served.proc.poll() is None


def test_cli_attach_errors_are_one_line(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRADTUI_RUNTIME_DIR", str(served.rt))
    assert cli.main(["attach", f"127.0.0.1:{served.port}", "--token", "nope"]) == 2
    assert cli.main(["attach", "no-such-run"]) == 2
    assert cli.main(["attach", f"127.0.0.1:{served.port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("gradtui: error: ") for line in err), err
    assert "refused" in err[0] and "no live run named 'no-such-run'" in err[1] and "token" in err[2]
    assert cli.main(["ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["pid"] for r in listed] == [served.proc.pid]


# ---------------------------------------------------------------- process exit


def test_the_socket_is_removed_on_normal_exit_exception_and_sigterm_and_ls_cleans_after_sigkill(
    tmp_path: Path,
) -> None:
    train, _ = write_scripts(tmp_path)
    cases = {
        "normal": ["--steps", "30"],
        "exception": ["--crash-at", "20", "--no-with"],
        "sigterm": ["--sleep", "0.01"],
        "sigkill": ["--sleep", "0.01"],
    }
    procs = {}
    for name, extra in cases.items():
        rt = tmp_path / name
        procs[name] = (start([str(train), *extra], env_for(rt), stderr=tmp_path / f"{name}.err"), rt)
    try:
        for name in ("sigterm", "sigkill"):
            proc, rt = procs[name]
            wait_for(lambda rt=rt: any(rt.glob("*.sock")), 60, f"the {name} run's socket")
        watcher = SocketSource(next(procs["sigterm"][1].glob("*.sock")))
        got: list[Event] = []
        # Attached before the signal (on a loaded box the handshake may take a while): the end
        # must come as a RunEnd, not as a connection cut before the viewer was let in.
        _poll_until(watcher, got, lambda ev: any(isinstance(e, RunStart) for e in ev), 30, "the SIGTERM run's start")
        procs["sigterm"][0].send_signal(signal.SIGTERM)
        procs["sigkill"][0].kill()
        codes = {name: proc.wait(60) for name, (proc, _) in procs.items()}
        _poll_until(watcher, got, lambda ev: any(isinstance(e, RunEnd) for e in ev), 10, "the RunEnd of SIGTERM")
        watcher.close()
    finally:
        for proc, _ in procs.values():
            stop_process(proc)
    assert codes == {"normal": 0, "exception": 1, "sigterm": -signal.SIGTERM, "sigkill": -signal.SIGKILL}
    assert "ValueError: boom at step 20" in (tmp_path / "exception.err").read_text()
    end = [e for e in got if isinstance(e, RunEnd)][0]
    assert end.status == "interrupted" and "SIGTERM" in end.error
    for name in ("normal", "exception", "sigterm"):
        assert list(procs[name][1].iterdir()) == [], name
    killed_rt = procs["sigkill"][1]
    assert len(list(killed_rt.glob("*.sock"))) == 1 and len(list(killed_rt.glob("*.json"))) == 1
    assert runs.list_runs(killed_rt) == []
    assert list(killed_rt.iterdir()) == [], "gradtui ls removes a dead run's entry"


# ---------------------------------------------------------------- pieces, without processes


def test_the_runtime_directory_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "rt"
    monkeypatch.setenv("GRADTUI_RUNTIME_DIR", str(target))
    assert runs.runtime_dir() == target
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    os.chmod(target, 0o750)
    with pytest.raises(runs.RuntimeDirError, match="chmod 700"):
        runs.runtime_dir()
    os.chmod(target, 0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    monkeypatch.setenv("GRADTUI_RUNTIME_DIR", str(link))
    with pytest.raises(runs.RuntimeDirError, match="not a directory"):
        runs.runtime_dir()


def _step(i: int, n: int = 4) -> StepStats:
    return StepStats(
        step=i, time=float(i), loss=1.0, lrs=(0.1,), grad_norm=np.ones(n), has_grad=np.ones(n, bool),
        nonfinite=np.zeros(n, np.int64), global_norm=2.0, clipped_norm=2.0, clip_factor=1.0, clip_mode="off",
        clip_threshold=1.0, steps_per_sec=10.0,
    )


def test_history_is_bounded_and_replays_in_order() -> None:
    hist = History(max_steps=100, max_bytes=1 << 30, max_other=10)
    start_ev = RunStart(
        run="r", pid=1, started=0.0, layers=(LayerInfo("a", "Linear", 4),) * 4, lrs=(0.1,), clip_mode="off",
        clip_threshold=1.0, every=1, detail_every=1, device="cpu",
    )
    hist.add(start_ev, wire.encode(start_ev))
    for i in range(10_000):
        for ev in (_step(i), UpdateStats(step=i, update_ratio=np.ones(4))):
            hist.add(ev, wire.encode(ev))
        if i % 100 == 0:
            ack = CommandResult(f"c{i}", "set_lr", True, i, "lr")
            hist.add(ack, wire.encode(ack))
        hist.add(Dropped(1, i), wire.encode(Dropped(1, i)))
    events = [wire.decode_event(p) for p in wire.iter_frames(wire.hello_frame() + b"".join(hist.snapshot()))]
    assert isinstance(events[0], RunStart)
    steps = [e.step for e in events if isinstance(e, StepStats)]
    assert steps == list(range(9_900, 10_000))
    acks = [e.command_id for e in events if isinstance(e, CommandResult)]
    assert acks == [f"c{i}" for i in range(9_000, 10_000, 100)]
    assert not any(isinstance(e, Dropped) for e in events)
    order = [getattr(e, "step", -1) for e in events[1:]]
    assert order == sorted(order)


def test_history_keeps_the_unsampled_steps_between_the_sampled_ones_bounded_with_them() -> None:
    """At stride 4 the steps between two samples travel as RunSteps: a viewer that attaches late gets
    every step since the oldest sample kept (not only the sampled ones), and no more than the bounds."""
    start_ev = RunStart(
        run="r", pid=1, started=0.0, layers=(LayerInfo("a", "Linear", 4),) * 4, lrs=(0.1,), clip_mode="off",
        clip_threshold=1.0, every=4, detail_every=1, device="cpu",
    )

    def fill(hist: History) -> list[Event]:
        hist.add(start_ev, wire.encode(start_ev))
        for i in range(0, 4000, 4):
            between = np.arange(i + 1, i + 4)
            for ev in (_step(i), RunSteps(i + 3, between, np.ones(3), np.full(3, 2.0))):
                hist.add(ev, wire.encode(ev))
        return [wire.decode_event(p) for p in wire.iter_frames(wire.hello_frame() + b"".join(hist.snapshot()))]

    events = fill(History(max_steps=10, max_bytes=1 << 30, max_other=3))
    assert isinstance(events[0], RunStart)
    assert [e.step for e in events if isinstance(e, StepStats)] == list(range(3960, 4000, 4))
    every = [int(s) for e in events[1:] for s in (e.steps if isinstance(e, RunSteps) else [e.step])]
    assert every == list(range(3960, 4000)), "every step since the oldest sample kept, once, in order"
    small = History(max_steps=1000, max_bytes=20 * len(wire.encode(_step(0))), max_other=3)
    kept = fill(small)
    assert small.nbytes <= 20 * len(wire.encode(_step(0))) + len(wire.encode(start_ev))
    steps = [int(s) for e in kept[1:] for s in (e.steps if isinstance(e, RunSteps) else [e.step])]
    assert steps == list(range(steps[0], 4000)) and 3900 < steps[0]


def test_a_stalled_viewer_queue_drops_its_oldest_frames_and_counts_them() -> None:
    q: DropQueue[bytes] = DropQueue(1000, max_bytes=100, size=len)
    for i in range(50):
        q.put(bytes([i]) * 10)
    got = q.take(timeout=0)
    assert got is not None
    frames, dropped = got
    assert dropped == 40 and frames == [bytes([i]) * 10 for i in range(40, 50)]
    q.close()
    assert q.take(timeout=0) is None


def test_addresses_parse_with_loopback_by_default() -> None:
    assert runs.parse_address("7000") == ("127.0.0.1", 7000)
    assert runs.parse_address(":0") == ("127.0.0.1", 0)
    assert runs.parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert runs.parse_address("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError, match="port"):
        runs.parse_address("host:http")


def test_the_viewer_side_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys, gradtui.cli as cli, gradtui.sources.replay, gradtui.sources.child, gradtui.probe.server, "
        "gradtui.sources.stream, gradtui.wire.runs\n"
        "assert cli.main(['ls']) == 0\n"
        "bad = [m for m in ('torch', 'textual') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = env_for(tmp_path / "rt")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "no live gradtui runs" in out.stdout
