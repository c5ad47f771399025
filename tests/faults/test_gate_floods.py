"""Issue 29: one noisy local client on the Unix socket cannot starve the run or its viewers.

The flooding client is another process (the gate tells processes apart by the kernel's word);
the legitimate viewer is `gradtui attach`'s own `SocketSource`. No timing is asserted: success
and counts, with generous deadlines.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import tiny_run

from gradtui.model.events import RunStart
from gradtui.probe import gate
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
