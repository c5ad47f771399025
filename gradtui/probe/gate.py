"""The server's gate: accepting connections, reading their hello, and the rate of their commands.

Every connection waits in one selector, on the accept thread, until it has said hello:
a connection that has not authenticated holds no thread, at most `MAX_PENDING` wait at
once (for a newcomer, the oldest of the process holding the most is dropped) and each has
`HELLO_TIMEOUT` seconds. Only a viewer whose hello passes gets threads of its own. Nothing a
peer does can stop the accept loop: a failure (a thread limit, a file-descriptor limit)
refuses that one connection.

The gate's own work is bounded, whatever a local client does (issue 29): it accepts at most
`ACCEPT_RATE` connections a second (beyond it, connections wait in the kernel's backlog and
a client connecting in a loop waits with them, costing us nothing); each process on the Unix
socket has its own allowance of connections waiting (a newcomer over it pushes out that
process's oldest) and of hellos (one over it is refused at its hello, before its admission;
see `peers`); a viewer that hung up while it waited for its admission is let go before it
costs a snapshot of the history. The TCP listener had the last two from its token: a stranger
is refused at its hello.

Refused connections are logged as a summary, not a line each: a flood of them must not
fill the training script's stderr. Commands from an admitted viewer pass a token bucket
(`CommandBudget`); beyond it they are refused to that viewer alone, and a viewer that
keeps flooding is not read until its window ends, so a flood costs a bounded amount of
CPU however fast it is sent.

Torch-free: the standard library and the wire format.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hmac
import logging
import re
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradtui.probe.peers import PEER_HELLO_RATE, PEER_PENDING, Allowance, Peer, Peers
from gradtui.wire import codec as wire

log = logging.getLogger("gradtui")

HELLO_TIMEOUT = 2.0
"""Seconds a new connection has to say hello (a viewer sends it at once)."""
MAX_PENDING = 32
"""Connections that may wait for their hello at once; beyond it the oldest is dropped."""
MAX_COMMAND_FRAME = 64 << 10
"""Largest frame read from a viewer: anything bigger closes its connection before it is buffered."""
MAX_COMMAND_BYTES = 1024
"""Largest command accepted (a real one is about 100 bytes): well inside the per-step broadcast
of a distributed run (`gradtui.probe.dist.CONTROL_BYTES`), so no command can block it."""
COMMAND_RATE = 20.0
"""Commands per second a viewer may send, sustained (a person presses a few keys a second)."""
COMMAND_BURST = 50
"""Commands a viewer may send at once before the rate applies."""
FLOOD_REFUSALS = 200
"""Refusals in one window after which a viewer is not read until the window ends."""
ADMIT_RATE = 5.0
"""New viewers admitted per second, sustained (each gets the run's history: a few MB); more
wait their turn (up to `ADMIT_WAIT` s), so a peer reconnecting in a loop costs little."""
ADMIT_BURST = 10
ADMIT_WAIT = 10.0
ACCEPT_RATE = 100.0
"""Connections accepted per second, all listeners together, sustained: bounds the accept thread's
CPU (and so the GIL it takes from training) under any flood; a viewer connects once."""
ACCEPT_BURST = 32
ACCEPT_RESUME = 10
"""Out of accepts, the gate stops watching the listeners until this many are available again:
a flood costs a few rounds a second, not one per connection."""
SUMMARY_EVERY = 10.0
"""Seconds between summary lines about refused connections and commands."""
_MAX_WHO = 80


class Refused(Exception):
    """A connection refused; the message says why."""

    def __init__(self, reason: str, *, quiet: bool = False) -> None:
        super().__init__(reason)
        self.quiet = quiet
        """Not worth a warning (a Unix peer that closed before hello, e.g. `gradtui ls` probing)."""


def viewer_name(seq: int, hello: dict[str, Any], addr: str) -> str:
    """How a viewer is named in the log, in `gradtui ls` and on a pause: "viewer #3 (alice@gpu1 pid 42)"."""
    who = hello.get("who")
    if isinstance(who, str) and who:
        text = "".join(ch if ch.isprintable() else "?" for ch in who)[:_MAX_WHO]
        return f"viewer #{seq} ({text}{', ' + addr if addr != 'unix' else ''})"
    return f"viewer #{seq} ({addr})"


def check_hello(hello: dict[str, Any], token: str | None) -> None:
    """Raise `Refused` unless `hello` is a viewer's (with the run's `token`, when one is set)."""
    if hello.get("role") != "viewer":
        raise Refused(f"unexpected role {hello.get('role')!r} in hello (expected 'viewer')")
    if token is not None:
        given = hello.get("token")
        if not isinstance(given, str) or not given:
            raise Refused("missing token")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8")):
            raise Refused("wrong token")


class Refusals:
    """Refused connections, logged once per kind of reason, then as one summary line now and then."""

    MAX_KINDS = 16

    def __init__(self, every: float = SUMMARY_EVERY) -> None:
        self.every = every
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._since = time.monotonic()
        self._kinds: set[str] = set()
        self.total = 0

    def refused(self, peer: str, reason: str, *, quiet: bool = False) -> None:
        with self._lock:
            self.total += 1
            if quiet:
                log.debug("gradtui: refused %s: %s", peer, reason)
                return
            # "malformed hello: bad frame magic at byte N": one kind, whatever the size or the bytes.
            kind = re.sub(r"\d+", "N", ":".join(reason.split(":")[:2]))[:60]
            if kind not in self._kinds and len(self._kinds) < self.MAX_KINDS:
                self._kinds.add(kind)
                log.warning("gradtui: refused %s: %s", peer, reason)
                return
            if not self._counts:
                self._since = time.monotonic()
            self._counts[kind] += 1
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Log the summary when its interval has passed (or now, with `force`)."""
        with self._lock:
            now = time.monotonic()
            if not self._counts or (not force and now - self._since < self.every):
                return
            n = sum(self._counts.values())
            why = "; ".join(f"{count} x {reason}" for reason, count in self._counts.most_common(4))
            self._counts.clear()
            span, self._since = now - self._since, now
        log.warning("gradtui: refused %d more connection%s in %.0f s (%s)", n, "" if n == 1 else "s", span, why)


class CommandBudget:
    """A viewer's allowance of commands: `COMMAND_BURST` at once, `COMMAND_RATE` per second after."""

    def __init__(self, rate: float = COMMAND_RATE, burst: int = COMMAND_BURST) -> None:
        self.rate = rate
        self._allowance = Allowance(rate, burst)
        self.refused = 0
        """Commands refused since the last summary."""
        self._window_refused = 0
        self._window_start = self._summarised = time.monotonic()

    def take(self) -> bool:
        """Spend one command; False when over the allowance (the command is refused, and counted)."""
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start, self._window_refused = now, 0
        if self._allowance.take():
            return True
        self.refused += 1
        self._window_refused += 1
        return False

    def backoff(self) -> float:
        """Seconds to stop reading this viewer (0: read on): its flood this window is past `FLOOD_REFUSALS`."""
        if self._window_refused < FLOOD_REFUSALS:
            return 0.0
        return max(0.0, self._window_start + 1.0 - time.monotonic())

    def summary(self, every: float = SUMMARY_EVERY) -> int:
        """Commands refused since the last call, when a summary is due (else 0)."""
        now = time.monotonic()
        if not self.refused or now - self._summarised < every:
            return 0
        n, self.refused, self._summarised = self.refused, 0, now
        return n


@dataclass(eq=False)
class _Waiting:
    conn: socket.socket
    addr: str
    is_tcp: bool
    deadline: float
    peer: Peer | None = None
    """The process that connected (None: unnamed, or the training process itself)."""
    dec: wire.FrameDecoder = field(default_factory=lambda: wire.FrameDecoder(max_frame=MAX_COMMAND_FRAME))


Admit = Callable[[socket.socket, str, wire.FrameDecoder, list[dict[str, Any]]], None]
"""Called with a connection whose hello passed: (socket, viewer name, decoder, payloads after the hello)."""


class Gate:
    """The accept loop over a server's listeners (run it on its own thread).

    Args:
        listeners: (listening socket, is TCP) pairs.
        token: What a TCP viewer's hello must carry.
        admit: Takes each viewer whose hello passed; may raise to refuse it.
        closing: Set to stop the loop.
    """

    def __init__(
        self,
        listeners: Sequence[tuple[socket.socket, bool]],
        token: str | None,
        admit: Admit,
        closing: threading.Event,
    ) -> None:
        self.listeners = list(listeners)
        self.token = token
        self.admit = admit
        self.closing = closing
        self.refusals = Refusals()
        self.admissions = Allowance(ADMIT_RATE, ADMIT_BURST)
        self.accepts = Allowance(ACCEPT_RATE, ACCEPT_BURST)
        self.peers = Peers()
        self.seq = 0
        self._waiting: dict[socket.socket, _Waiting] = {}
        self._admitting: collections.deque[tuple[_Waiting, str, list[dict[str, Any]]]] = collections.deque()
        self._sel = selectors.DefaultSelector()
        self._listening = False

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def run(self) -> None:
        for sock, _ in self.listeners:
            sock.setblocking(False)  # accepted in batches, until the backlog is empty
        self._listen(True)
        try:
            while not self.closing.is_set():
                try:
                    self._round()
                except Exception as exc:  # the accept loop must outlive anything a peer can cause
                    log.warning("gradtui: viewer gate: %s: %s", type(exc).__name__, exc)
                    time.sleep(0.05)
        finally:
            for waiting in [*self._waiting.values(), *(w for w, _, _ in self._admitting)]:
                self._refuse(waiting, "the run is shutting down", quiet=True)
            self.refusals.flush(force=True)
            self._sel.close()

    def _listen(self, on: bool) -> None:
        """Watch the listeners (or stop: out of accepts, new connections wait in the backlog)."""
        if on == self._listening:
            return
        self._listening = on
        for sock, is_tcp in self.listeners:
            with contextlib.suppress(KeyError, ValueError, OSError):
                if on:
                    self._sel.register(sock, selectors.EVENT_READ, is_tcp)
                else:
                    self._sel.unregister(sock)

    def _round(self) -> None:
        timeout = 0.05 if self._admitting else 0.25
        if not self._listening:
            wait = self.accepts.wait(ACCEPT_RESUME)
            if wait <= 0.0:
                self._listen(True)
            timeout = min(timeout, wait)
        for key, _ in self._sel.select(timeout=timeout):
            if isinstance(key.data, bool):
                self._accept(key.fileobj, key.data)  # type: ignore[arg-type]
            else:
                self._read(key.data)
        now = time.monotonic()
        for waiting in [w for w in self._waiting.values() if w.deadline <= now]:
            self._refuse(waiting, f"no hello frame within {HELLO_TIMEOUT:g} s", quiet=not waiting.is_tcp)
        self._admit_ready()
        while self._admitting and self._admitting[0][0].deadline + ADMIT_WAIT <= now:
            self._refuse(self._admitting.popleft()[0], f"more than {ADMIT_RATE:g} new viewers a second")
        self.refusals.flush()

    def _accept(self, listener: socket.socket, is_tcp: bool) -> None:
        for _ in range(ACCEPT_BURST):
            if not self.accepts.take():
                self._listen(False)
                return
            try:
                conn, raw = listener.accept()
            except BlockingIOError:
                self.accepts.refund()
                return
            except OSError as exc:
                # Out of file descriptors: the connection stays queued; back off instead of spinning.
                self.refusals.refused("a connection", f"cannot accept: {exc.strerror or exc}")
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.1)
                return
            self._arrived(conn, raw, is_tcp)

    def _arrived(self, conn: socket.socket, raw: Any, is_tcp: bool) -> None:
        addr = f"{raw[0]}:{raw[1]}" if is_tcp and isinstance(raw, tuple) else "unix"
        peer = self.peers.of(conn, is_tcp)
        if peer is not None:
            # A process connecting in a loop pushes out its own connections, never another's.
            mine = [w for w in self._waiting.values() if w.peer is peer]
            if len(mine) + sum(w.peer is peer for w, _, _ in self._admitting) >= PEER_PENDING:
                if not mine:
                    self.refusals.refused(f"a connection (unix, pid {peer.pid})", _PEER_FULL)
                    hard_close(conn)
                    return
                self._refuse(mine[0], _PEER_FULL)
        waiting = _Waiting(conn, addr, is_tcp, time.monotonic() + HELLO_TIMEOUT, peer)
        if len(self._waiting) >= MAX_PENDING:
            crowded = _crowded(self._waiting.values())
            self._refuse(crowded, f"more than {MAX_PENDING} connections waiting to say hello")
        try:
            conn.setblocking(False)
            self._sel.register(conn, selectors.EVENT_READ, waiting)
        except (OSError, ValueError) as exc:
            self.refusals.refused(addr, f"cannot watch the connection: {exc}")
            hard_close(conn)
            return
        self._waiting[conn] = waiting

    def _read(self, waiting: _Waiting) -> None:
        if waiting.conn not in self._waiting:
            return  # dropped for a newcomer earlier in this round
        try:
            data = waiting.conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._refuse(waiting, f"connection error before hello: {exc}", quiet=True)
            return
        if not data:
            self._refuse(waiting, "closed before saying hello", quiet=True)
            return
        try:
            early = waiting.dec.feed(data)
        except wire.WireError as exc:
            what = "malformed hello" if waiting.dec.hello is None else "bad frame right after the hello"
            self._refuse(waiting, f"{what}: {exc}")
            return
        hello = waiting.dec.hello
        if hello is None:
            return
        self._forget(waiting)
        try:
            check_hello(hello, self.token if waiting.is_tcp else None)
            if waiting.peer is not None and not waiting.peer.hellos.take():
                raise Refused(f"more than {PEER_HELLO_RATE:g} viewer hellos a second from pid {waiting.peer.pid}")
        except Refused as exc:
            self.refusals.refused(f"a viewer ({waiting.addr})", str(exc), quiet=exc.quiet)
            hard_close(waiting.conn)
            return
        name = viewer_name(self.next_seq(), hello, waiting.addr)
        if len(self._admitting) >= MAX_PENDING:
            crowded = _crowded(w for w, _, _ in self._admitting)
            self._admitting = collections.deque(entry for entry in self._admitting if entry[0] is not crowded)
            self._refuse(crowded, f"more than {MAX_PENDING} viewers waiting to be admitted")
        self._admitting.append((waiting, name, early))
        self._admit_ready()

    def _admit_ready(self) -> None:
        while self._admitting:
            if _hung_up(self._admitting[0][0].conn):
                # Before it costs a snapshot of the history: a client saying hello and hanging up in a loop.
                self._refuse(self._admitting.popleft()[0], "hung up before it was admitted", quiet=True)
            elif self.admissions.take():
                self._admit(*self._admitting.popleft())
            else:
                return

    def _admit(self, waiting: _Waiting, name: str, early: list[dict[str, Any]]) -> None:
        try:
            waiting.conn.setblocking(True)
            self.admit(waiting.conn, name, waiting.dec, early)
        except Refused as exc:
            self.refusals.refused(f"a viewer ({waiting.addr})", str(exc), quiet=exc.quiet)
            hard_close(waiting.conn)
        except Exception as exc:  # e.g. no thread can be started: refuse this one, keep accepting
            self.refusals.refused(f"a viewer ({waiting.addr})", f"cannot serve it: {exc}")
            hard_close(waiting.conn)

    def _forget(self, waiting: _Waiting) -> None:
        self._waiting.pop(waiting.conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(waiting.conn)

    def _refuse(self, waiting: _Waiting, reason: str, *, quiet: bool = False) -> None:
        self._forget(waiting)
        self.refusals.refused(f"a connection ({waiting.addr})", reason, quiet=quiet)
        hard_close(waiting.conn)


_PEER_FULL = f"more than {PEER_PENDING} connections of one process waiting"


def _crowded(entries: Iterable[_Waiting]) -> _Waiting:
    """The one to drop for a newcomer: the oldest of the process holding the most (so one client's
    flood pushes out its own connections, not a viewer's)."""
    entries = list(entries)
    held = Counter(w.peer for w in entries)
    most = max(held, key=held.__getitem__)
    return next(w for w in entries if w.peer is most)


def _hung_up(conn: socket.socket) -> bool:
    """Whether the peer closed its end (a non-blocking peek: its unread commands stay)."""
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def read_hello(conn: socket.socket, token: str | None, timeout: float = HELLO_TIMEOUT) -> tuple[
    wire.FrameDecoder, list[dict[str, Any]], dict[str, Any]
]:
    """Read one connection's hello, blocking (an inherited socket, which has a thread anyway).

    Returns the decoder, the payloads after the hello and the hello; raises `Refused`.
    """
    dec = wire.FrameDecoder(max_frame=MAX_COMMAND_FRAME)
    deadline = time.monotonic() + timeout
    early: list[dict[str, Any]] = []
    while dec.hello is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Refused(f"no hello frame within {timeout:g} s")
        conn.settimeout(left)
        try:
            data = conn.recv(4096)
        except TimeoutError:
            continue
        except OSError as exc:
            raise Refused(f"connection error before hello: {exc}", quiet=True) from None
        if not data:
            raise Refused("closed before saying hello", quiet=True)
        try:
            early = dec.feed(data)
        except wire.WireError as exc:
            what = "malformed hello" if dec.hello is None else "bad frame right after the hello"
            raise Refused(f"{what}: {exc}") from None
    check_hello(dec.hello, token)
    conn.settimeout(None)
    return dec, early, dec.hello


def hard_close(conn: socket.socket) -> None:
    """Shut a connection down and close it: the peer sees the end at once, with no byte from us."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()
