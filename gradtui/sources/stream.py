"""`StreamSource`: a viewer's events over a connected socket whose peer is a probe.

The sources built on it: `gradtui.sources.child` (a training process this viewer starts,
over an inherited socket) and `gradtui.sources.attach` (a run's server, attached to).
The probe's side of the same stream is `gradtui.probe.server`.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from gradtui.model.commands import Command
from gradtui.model.events import Event, RunEnd
from gradtui.sources.base import no_detach
from gradtui.wire import codec as wire
from gradtui.wire.queue import EventQueue


def viewer_hello(**extra: Any) -> bytes:
    """A viewer's hello frame, naming who is watching ("alice@gpu1 pid 4242, tmux %3"): the
    probe shows it in `gradtui ls` and in its log when this viewer pauses the run."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = f"uid {os.getuid()}"
    who = f"{user}@{os.uname().nodename} pid {os.getpid()}"
    if os.environ.get("TMUX_PANE"):
        who += f", tmux {os.environ['TMUX_PANE']}"
    return wire.hello_frame(role="viewer", who=who, **extra)


def _recv_loop(sock: socket.socket, dec: wire.FrameDecoder, on_payload: Callable[[dict[str, Any]], None]) -> str:
    """Read frames until EOF or error; returns why the loop ended."""
    while True:
        try:
            data = sock.recv(1 << 16)
        except OSError as exc:
            return f"connection error: {exc}"
        if not data:
            return "eof"
        for payload in dec.feed(data):  # WireError propagates to the caller
            on_payload(payload)


class StreamSource:
    """A viewer's source over a connected socket.

    Args:
        sock: A connected stream socket; the peer speaks the probe's side of the wire format.
        name: Shown in the viewer's header.
        maxsize: Events buffered between polls before the oldest are dropped.
        decoder: A decoder that already consumed the start of the stream (after a handshake).
        pending: Payloads that decoder returned and that were not handled yet.
        send_hello: Send our hello frame first (False when a handshake already did).

    It cannot detach (`detach` raises `DetachError`): it started no process; a subclass
    that does says so.
    """

    owns_process = False
    can_detach = False
    controls = None
    detach = no_detach

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        *,
        maxsize: int = 200_000,
        decoder: wire.FrameDecoder | None = None,
        pending: Sequence[dict[str, Any]] = (),
        send_hello: bool = True,
    ) -> None:
        self.name = name
        self._sock = sock
        self.events = EventQueue(maxsize)
        self.ended = False
        self.error: str | None = None
        self._dec = decoder if decoder is not None else wire.FrameDecoder()
        # Commands leave through their own thread: a blocking send on the UI thread could freeze
        # it, and a timeout on the socket would also time out the reader's recv.
        self._outbox: queue.Queue[bytes | None] = queue.Queue(maxsize=256)
        self._send_error: str | None = None
        if send_hello:
            try:
                self._sock.sendall(viewer_hello())
            except OSError as exc:  # a child that exited at once: its exit status tells why
                self._send_error = f"could not reach the training process: {exc}"
        for payload in pending:
            self._on_payload(payload)
        self._reader = threading.Thread(target=self._read_loop, name="gradtui-source", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="gradtui-source-send", daemon=True)
        self._reader.start()
        self._sender.start()

    def _on_payload(self, payload: dict[str, Any]) -> None:
        event = wire.decode_event(payload)
        if isinstance(event, RunEnd):
            self.ended = True
        self.events.put(event)

    def _read_loop(self) -> None:
        try:
            why = _recv_loop(self._sock, self._dec, self._on_payload)
        except wire.WireError as exc:
            why = f"bad data from the training process: {exc}"
            self.error = why
        self._on_disconnect(why)

    def _on_disconnect(self, why: str) -> None:
        if not self.ended:
            self.events.put(RunEnd(step=-1, status="disconnected", error=why))
            self.ended = True

    def _send_loop(self) -> None:
        while True:
            frame = self._outbox.get()
            if frame is None:
                return
            try:
                self._sock.sendall(frame)
            except OSError as exc:
                self._send_error = f"could not reach the training process: {exc}"
                return

    def poll(self, max_events: int = 100_000) -> list[Event]:
        return self.events.drain(max_events)

    def send(self, command: Command) -> str | None:
        if self._send_error is not None:
            return self._send_error
        if self.ended:
            return "the training process is no longer connected"
        try:
            frame = wire.encode(command)
        except wire.WireError as exc:
            return f"cannot send this command: {exc}"
        try:
            self._outbox.put_nowait(frame)
        except queue.Full:
            return "too many commands are waiting to be sent"
        return None

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._outbox.put_nowait(None)
        # A command sent just before leaving ("resume and quit") must reach the run; a stuck
        # send must not keep the viewer from quitting.
        if self._sender.ident is not None:
            self._sender.join(1.0)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
