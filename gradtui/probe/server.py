"""The probe's server: its events to any number of viewers, their commands back.

`ProbeServer` is a probe sink. `emit` only appends to a bounded queue; one dispatcher
thread encodes each event once (unless the probe hands it the frame it already encoded for
its record), keeps it in a bounded history and hands the frame to every viewer's own
bounded queue, which a writer thread per viewer drains. A stalled
viewer loses its oldest frames (and is told how many with a `Dropped` event); a dead
one is removed; training never waits on either. When every slot is taken, a new viewer takes
the slot of the oldest viewer that has read nothing for `IDLE_AFTER` s (a line in the log says
so): a client holding slots with viewers that never read cannot lock the others out.

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
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gradtui.model.commands import command_kind
from gradtui.model.events import CommandResult, Dropped, Event, RunEnd, RunSteps, StepStats
from gradtui.probe.gate import MAX_COMMAND_BYTES, Gate, Refused, hard_close, read_hello
from gradtui.probe.history import History
from gradtui.probe.viewer import Viewer, send_all
from gradtui.wire import codec as wire
from gradtui.wire import runs
from gradtui.wire.queue import CommandQueue, DropQueue

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
IDLE_AFTER = 1.0
"""Seconds a viewer may leave what it was sent unread before a newcomer may take its slot (when
all are taken); a viewer draws at 10 Hz and reads what it is sent within milliseconds."""
SEND_INTERVAL = 0.05
"""Seconds between two sends to one viewer (what piles up meanwhile goes in one write)."""
ADOPT_HELLO_TIMEOUT = 5.0
"""The inherited socket's hello (its viewer is starting up too)."""
FLUSH_TIMEOUT = 2.0
META_INTERVAL = 1.0
INBOX_SIZE = 50_000

def _frame_queue() -> DropQueue[bytes]:
    return DropQueue(CLIENT_FRAMES, max_bytes=CLIENT_BYTES, size=len)


_IDS_LOCK = threading.Lock()
_ids: dict[int, int] = {}


class ProbeServer:
    """Serve a probe's events to viewers over a Unix socket and/or TCP; a probe sink.

    Args:
        commands: The probe's command queue; viewers' commands are put on it with their names.
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
        commands: CommandQueue,
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
        self._clients: list[Viewer] = []
        self._history = History(HISTORY_STEPS, HISTORY_BYTES, HISTORY_OTHER)
        self._inbox: DropQueue[tuple[Event, bytes | None]] = DropQueue(INBOX_SIZE)
        self._closing = threading.Event()
        self._closed = False
        self._seen_end = False
        self._last_step = -1
        self._rate = 0.0
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
            "paused_by": None,
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

        self._gate = Gate(self._listeners, self.token, self._admit, self._closing)
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="gradtui-serve-dispatch", daemon=True)
        self._acceptor = threading.Thread(target=self._gate.run, name="gradtui-serve-accept", daemon=True)
        self._dispatcher.start()
        if listening:
            self._acceptor.start()
        where: list[str] = [f"unix {self.socket_path}"] if self.socket_path else []
        if self.address:
            where.append(f"tcp {self.address[0]}:{self.address[1]}")
        if where:
            log.info("gradtui: run %s (id %s) serves viewers on %s", run, self.id, " and ".join(where))

    def adopt(self, sock: socket.socket, peer: str = "the viewer that started this process") -> None:
        """Serve a viewer on an already connected socket (inherited from the process that started
        us), exactly as one that attached: its hello first, then the history and the live stream."""
        threading.Thread(target=self._adopted, args=(sock, peer), name="gradtui-serve-read", daemon=True).start()

    def _adopted(self, sock: socket.socket, peer: str) -> None:
        try:
            dec, early, hello = read_hello(sock, None, ADOPT_HELLO_TIMEOUT)
            who = hello.get("who")
            name = f"{peer} ({who})" if isinstance(who, str) and who.isprintable() and len(who) < 80 else peer
            client = self._register(sock, name)
        except Refused as exc:
            self._gate.refusals.refused(peer, str(exc), quiet=exc.quiet)
            hard_close(sock)
            return
        self._serve(client, dec, early)

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

    def present(self, name: str) -> bool:
        """Whether the viewer called `name` is still attached."""
        with self._lock:
            return any(client.peer == name for client in self._clients)

    def paused_by(self, name: str | None) -> None:
        """Who holds the run's pause now (None: not paused), for `gradtui ls`."""
        self._meta["paused_by"] = None if name is None else (name or "the training script")
        self._meta_dirty = True
        self._meta_written = 0.0  # written at the dispatcher's next round, not a second later

    @property
    def refused_connections(self) -> int:
        """Connections refused so far (bad hello, wrong token, too many waiting)."""
        return self._gate.refusals.total

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
        elif isinstance(event, RunSteps):
            self._last_step = event.step  # the run's step for `gradtui ls`, sampled or not
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

    # ------------------------------------------------------------ viewers

    def _register(self, conn: socket.socket, name: str) -> Viewer:
        client = Viewer(conn, name, _frame_queue())
        idle: Viewer | None = None
        idle_for = 0.0
        with self._lock:
            if self._closing.is_set():
                raise Refused("the run is shutting down")
            if len(self._clients) >= MAX_VIEWERS:
                now = time.monotonic()
                # Oldest first: the list is in the order they attached.
                for candidate in self._clients:
                    idle_for = candidate.idle_for(now)
                    if idle_for >= IDLE_AFTER:
                        idle = candidate
                        break
                else:
                    raise Refused(f"already {MAX_VIEWERS} viewers, each of them reading")
                self._clients.remove(candidate)
            client.snapshot = self._history.snapshot()
            self._clients.append(client)
        self._meta_dirty = True
        if idle is not None:
            self._let_go(
                idle,
                f"dropped: it has read nothing for {idle_for:.1f} s and {name} needs its slot "
                f"(at most {MAX_VIEWERS} viewers)",
                logging.WARNING,
            )
        log.info("gradtui: %s attached", name)
        return client

    def _admit(self, conn: socket.socket, name: str, dec: wire.FrameDecoder, early: list[dict[str, Any]]) -> None:
        """From the gate: a viewer whose hello passed. Raises `Refused` (or a thread error) to refuse it."""
        client = self._register(conn, name)
        try:
            threading.Thread(
                target=self._serve, args=(client, dec, early), name="gradtui-serve-read", daemon=True
            ).start()
        except BaseException:
            with self._lock:
                self._clients.remove(client)
            raise

    def _serve(self, client: Viewer, dec: wire.FrameDecoder, early: list[dict[str, Any]]) -> None:
        conn = client.sock
        conn.settimeout(None)
        client.writer = threading.Thread(
            target=self._write_loop, args=(client,), name="gradtui-serve-write", daemon=True
        )
        reason, level = "viewer left", logging.INFO
        try:
            client.writer.start()
            for payload in early:
                self._on_command(client, payload)
            while not client.gone.is_set():
                pause = client.budget.backoff()
                if pause:
                    time.sleep(pause)  # a flooding viewer waits in its own socket buffer
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
            # Summarised with the refused connections: a peer sending garbage must not flood the log.
            self._gate.refusals.refused(client.peer, f"bad data from the viewer: {exc}")
            reason, level = f"closing the connection: {exc}", logging.DEBUG
        except RuntimeError as exc:  # no thread for its writer
            reason, level = f"cannot serve it: {exc}", logging.WARNING
        self._drop(client, reason, level)
        if client.writer.ident is not None:
            client.writer.join(FLUSH_TIMEOUT + 1.0)
        conn.close()

    def _on_command(self, client: Viewer, payload: dict[str, Any]) -> None:
        cmd = wire.decode_command(payload)  # WireError: a malformed command closes the connection
        refusal: str | None = None
        size = len(wire.encode(cmd))
        if size > MAX_COMMAND_BYTES:
            refusal = f"the command is {size} bytes; at most {MAX_COMMAND_BYTES} are accepted"
            cmd = replace(cmd, id=cmd.id[:64])
        elif not client.budget.take():
            refusal = f"more than {client.budget.rate:g} commands a second from this viewer"
        else:
            refusal = self._commands.submit(cmd, client.peer)
        if refusal is not None:
            # To the sender only: a flood must not reach the record or the other viewers.
            client.queue.put(wire.encode(CommandResult(cmd.id, command_kind(cmd), False, self._last_step, refusal)))
        refused = client.budget.summary()
        if refused:
            log.warning("gradtui: %s: refused %d commands over the rate limit", client.peer, refused)

    def _write_loop(self, client: Viewer) -> None:
        hello = wire.hello_frame(role="probe", run=self.run, id=self.id, pid=self._pid)
        try:
            client.sending()
            send_all(client.sock, [hello, *client.snapshot])
            client.sent()
            client.snapshot = []
            while True:
                client.check_read()
                got = client.queue.take(timeout=0.5, max_bytes=1 << 20)
                if got is None:
                    break
                frames, dropped = got
                if dropped:
                    frames.insert(0, wire.encode(Dropped(count=dropped, total=client.queue.dropped_total)))
                if frames:
                    client.sending()
                    send_all(client.sock, frames)
                    client.sent()
                # Viewers draw at 10 Hz: sending at most every SEND_INTERVAL wakes this thread
                # (and takes the GIL from training) a few times a second, not at every step.
                client.gone.wait(SEND_INTERVAL)
        except OSError as exc:
            self._drop(client, f"connection lost: {exc}", logging.INFO)
            return
        # Closed and flushed: tell the viewer we are done sending.
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_WR)

    def _drop(self, client: Viewer, reason: str, level: int) -> None:
        with self._lock:
            if client not in self._clients:
                return
            self._clients.remove(client)
        self._let_go(client, reason, level)

    def _let_go(self, client: Viewer, reason: str, level: int) -> None:
        """Disconnect a viewer already taken off the list, with a line in the log."""
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

    def terminate(self, signum: int, end: bytes | None = None) -> None:
        """On a fatal signal, in the main thread: remove the files, tell viewers (the `RunEnd`
        frame `end`, or one of our own), flush briefly.

        Takes no lock the interrupted main thread might hold (it may be inside `emit`).
        """
        if self._closed or os.getpid() != self._pid:
            return
        self._closed = True
        self._closing.set()
        self._remove_files()
        why = f"terminated by {signal.Signals(signum).name}"
        frame = end or wire.encode(RunEnd(step=self._last_step + 1, status="interrupted", error=why))
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
