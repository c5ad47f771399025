"""Issue 29: one noisy local client on the Unix socket cannot starve the run or its viewers.

The flooding client is another process (the gate tells processes apart by the kernel's word);
the legitimate viewer is `gradtui attach`'s own `SocketSource`. No timing is asserted: success
and counts, with generous deadlines.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import RawViewer, tiny_run, wait_for

from gradtui.model.events import RunStart
from gradtui.probe import gate, server
from gradtui.probe.history import History
from gradtui.sources.attach import SocketSource

# Connects in a loop as fast as the socket lets it, as a plain blocking client does (waiting at
# most 50 ms for room in the backlog): says nothing and holds its last 64 connections, or says a
# viewer hello and hangs up. Prints a line every 100 connections.
_FLOOD = r"""
import socket, struct, sys
from gradtui.wire import codec
path, mode = sys.argv[1], sys.argv[2]
hello = codec.hello_frame(role="viewer", who="flood")
held, n = [], 0
while True:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 50000))
    try:
        s.connect(path)
    except OSError:
        s.close()
        continue
    n += 1
    if n % 100 == 0:
        print(n, flush=True)
    if mode == "hello":
        try:
            s.sendall(hello)
        except OSError:
            pass
        s.close()
    else:
        held.append(s)
        if len(held) > 64:
            held.pop(0).close()
"""


class _Training:
    """Steps a tiny watched run on a thread of the test's process (the probe serves from it)."""

    def __init__(self, tmp_path: Path) -> None:
        self.mon, self._step = tiny_run(tmp_path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._step()
            time.sleep(0.002)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.mon.close()


@pytest.fixture
def training(tmp_path: Path) -> Iterator[_Training]:
    run = _Training(tmp_path)
    yield run
    run.close()


def _flood(path: Path, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _FLOOD, str(path), mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    # Flooding for real before the viewer tries: a few hundred connections made.
    for _ in range(3):
        assert proc.stdout.readline(), "the flooding client died"
    return proc


def _attach(path: Path) -> bool:
    """One legitimate attach: connected, admitted, and the run's RunStart arrives."""
    source = SocketSource(path, timeout=10.0)
    try:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if any(isinstance(e, RunStart) for e in source.poll()):
                return True
            time.sleep(0.01)
        return False
    finally:
        source.close()


@pytest.mark.parametrize("mode", ["silent", "hello"])
def test_a_connection_flood_from_one_process_neither_locks_viewers_out_nor_drives_the_gate(
    training: _Training, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = training.mon.server.socket_path if training.mon.server is not None else None
    assert path is not None
    accepted = [0]
    snapshots = [0]
    real_accept, real_snapshot = socket.socket.accept, History.snapshot

    def counting_accept(self: socket.socket) -> tuple[socket.socket, object]:
        got = real_accept(self)
        accepted[0] += 1
        return got

    def counting_snapshot(self: History) -> list[bytes]:
        snapshots[0] += 1
        return real_snapshot(self)

    monkeypatch.setattr(socket.socket, "accept", counting_accept)
    monkeypatch.setattr(History, "snapshot", counting_snapshot)
    flood = _flood(path, mode)
    try:
        began, accepted[0], snapshots[0] = time.monotonic(), 0, 0
        attached = [_attach(path) for _ in range(5)]
        time.sleep(max(0.0, began + 2.0 - time.monotonic()))  # counted over 2 s at least
        elapsed = time.monotonic() - began
        assert flood.poll() is None, "the flood went on throughout"
    finally:
        flood.kill()
        flood.wait(10)
    assert attached == [True] * 5
    # The gate takes new connections at a bounded rate, whatever the client's: the flooder waits in
    # the kernel's backlog, not in the training process (before: thousands a second).
    assert accepted[0] <= gate.ACCEPT_BURST + gate.ACCEPT_RATE * elapsed
    if mode == "hello":
        # A hello that hung up costs no snapshot of the history: ours, and at most the flooder's
        # allowance of hellos that were still connected when admitted.
        from gradtui.probe.peers import PEER_HELLO_BURST, PEER_HELLO_RATE

        assert snapshots[0] <= 5 + PEER_HELLO_BURST + PEER_HELLO_RATE * elapsed


def test_with_every_slot_held_by_viewers_that_never_read_a_new_viewer_takes_the_oldest_ones_slot(
    training: _Training, caplog: pytest.LogCaptureFixture
) -> None:
    srv = training.mon.server
    assert srv is not None and srv.socket_path is not None
    with caplog.at_level(logging.INFO, logger="gradtui"):
        idle = [RawViewer(srv.socket_path, read=False) for _ in range(server.MAX_VIEWERS)]
        wait_for(lambda: srv.viewers == server.MAX_VIEWERS, 20, "every slot taken")
        attached = [r.getMessage() for r in caplog.records if r.getMessage().endswith(" attached")]
        oldest = attached[0].removeprefix("gradtui: ").removesuffix(" attached")
        assert srv.present(oldest)
        time.sleep(server.IDLE_AFTER + 0.5)  # what they were sent stays unread
        viewer = RawViewer(srv.socket_path)
        wait_for(lambda: any(isinstance(e, RunStart) for e in viewer.events), 20, "the new viewer's stream")
        assert srv.viewers == server.MAX_VIEWERS and not srv.present(oldest)
        dropped = [r for r in caplog.records if "read nothing" in r.getMessage()]
        assert len(dropped) == 1 and dropped[0].levelno == logging.WARNING
        assert dropped[0].getMessage().startswith(f"gradtui: {oldest}: dropped: it has read nothing for")
    viewer.close()
    for conn in idle:
        conn.close()


def test_with_every_slot_held_by_viewers_that_read_a_new_viewer_is_refused(training: _Training) -> None:
    srv = training.mon.server
    assert srv is not None and srv.socket_path is not None
    readers = [RawViewer(srv.socket_path) for _ in range(server.MAX_VIEWERS)]
    wait_for(lambda: srv.viewers == server.MAX_VIEWERS, 20, "every slot taken")
    time.sleep(server.IDLE_AFTER + 0.5)
    late = RawViewer(srv.socket_path)
    wait_for(late.closed.is_set, 20, "the late viewer to be refused")
    assert not late.events and srv.viewers == server.MAX_VIEWERS
    assert not any(r.closed.is_set() for r in readers), "no reading viewer loses its slot"
    late.close()
    for conn in readers:
        conn.close()
