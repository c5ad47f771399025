"""Where the probe's events go: an in-process queue, a record file, the socket server.

`Outputs` encodes each event at most once, whatever the number of sinks: the record needs
the frame on the training thread (a crash loses at most the frame being written), and
the server reuses that frame; without a record the server encodes on its own thread.
A sink that fails (a full disk) is dropped with one log line naming it, and the viewers
are told with a `LogLine`; training goes on. The one exception is a record whose very
first event (the `RunStart`, written while `watch()` starts) fails: nothing was recorded,
so the file is removed (left, it would block the re-run) and `watch()` raises a
`RecordPathError` naming the path.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Protocol

from gradtui.model.events import Event, LogLine, RunStart, RunSteps, StepStats
from gradtui.probe.server import ProbeServer
from gradtui.wire import codec, env
from gradtui.wire.queue import CommandQueue, EventQueue
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
        self.events = 0
        """Events written (0: the file holds only its hello)."""
        self.last_step: int | None = None
        """The last step written."""

    def emit(self, event: Event, frame: bytes | None = None) -> None:
        self.writer.write_frame(codec.encode(event) if frame is None else frame)
        self.events += 1
        if isinstance(event, (StepStats, RunSteps)):
            self.last_step = event.step

    def close(self) -> None:
        self.writer.close()

    def describe(self) -> str:
        return f"the record {self.writer.path}"

    def __repr__(self) -> str:
        return f"RecordSink({str(self.writer.path)!r})"


def _describe(sink: Sink) -> str:
    """A sink in words, for a log line (a record names its path)."""
    describe = getattr(sink, "describe", None)
    return str(describe()) if callable(describe) else type(sink).__name__


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
        """Send `event` to every sink; one that fails is dropped (see the module docstring).

        Raises:
            RecordPathError: the record could not take the run's first event (`RunStart`).
        """
        frame = codec.encode(event) if self._framed else None
        for sink in list(self.sinks):
            try:
                sink.emit(event, frame)
            except OSError as exc:
                self._drop(sink)
                if isinstance(sink, RecordSink) and sink.events == 0 and isinstance(event, RunStart):
                    error = sink.writer.abandon(exc)
                    self._tell(f"gradtui: {error}")
                    self.close()  # watch() fails: the server and queue it opened go too
                    raise error from None
                self._failed(sink, exc)

    def _drop(self, sink: Sink) -> None:
        self.sinks.remove(sink)
        self._framed -= isinstance(sink, RecordSink)

    def _failed(self, sink: Sink, exc: OSError) -> None:
        """Say once, in the log and to the viewers, that `sink` was dropped: training goes on."""
        why = exc.strerror or str(exc)
        if isinstance(sink, RecordSink):
            upto = f"step {sink.last_step}" if sink.last_step is not None else "its start"
            text = (
                f"gradtui: stopped recording to {sink.writer.path}: {why}; training goes on, the record holds the "
                f"run up to {upto}"
            )
            try:
                sink.close()  # and so its lock goes
            except OSError:
                pass
        else:
            text = f"gradtui: dropping {_describe(sink)} after error: {why}"
        log.error("%s", text)
        self._tell(text)

    def _tell(self, text: str) -> None:
        """A `LogLine` to the sinks that are left (viewers); one that fails now is dropped quietly."""
        notice = LogLine(text=text, stream="gradtui")
        frame = codec.encode(notice) if self._framed else None
        for sink in list(self.sinks):
            try:
                sink.emit(notice, frame)
            except OSError as exc:
                self._drop(sink)
                log.error("gradtui: dropping %s after error: %s", _describe(sink), exc.strerror or exc)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except OSError as exc:
                log.error("gradtui: error closing %s: %s", _describe(sink), exc.strerror or exc)


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
    commands: CommandQueue,
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
