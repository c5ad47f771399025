"""Framed event streams over a connected socket: the probe's side (`StreamSink`) and
the viewer's side (`StreamSource`; `ChildSource`, which starts the training process;
`SocketSource`, which attaches to a run's server, see `gradtui.core.server`), and
`LogTail`, which follows a script's output file.

Training never waits on a viewer: the sink hands events to a bounded queue that a
writer thread drains; a stalled viewer makes the queue drop its oldest events and
the drop count travels as a `Dropped` event.
"""

from __future__ import annotations

import contextlib
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

VIEWER_PID_ENV = "GRADTUI_VIEWER_PID"
"""Set by a viewer for a child it starts, so that the child can tell when the viewer is gone."""

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
    """A viewer's source over a connected socket.

    Args:
        sock: A connected stream socket; the peer speaks the probe's side of the wire format.
        name: Shown in the viewer's header.
        maxsize: Events buffered between polls before the oldest are dropped.
        decoder: A decoder that already consumed the start of the stream (after a handshake).
        pending: Payloads that decoder returned and that were not handled yet.
        send_hello: Send our hello frame first (False when a handshake already did).
    """

    owns_process = False

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
            self._sock.sendall(wire.hello_frame(role="viewer"))
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
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


class AttachError(ConnectionError):
    """A viewer could not attach: nothing listening, refused (wrong token), or no answer."""


class SocketSource(StreamSource):
    """A viewer attached to a run's server: its history first, then the live stream.

    Detaching (`close`) leaves the training process untouched. The handshake happens in
    the constructor, so a refused connection raises before any viewer starts.

    Args:
        address: A Unix socket path, or a (host, port) pair for TCP.
        token: The run's token (TCP only; Unix sockets are protected by their mode).
        name: Shown in the viewer's header (default: the run's name).
        timeout: Seconds to wait for the connection and the run's answer.
        log_path: The script's output file (a run started by `gradtui run`): its last
            lines, then new ones, arrive as `LogLine` events.

    Raises:
        AttachError: with a message fit for the user.
    """

    def __init__(
        self,
        address: str | os.PathLike[str] | tuple[str, int],
        *,
        token: str | None = None,
        name: str | None = None,
        timeout: float = 5.0,
        log_path: str | None = None,
    ) -> None:
        is_tcp = isinstance(address, tuple)
        where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        try:
            if isinstance(address, tuple):
                sock = socket.create_connection(address, timeout=timeout)
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(os.fspath(address))
        except FileNotFoundError:
            raise AttachError(f"no run is serving at {where} (it has ended?)") from None
        except ConnectionRefusedError:
            raise AttachError(f"nothing answers at {where} (the run has ended?)") from None
        except OSError as exc:
            raise AttachError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        try:
            dec, pending = _handshake(sock, token, where, is_tcp, timeout)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        self.hello = dec.hello or {}
        """The run's hello: run name, id and pid."""
        run_name = self.hello.get("run")
        super().__init__(
            sock,
            name or (f"attach: {run_name}" if isinstance(run_name, str) else f"attach: {where}"),
            decoder=dec,
            pending=pending,
            send_hello=False,
        )
        self._tail: LogTail | None = None
        if log_path:
            self._tail = LogTail(log_path, self.events, last_lines=200)
            self._tail.start()

    def close(self) -> None:
        """Detach: stop reading; the run goes on."""
        if self._tail is not None:
            self._tail.stop()
        super().close()


def _handshake(
    sock: socket.socket, token: str | None, where: str, is_tcp: bool, timeout: float
) -> tuple[wire.FrameDecoder, list[dict[str, Any]]]:
    hello = wire.hello_frame(role="viewer", **({"token": token} if token is not None else {}))
    dec = wire.FrameDecoder()
    pending: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        sock.sendall(hello)
        while dec.hello is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            data = sock.recv(1 << 16)
            if not data:
                hint = " (wrong or missing token?)" if is_tcp else ""
                raise AttachError(f"the run at {where} refused the connection{hint}; its log says why")
            pending = dec.feed(data)
    except TimeoutError:
        raise AttachError(f"no answer from {where} within {timeout:g} s") from None
    except wire.WireError as exc:
        raise AttachError(f"{where} does not speak gradtui: {exc}") from None
    except OSError as exc:
        if is_tcp and isinstance(exc, ConnectionResetError):
            raise AttachError(f"the run at {where} refused the connection (wrong or missing token?)") from None
        raise AttachError(f"connection to {where} failed: {exc.strerror or exc}") from None
    if dec.hello.get("role") != "probe":
        raise AttachError(f"{where} is not a gradtui run (it says it is a {dec.hello.get('role')!r})")
    return dec, pending


class LogTail:
    """Follow a text file (a script's output) and turn each line into a `LogLine` event.

    Args:
        path: The file; it may not exist yet.
        out: Where the events go.
        stream: The `LogLine.stream` label.
        last_lines: Start near the end, with at most this many earlier lines (None: from the start).
        interval: Seconds between looks at the file when nothing new came.
    """

    MAX_LINE = 8192

    def __init__(
        self,
        path: str | os.PathLike[str],
        out: EventQueue,
        *,
        stream: str = "output",
        last_lines: int | None = None,
        interval: float = 0.05,
    ) -> None:
        self.path = os.fspath(path)
        self._out = out
        self._stream = stream
        self._last_lines = last_lines
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gradtui-log-tail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Read what is left, then stop (waits at most `timeout` s)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        fh: IO[bytes] | None = None
        partial = b""
        try:
            while True:
                stopping = self._stop.is_set()
                if fh is None:
                    try:
                        fh = open(self.path, "rb")  # held open for the thread's life: the file grows
                    except FileNotFoundError:
                        if stopping:
                            return
                        self._stop.wait(self._interval)
                        continue
                    if self._last_lines is not None:
                        partial = self._skip_to_tail(fh)
                chunk = fh.read(1 << 16)
                if chunk:
                    partial = self._emit_lines(partial + chunk)
                    continue
                if stopping:
                    if partial:
                        self._emit(partial)
                    return
                self._stop.wait(self._interval)
        finally:
            if fh is not None:
                fh.close()

    def _skip_to_tail(self, fh: IO[bytes]) -> bytes:
        assert self._last_lines is not None
        size = os.fstat(fh.fileno()).st_size
        start = max(0, size - 64 * 1024)
        fh.seek(start)
        data = fh.read(size - start)
        lines = data.split(b"\n")
        if start > 0:
            lines = lines[1:]  # the first one is cut
        partial = lines.pop() if lines else b""
        for raw in lines[-self._last_lines :] if self._last_lines else []:
            self._emit(raw)
        return partial

    def _emit_lines(self, data: bytes) -> bytes:
        *lines, partial = data.split(b"\n")
        for raw in lines:
            self._emit(raw)
        if b"\r" in partial:
            # A progress bar redraws its line with \r and may never end it: keep the latest state.
            partial = partial.rsplit(b"\r", 1)[1]
        if len(partial) > self.MAX_LINE:
            self._emit(partial)
            partial = b""
        return partial

    def _emit(self, raw: bytes) -> None:
        if b"\r" in raw:
            raw = raw.rstrip(b"\r").rsplit(b"\r", 1)[-1]
        text = raw.decode("utf-8", "replace")
        self._out.put(LogLine(text=text[: self.MAX_LINE], stream=self._stream))


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
        full_env[VIEWER_PID_ENV] = str(os.getpid())
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
