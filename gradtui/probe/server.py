"""The probe's server: its events to any number of viewers, their commands back.

`ProbeServer` is a probe sink. `emit` only appends to a bounded queue; one dispatcher
thread encodes each event once (unless the probe hands it the frame it already encoded for
its record), keeps it in a bounded history and hands the frame to every viewer's own
bounded queue, which a writer thread per viewer drains. A stalled
viewer loses its oldest frames (and is told how many with a `Dropped` event); a dead
one is removed; training never waits on either.

A viewer that attaches first gets the history (the run's `RunStart`, the last steps,
recent alerts, acknowledgements and log lines), then the live stream: the snapshot is
taken and the viewer registered under the lock the dispatcher holds while it fans a
frame out, so nothing is missed or sent twice.

Viewers come in three ways, all served alike: a Unix socket in the private runtime
directory (see `gradtui.wire.runs`); TCP (loopback by default, for `ssh -L`) where the
viewer's hello frame must carry the run's token; and a socket inherited from the viewer
that started this process (`gradtui demo`, `gradtui run`: `adopt`). A refused viewer is
logged and gets no byte back. Commands go on the probe's command queue; the probe applies
them at its next step and its `CommandResult` reaches every viewer.

Torch-free: only the standard library, NumPy (through the wire format) and msgpack.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import queue
import secrets
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradtui.model.commands import Command, command_kind
from gradtui.model.events import CommandResult, Dropped, Event, RunEnd, StepStats
from gradtui.probe import exits
from gradtui.probe.history import History
from gradtui.wire import codec as wire
from gradtui.wire import runs
from gradtui.wire.queue import DropQueue

log = logging.getLogger("gradtui")

# Module constants rather than arguments: tests and unusual deployments may tune them.
HISTORY_STEPS = 4096
"""Sampled steps replayed to a viewer that attaches (the viewer's store holds at most this many)."""
HISTORY_BYTES = 64 << 20
HISTORY_OTHER = 2000
"""Alerts, acknowledgements, log lines kept for new viewers."""
CLIENT_FRAMES = 20_000
CLIENT_BYTES = 16 << 20
"""Per-viewer backlog; beyond it the viewer's oldest frames are dropped."""
MAX_VIEWERS = 16
MAX_COMMAND_FRAME = 64 << 10
"""Viewers only send commands: anything bigger is refused before it is buffered."""
HELLO_TIMEOUT = 5.0
FLUSH_TIMEOUT = 2.0
META_INTERVAL = 1.0
INBOX_SIZE = 50_000

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def _frame_queue() -> DropQueue[bytes]:
    return DropQueue(CLIENT_FRAMES, max_bytes=CLIENT_BYTES, size=len)


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    peer: str
    queue: DropQueue[bytes]
    snapshot: list[bytes] = field(default_factory=list)
    writer: threading.Thread | None = None
    gone: threading.Event = field(default_factory=threading.Event)



_IDS_LOCK = threading.Lock()
_ids: dict[int, int] = {}


class ProbeServer:
    """Serve a probe's events to viewers over a Unix socket and/or TCP; a probe sink.

    Args:
        commands: The probe's command queue; viewers' commands are put on it.
        run: The run's name (shown by `gradtui ls`).
        started: Unix time the run started.
        script: The training script's name.
        argv: The training process's command line.
        unix: Serve a Unix socket in the private runtime directory. With neither `unix` nor
            `listen` the server only serves sockets it is handed (`adopt`), and the run gets
            no entry in the runtime directory.
        listen: Also listen on TCP at "HOST:PORT" (host defaults to 127.0.0.1; port 0 picks one).
        token: The token TCP viewers must present (default: read `token_file`, or a new one).
        token_file: Read the token from this file, or write a new one there (mode 0600).
        log_path: The script's output file, advertised to viewers (set by `gradtui run`).

    Raises:
        runs.RuntimeDirError: the runtime directory is not private to this user.
        OSError: a socket cannot be created (e.g. the TCP port is taken).
    """

    def __init__(
        self,
        commands: queue.Queue[Command],
        *,
        run: str,
        started: float | None = None,
        script: str = "",
        argv: Sequence[str] = (),
        unix: bool = True,
        listen: str | None = None,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        log_path: str | None = None,
    ) -> None:
        self._commands = commands
        self._pid = os.getpid()
        self.run = run
        self.started = time.time() if started is None else started
        self._lock = threading.Lock()
        self._clients: list[_Client] = []
        self._history = History(HISTORY_STEPS, HISTORY_BYTES, HISTORY_OTHER)
        self._inbox: DropQueue[tuple[Event, bytes | None]] = DropQueue(INBOX_SIZE)
        self._closing = threading.Event()
        self._closed = False
        self._seen_end = False
        self._last_step = -1
        self._rate = 0.0
        self._viewer_seq = 0
        self._listeners: list[tuple[socket.socket, bool]] = []
        self.dropped_total = 0
        """Events dropped for all viewers (the dispatcher fell behind the probe)."""
        self.token: str | None = None
        self.socket_path: Path | None = None
        self.address: tuple[str, int] | None = None

        self._meta_lock = threading.Lock()
        self._files_removed = False
        listening = unix or listen is not None
        self.dir = runs.runtime_dir() if listening else None
        with _IDS_LOCK:
            n = _ids.get(self._pid, 0)
            _ids[self._pid] = n + 1
        self.id = str(self._pid) if n == 0 else f"{self._pid}-{n}"
        self.meta_path = self.dir / f"{self.id}{runs.META_SUFFIX}" if self.dir is not None else None
        """The run's sidecar for `gradtui ls` (None when the server has no listener)."""
        self._meta: dict[str, Any] = {
            "id": self.id,
            "pid": self._pid,
            "run": run,
            "script": script,
            "argv": list(argv),
            "cwd": os.getcwd(),
            "started": self.started,
            "socket": None,
            "listen": None,
            "log": log_path,
            "step": -1,
            "steps_per_sec": 0.0,
            "viewers": 0,
            "updated": time.time(),
        }
        try:
            if listen is not None:
                self._listen_tcp(listen, token, token_file)
            if unix:
                self._listen_unix()
            if self.meta_path is not None:
                runs.write_meta(self.meta_path, self._meta)
        except BaseException:
            self._close_listeners()
            self._remove_files()
            raise
        self._meta_written = time.monotonic()
        self._meta_dirty = False

        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="gradtui-serve-dispatch", daemon=True)
        self._acceptor = threading.Thread(target=self._accept_loop, name="gradtui-serve-accept", daemon=True)
        self._dispatcher.start()
        if listening:
            self._acceptor.start()
        exits.register(self)
        where: list[str] = [f"unix {self.socket_path}"] if self.socket_path else []
        if self.address:
            where.append(f"tcp {self.address[0]}:{self.address[1]}")
        if where:
            log.info("gradtui: run %s (id %s) serves viewers on %s", run, self.id, " and ".join(where))

    def adopt(self, sock: socket.socket, peer: str = "the viewer that started this process") -> None:
        """Serve a viewer on an already connected socket (inherited from the process that started
        us), exactly as one that attached: its hello first, then the history and the live stream."""
        threading.Thread(
            target=self._serve_client, args=(sock, peer, False), name="gradtui-serve-read", daemon=True
        ).start()

    # ------------------------------------------------------------ listeners

    def _listen_unix(self) -> None:
        assert self.dir is not None
        path = self.dir / f"{self.id}{runs.SOCK_SUFFIX}"
        # Only a dead process with our pid can have left this name behind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            # The directory is already ours alone; the mode is a second wall.
            os.chmod(path, 0o600)
            sock.listen(MAX_VIEWERS)
        except BaseException:
            sock.close()
            raise
        self._listeners.append((sock, False))
        self.socket_path = path
        self._meta["socket"] = str(path)

    def _listen_tcp(self, listen: str, token: str | None, token_file: str | os.PathLike[str] | None) -> None:
        host, port = runs.parse_address(listen)
        created = False
        if token is None and token_file is not None:
            token, created = runs.load_or_create_token(token_file)
        elif token is None:
            token, created = secrets.token_urlsafe(24), True
        if not token:
            raise ValueError("the TCP token must not be empty")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family = infos[0][0]
            sock = socket.create_server((host, port), family=family, backlog=MAX_VIEWERS)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._listeners.append((sock, True))
        bound = sock.getsockname()
        self.address = (host, int(bound[1]))
        self.token = token
        self._meta["listen"] = f"{host}:{bound[1]}"
        if not runs.is_loopback(host):
            log.warning(
                "gradtui: listening on %s:%s, beyond this machine: the token is the only protection and the "
                "stream is not encrypted; prefer the default loopback address with ssh -L",
                host,
                bound[1],
            )
        addr = f"{host}:{bound[1]}"
        if created and token_file is None:
            # The user needs the token to attach; a log record at WARNING reaches stderr by default.
            log.warning("gradtui: viewers attach with: gradtui attach %s --token %s", addr, token)
        elif created:
            log.warning("gradtui: viewers attach with: gradtui attach %s --token-file %s (new token)", addr, token_file)
        else:
            log.info("gradtui: TCP viewers on %s need the token in %s", addr, token_file)

    # ------------------------------------------------------------ sink interface

    def emit(self, event: Event, frame: bytes | None = None) -> None:
        """Queue an event for every viewer. Never blocks.

        Args:
            event: The event.
            frame: The event already encoded (by the probe, for its record), so it is encoded once.
        """
        if not self._closed:
            self._inbox.put((event, frame))

    @property
    def viewers(self) -> int:
        """Viewers attached now."""
        return len(self._clients)

    # ------------------------------------------------------------ dispatcher

    def _dispatch_loop(self) -> None:
        while True:
            got = self._inbox.take(1000, timeout=0.5)
            if got is None:
                return
            batch, dropped = got
            if dropped:
                self._dispatch(Dropped(count=dropped, total=self._inbox.dropped_total), None)
            for event, frame in batch:
                self._dispatch(event, frame)
            if self._meta_dirty and time.monotonic() - self._meta_written >= META_INTERVAL:
                self._write_meta()

    def _dispatch(self, event: Event, frame: bytes | None) -> None:
        if isinstance(event, Dropped):
            self.dropped_total = event.total
        try:
            frame = wire.encode(event) if frame is None else frame
        except (wire.WireError, TypeError, ValueError) as exc:
            log.error("gradtui: cannot send %s to viewers: %s", type(event).__name__, exc)
            return
        with self._lock:
            self._history.add(event, frame)
            for client in self._clients:
                client.queue.put(frame)
        if isinstance(event, StepStats):
            self._last_step = event.step
            self._rate = event.steps_per_sec
            self._meta_dirty = True
        elif isinstance(event, RunEnd):
            self._seen_end = True

    def _write_meta(self) -> None:
        self._meta.update(
            step=self._last_step, steps_per_sec=self._rate, viewers=len(self._clients), updated=time.time()
        )
        self._meta_dirty = False
        self._meta_written = time.monotonic()
        with self._meta_lock:
            # Checked under the lock: a write racing with close() must not bring the entry back.
            if self._files_removed or self.meta_path is None:
                return
            try:
                runs.write_meta(self.meta_path, self._meta)
            except OSError as exc:
                log.warning("gradtui: cannot update %s: %s", self.meta_path, exc)

    # ------------------------------------------------------------ accepting viewers

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        for sock, is_tcp in self._listeners:
            sel.register(sock, selectors.EVENT_READ, is_tcp)
        try:
            while not self._closing.is_set():
                for key, _ in sel.select(timeout=0.25):
                    listener: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        conn, addr = listener.accept()
                    except OSError:
                        continue
                    self._viewer_seq += 1
                    peer = f"viewer #{self._viewer_seq} " + (f"({addr[0]}:{addr[1]})" if key.data else "(unix)")
                    threading.Thread(
                        target=self._serve_client, args=(conn, peer, key.data), name="gradtui-serve-read", daemon=True
                    ).start()
        finally:
            sel.close()

    def _handshake(self, conn: socket.socket, is_tcp: bool) -> tuple[wire.FrameDecoder, list[dict[str, Any]]]:
        """Read the viewer's hello; raises `_Refused` with the reason to log."""
        dec = wire.FrameDecoder(max_frame=MAX_COMMAND_FRAME)
        deadline = time.monotonic() + HELLO_TIMEOUT
        payloads: list[dict[str, Any]] = []
        while dec.hello is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Refused(f"no hello frame within {HELLO_TIMEOUT:g} s", quiet=not is_tcp)
            conn.settimeout(left)
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError as exc:
                raise _Refused(f"connection error before hello: {exc}", quiet=True) from None
            if not data:
                raise _Refused("closed before saying hello", quiet=True)
            try:
                payloads = dec.feed(data)
            except wire.WireError as exc:
                what = "malformed hello" if dec.hello is None else "bad frame right after the hello"
                raise _Refused(f"{what}: {exc}") from None
        hello = dec.hello
        if hello.get("role") != "viewer":
            raise _Refused(f"unexpected role {hello.get('role')!r} in hello (expected 'viewer')")
        if is_tcp:
            given = hello.get("token")
            if not isinstance(given, str) or not given:
                raise _Refused("missing token")
            assert self.token is not None
            if not hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode("utf-8")):
                raise _Refused("wrong token")
        return dec, payloads

    def _serve_client(self, conn: socket.socket, peer: str, is_tcp: bool) -> None:
        try:
            dec, early = self._handshake(conn, is_tcp)
        except _Refused as exc:
            (log.info if exc.quiet else log.warning)("gradtui: refused %s: %s", peer, exc)
            _hard_close(conn)
            return
        client = _Client(conn, peer, _frame_queue())
        with self._lock:
            refusal = None
            if self._closing.is_set():
                refusal = "the run is shutting down"
            elif len(self._clients) >= MAX_VIEWERS:
                refusal = f"already {MAX_VIEWERS} viewers"
            else:
                client.snapshot = self._history.snapshot()
                self._clients.append(client)
        if refusal is not None:
            log.warning("gradtui: refused %s: %s", peer, refusal)
            _hard_close(conn)
            return
        self._meta_dirty = True
        log.info("gradtui: %s attached", peer)
        conn.settimeout(None)
        client.writer = threading.Thread(
            target=self._write_loop, args=(client,), name="gradtui-serve-write", daemon=True
        )
        client.writer.start()
        reason, level = "viewer left", logging.INFO
        try:
            for payload in early:
                self._on_command(client, payload)
            while not client.gone.is_set():
                try:
                    data = conn.recv(1 << 16)
                except OSError as exc:
                    reason = f"connection error: {exc}"
                    break
                if not data:
                    break
                for payload in dec.feed(data):
                    self._on_command(client, payload)
        except wire.WireError as exc:
            reason, level = f"closing the connection: {exc}", logging.WARNING
        self._drop(client, reason, level)
        client.writer.join(FLUSH_TIMEOUT + 1.0)
        conn.close()

    def _on_command(self, client: _Client, payload: dict[str, Any]) -> None:
        cmd = wire.decode_command(payload)  # WireError: a malformed command closes the connection
        try:
            self._commands.put_nowait(cmd)
        except queue.Full:
            why = "the probe's command queue is full"
            refusal = CommandResult(cmd.id, command_kind(cmd), False, self._last_step, why)
            client.queue.put(wire.encode(refusal))

    def _write_loop(self, client: _Client) -> None:
        hello = wire.hello_frame(role="probe", run=self.run, id=self.id, pid=self._pid)
        try:
            _send_all(client.sock, [hello, *client.snapshot])
            client.snapshot = []
            while True:
                got = client.queue.take(timeout=0.5, max_bytes=1 << 20)
                if got is None:
                    break
                frames, dropped = got
                if dropped:
                    frames.insert(0, wire.encode(Dropped(count=dropped, total=client.queue.dropped_total)))
                _send_all(client.sock, frames)
        except OSError as exc:
            self._drop(client, f"connection lost: {exc}", logging.INFO)
            return
        # Closed and flushed: tell the viewer we are done sending.
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_WR)

    def _drop(self, client: _Client, reason: str, level: int) -> None:
        with self._lock:
            if client not in self._clients:
                return
            self._clients.remove(client)
        self._meta_dirty = True
        client.gone.set()
        client.queue.close()
        extra = f"; it missed {client.queue.dropped_total} events while stalled" if client.queue.dropped_total else ""
        log.log(level, "gradtui: %s: %s%s", client.peer, reason, extra)
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------ shutdown

    def _close_listeners(self) -> None:
        for sock, _ in self._listeners:
            with contextlib.suppress(OSError):
                sock.close()

    def _remove_files(self) -> None:
        if os.getpid() != self._pid:
            return  # a forked child must not remove its parent's entry
        # Bounded wait: from a signal handler the lock may be held by the interrupted code.
        locked = self._meta_lock.acquire(timeout=0.5)
        try:
            self._files_removed = True
            for path in (self.socket_path, self.meta_path):
                if path is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        finally:
            if locked:
                self._meta_lock.release()

    def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Stop accepting, remove the run's files, send what is queued (at most `timeout` s), disconnect."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._remove_files()
        if self._acceptor.ident is not None:
            self._acceptor.join(1.0)
        self._close_listeners()
        deadline = time.monotonic() + timeout
        self._inbox.close()
        self._dispatcher.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.queue.close()
        for client in clients:
            if client.writer is not None:
                client.writer.join(max(0.0, deadline - time.monotonic()))
        for client in clients:
            # A stalled viewer's writer is still blocked: shutting the socket down frees it.
            self._drop(client, "the run ended", logging.DEBUG)
        exits.unregister(self)

    def close_at_exit(self) -> None:
        if self._closed or os.getpid() != self._pid:
            return
        if not self._seen_end:
            exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
            if isinstance(exc, BaseException):
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                self.emit(RunEnd(step=self._last_step + 1, status="error", error=text))
            else:
                self.emit(RunEnd(step=self._last_step + 1, status="ok"))
        self.close(timeout=1.0)

    def terminate(self, signum: int) -> None:
        """On a fatal signal, in the main thread: remove the files, tell viewers, flush briefly.

        Takes no lock the interrupted main thread might hold (it may be inside `emit`).
        """
        if self._closed or os.getpid() != self._pid:
            return
        self._closed = True
        self._closing.set()
        self._remove_files()
        name = signal.Signals(signum).name
        frame = wire.encode(RunEnd(step=self._last_step + 1, status="interrupted", error=f"terminated by {name}"))
        if not self._lock.acquire(timeout=0.2):
            return
        try:
            clients = list(self._clients)
            for client in clients:
                client.queue.put(frame)
                client.queue.close()
        finally:
            self._lock.release()
        deadline = time.monotonic() + 0.5
        for client in clients:
            if client.writer is not None:
                client.writer.join(max(0.0, deadline - time.monotonic()))


class _Refused(Exception):
    def __init__(self, reason: str, *, quiet: bool = False) -> None:
        super().__init__(reason)
        self.quiet = quiet


def _send_all(sock: socket.socket, frames: list[bytes], chunk: int = 1 << 20) -> None:
    buf: list[bytes] = []
    size = 0
    for frame in frames:
        buf.append(frame)
        size += len(frame)
        if size >= chunk:
            sock.sendall(b"".join(buf), _MSG_NOSIGNAL)
            buf, size = [], 0
    if buf:
        sock.sendall(b"".join(buf), _MSG_NOSIGNAL)


def _hard_close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


