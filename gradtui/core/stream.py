"""Framed event streams over a connected socket: the probe's side (`StreamSink`) and
the viewer's side (`StreamSource`, `ChildSource`).

Training never waits on a viewer: the sink hands events to a bounded queue that a
writer thread drains; a stalled viewer makes the queue drop its oldest events and
the drop count travels as a `Dropped` event.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from gradtui.core import wire
from gradtui.core.channel import EventQueue
from gradtui.core.commands import Command
from gradtui.core.events import Event, LogLine, RunEnd

log = logging.getLogger("gradtui")

CONNECT_ENV = "GRADTUI_CONNECT"
"""Set by a viewer that starts a training process: `fd:N` names an inherited socket."""


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


class StreamSink:
    """Send events over a connected socket without ever blocking the caller.

    Commands received on the same socket are put on `commands` for the probe.
    """

    def __init__(self, sock: socket.socket, commands: queue.Queue[Command], *, maxsize: int = 20_000) -> None:
        self._sock = sock
        self._commands = commands
        self._queue = EventQueue(maxsize)
        self._stop = threading.Event()
        self.connected = True
        self._writer = threading.Thread(target=self._write_loop, name="gradtui-sink-writer", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="gradtui-sink-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    @property
    def dropped_total(self) -> int:
        return self._queue.dropped_total

    def emit(self, event: Event) -> None:
        if self.connected:
            self._queue.put(event)

    def _write_loop(self) -> None:
        try:
            self._sock.sendall(wire.hello_frame(role="probe"))
            while True:
                event = self._queue.get(timeout=0.2)
                if event is None:
                    if self._queue.closed:
                        return
                    continue
                self._sock.sendall(wire.encode(event))
        except OSError as exc:
            log.info("gradtui: viewer connection closed (%s)", exc)
            self.connected = False

    def _read_loop(self) -> None:
        dec = wire.FrameDecoder()
        try:
            _recv_loop(self._sock, dec, lambda p: self._commands.put(wire.decode_command(p)))
        except wire.WireError as exc:
            log.warning("gradtui: closing viewer connection: %s", exc)
            self.connected = False
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (waiting at most `timeout` s), then close the socket."""
        self._queue.close()
        self._writer.join(timeout)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(timeout)


class StreamSource:
    """A viewer's source over a connected socket."""

    owns_process = False

    def __init__(self, sock: socket.socket, name: str, *, maxsize: int = 200_000) -> None:
        self.name = name
        self._sock = sock
        self._sock_lock = threading.Lock()
        self.events = EventQueue(maxsize)
        self.ended = False
        self.error: str | None = None
        self._sock.sendall(wire.hello_frame(role="viewer"))
        self._reader = threading.Thread(target=self._read_loop, name="gradtui-source", daemon=True)
        self._reader.start()

    def _on_payload(self, payload: dict[str, Any]) -> None:
        event = wire.decode_event(payload)
        if isinstance(event, RunEnd):
            self.ended = True
        self.events.put(event)

    def _read_loop(self) -> None:
        dec = wire.FrameDecoder()
        try:
            why = _recv_loop(self._sock, dec, self._on_payload)
        except wire.WireError as exc:
            why = f"bad data from the training process: {exc}"
            self.error = why
        self._on_disconnect(why)

    def _on_disconnect(self, why: str) -> None:
        if not self.ended:
            self.events.put(RunEnd(step=-1, status="disconnected", error=why))
            self.ended = True

    def poll(self, max_events: int = 100_000) -> list[Event]:
        return self.events.drain(max_events)

    def send(self, command: Command) -> str | None:
        try:
            frame = wire.encode(command)
            with self._sock_lock:
                self._sock.settimeout(1.0)
                self._sock.sendall(frame)
        except (OSError, wire.WireError) as exc:
            return f"could not reach the training process: {exc}"
        return None

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class ChildSource(StreamSource):
    """Start a training process that streams to this viewer over an inherited socket.

    The child's stdout and stderr become `LogLine` events, so a crash shows its
    traceback in the viewer even if the probe never got to send `RunEnd`.
    """

    owns_process = True

    def __init__(
        self,
        argv: Sequence[str],
        name: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        full_env = dict(os.environ if env is None else env)
        full_env[CONNECT_ENV] = f"fd:{child.fileno()}"
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            self.process = subprocess.Popen(
                list(argv),
                env=full_env,
                cwd=cwd,
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        finally:
            child.close()
        self._pumps: list[threading.Thread] = []
        super().__init__(parent, name)
        for stream, label in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
            t = threading.Thread(target=self._pump, args=(stream, label), daemon=True, name=f"gradtui-{label}")
            t.start()
            self._pumps.append(t)

    def _pump(self, stream: IO[bytes] | None, label: str) -> None:
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            self.events.put(LogLine(text=raw.decode("utf-8", "replace").rstrip("\n"), stream=label))
        stream.close()

    def _on_disconnect(self, why: str) -> None:
        if self.ended:
            return
        for t in self._pumps:
            t.join(2.0)
        try:
            rc = self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            rc = None
        status = f"exited with code {rc}" if rc is not None and rc >= 0 else f"killed by signal {-(rc or 0)}"
        if rc is None:
            status = "stopped streaming but is still running"
        message = f"training process {status} ({why})"
        self.events.put(RunEnd(step=-1, status="error" if rc != 0 else "ok", error=message))
        self.ended = True

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child cleanly (SIGINT, then SIGTERM, then SIGKILL) and close."""
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
                try:
                    self.process.send_signal(sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                while self.process.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                if self.process.poll() is not None:
                    break
        super().close()


def connect_from_env() -> socket.socket | None:
    """The socket a parent viewer passed through GRADTUI_CONNECT, if any."""
    spec = os.environ.get(CONNECT_ENV, "")
    if not spec:
        return None
    if not spec.startswith("fd:") or not spec[3:].isdigit():
        raise ValueError(f"{CONNECT_ENV}={spec!r} is not understood (expected fd:N)")
    # Children of this process must not inherit the connection too.
    os.environ.pop(CONNECT_ENV, None)
    return socket.socket(fileno=int(spec[3:]))
