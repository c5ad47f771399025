"""Where the probe's events go: an in-process queue, a record file, the socket server.

`Outputs` encodes each event at most once, whatever the number of sinks: the record needs
the frame on the training thread (a crash loses at most the frame being written), and
the server reuses that frame; without a record the server encodes on its own thread.
A sink that fails (a full disk) is dropped with one log line; training goes on.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import sys
from typing import Protocol

from gradtui.model.commands import Command
from gradtui.model.events import Event
from gradtui.probe.server import ProbeServer
from gradtui.wire import codec, env
from gradtui.wire.queue import EventQueue
from gradtui.wire.record import RecordWriter

log = logging.getLogger("gradtui")


class Sink(Protocol):
    """Where the probe's events go. `emit` must never block training."""

    def emit(self, event: Event, frame: bytes | None = None) -> None:
        """Take one event; `frame` is its encoding when the probe made one already."""
        ...

    def close(self) -> None: ...


class QueueSink:
    """Events into an in-process queue (`watch(queue=True)`: tests and notebooks)."""

    def __init__(self, q: EventQueue) -> None:
        self.queue = q

    def emit(self, event: Event, frame: bytes | None = None) -> None:
        self.queue.put(event)

    def close(self) -> None:
        self.queue.close()


class RecordSink:
    """Events into a record file, one frame per write."""

    def __init__(self, writer: RecordWriter) -> None:
        self.writer = writer

    def emit(self, event: Event, frame: bytes | None = None) -> None:
        self.writer.write_frame(codec.encode(event) if frame is None else frame)

    def close(self) -> None:
        self.writer.close()

    def __repr__(self) -> str:
        return f"record {self.writer.path}"


class Outputs:
    """The sinks of one monitor: each event goes to every sink, encoded at most once."""

    def __init__(self) -> None:
        self.sinks: list[Sink] = []
        self._framed = 0

    def add(self, sink: Sink, *, needs_frame: bool = False) -> None:
        """Add a sink; `needs_frame`: it writes bytes now, so the event is encoded for it (and shared)."""
        self.sinks.append(sink)
        self._framed += needs_frame

    def emit(self, event: Event) -> None:
        frame = codec.encode(event) if self._framed else None
        for sink in list(self.sinks):
            try:
                sink.emit(event, frame)
            except OSError as exc:
                # A full disk must not kill the run: stop using that sink and say so once.
                log.error("gradtui: dropping %r after error: %s", sink, exc)
                self.sinks.remove(sink)
                self._framed -= isinstance(sink, RecordSink)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except OSError as exc:
                log.error("gradtui: error closing %r: %s", sink, exc)


def inherited_socket() -> socket.socket | None:
    """The socket a parent viewer passed through GRADTUI_CONNECT, if any (taken once)."""
    spec = os.environ.get(env.CONNECT_ENV, "")
    if not spec:
        return None
    if not spec.startswith("fd:") or not spec[3:].isdigit():
        raise ValueError(f"{env.CONNECT_ENV}={spec!r} is not understood (expected fd:N)")
    # Children of this process must not inherit the connection too.
    os.environ.pop(env.CONNECT_ENV, None)
    return socket.socket(fileno=int(spec[3:]))


def open_server(
    commands: queue.Queue[Command],
    *,
    run: str,
    started: float,
    serve: bool | None,
    listen: str | None,
    token_file: str | os.PathLike[str] | None,
    inherited: socket.socket | None,
) -> ProbeServer | None:
    """The server for a monitor, from its arguments and the environment, or None.

    An explicit `serve=True` or `listen=` that cannot be honoured raises; one asked for by
    the environment only is logged and skipped (training matters more than a viewer).
    The socket of the viewer that started us (`inherited`) is served in any case.
    """
    explicit = serve is True or listen is not None
    if serve is not False:
        listen = listen if listen is not None else env.get(env.LISTEN_ENV)
        token_file = token_file if token_file is not None else env.get(env.TOKEN_FILE_ENV)
    unix = serve if serve is not None else (env.flag(env.SERVE_ENV) or listen is not None)
    if not unix and listen is None and inherited is None:
        return None
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""

    def make(unix: bool, listen: str | None) -> ProbeServer:
        return ProbeServer(
            commands,
            run=run,
            started=started,
            script=script,
            argv=list(sys.argv),
            unix=unix,
            listen=listen,
            token_file=token_file,
            log_path=env.get(env.LOG_ENV),
        )

    try:
        server = make(unix, listen)
    except (OSError, ValueError, RuntimeError) as exc:
        if inherited is not None and explicit:
            inherited.close()
        if explicit:
            raise
        log.error("gradtui: not serving viewers: %s", exc)
        if inherited is None:
            return None
        server = make(False, None)
    if inherited is not None:
        server.adopt(inherited)
    return server
