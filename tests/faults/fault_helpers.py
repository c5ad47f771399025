"""A training loop in the test's process and raw viewers on real sockets, for the fault tests."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# The subprocess scripts of the fault tests import this module by its folder alone.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attach_helpers import wait_for  # noqa: E402, F401 - the one poll-until helper of the tests
from torch import nn

import gradtui
from gradtui.model.events import CommandResult, Event
from gradtui.probe.monitor import Monitor
from gradtui.wire import codec as wire


def tiny_run(tmp_path: Path, **watch: Any) -> tuple[Monitor, Callable[[], None]]:
    """A watched 3-layer MLP with a record and a socket; returns the monitor and one training step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    watch.setdefault("record", tmp_path / "run.gtr")
    watch.setdefault("serve", True)
    mon = gradtui.watch(model, opt, detectors=False, **watch)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        opt.step()

    return mon, step


class RawViewer:
    """A viewer at the byte level: says hello (or not), sends what it is told, collects events."""

    def __init__(self, path: str | Path, *, hello: bool = True, read: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.events: list[Event] = []
        self.closed = threading.Event()
        if hello:
            self.sock.sendall(wire.hello_frame(role="viewer", who="tester@faults"))
        self._reader: threading.Thread | None = None
        if read:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    def _read(self) -> None:
        dec = wire.FrameDecoder()
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                for payload in dec.feed(data):
                    self.events.append(wire.decode_event(payload))
        except (OSError, wire.WireError):
            pass
        self.closed.set()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def results(self) -> list[CommandResult]:
        return [e for e in list(self.events) if isinstance(e, CommandResult)]

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._reader is not None:
            self._reader.join(5)
