"""Item 5: the server keeps accepting viewers whatever the connections before them did."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import RawViewer, tiny_run, wait_for

from gradtui.model.events import RunStart
from gradtui.probe import gate


def test_a_thread_that_cannot_start_refuses_one_viewer_and_the_next_attaches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mon, step = tiny_run(tmp_path)
    assert mon.server is not None and mon.server.socket_path is not None
    real_start = threading.Thread.start
    failures = {"left": 1}

    def start(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
        if self.name == "gradtui-serve-read" and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("can't start new thread")
        real_start(self, *args, **kwargs)

    monkeypatch.setattr(threading.Thread, "start", start)
    first = RawViewer(mon.server.socket_path)
    wait_for(first.closed.is_set, 10, "the first viewer to be refused")
    second = RawViewer(mon.server.socket_path)
    step()
    wait_for(lambda: any(isinstance(e, RunStart) for e in second.events), 10, "the second viewer's stream")
    mon.close()
    first.close()
    second.close()


def test_connections_that_never_say_hello_hold_no_thread_and_are_dropped_at_the_deadline(tmp_path: Path) -> None:
    mon, step = tiny_run(tmp_path)
    assert mon.server is not None and mon.server.socket_path is not None
    before = threading.active_count()
    silent = [RawViewer(mon.server.socket_path, hello=False, read=False) for _ in range(3 * gate.MAX_PENDING)]
    time.sleep(0.3)
    assert threading.active_count() <= before + 1, "no thread per connection that has not said hello"
    began = time.monotonic()
    viewer = RawViewer(mon.server.socket_path)
    step()
    wait_for(lambda: any(isinstance(e, RunStart) for e in viewer.events), 10, "a real viewer among them")
    assert time.monotonic() - began < gate.HELLO_TIMEOUT

    def all_dropped() -> bool:
        for conn in silent:
            conn.sock.settimeout(0.01)
            try:
                if conn.sock.recv(1) != b"":
                    return False
            except TimeoutError:
                return False
            except OSError:
                pass
        return True

    wait_for(all_dropped, gate.HELLO_TIMEOUT + 3, "the silent connections to be dropped")
    mon.close()
    viewer.close()
    for conn in silent:
        conn.close()
