"""Who is at the other end of a viewer connection, and how much each may ask of the gate.

On the Unix socket every client is the same user, so the socket's mode cannot tell a viewer
from a noisy script; the kernel can still say which process connected (`SO_PEERCRED` on
Linux, `LOCAL_PEERPID` on macOS). The gate gives each process its own allowance of hellos
(a hello is what leads to the costly part: an admission, a snapshot of the history) and of
connections waiting for their turn, so one client that connects in a loop spends its own
allowance and never a legitimate viewer's. Connecting without a hello (`gradtui ls` checks
a run that way) costs no allowance: the gate's global accept rate bounds it. A peer the kernel
cannot name (TCP, where the token already refuses strangers at their hello; a platform with
neither option) and the training process itself get no allowance of their own.

Torch-free: the standard library.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

PEER_HELLO_RATE = 5.0
"""Viewer hellos a second from one process, sustained (a viewer says one; a test a few)."""
PEER_HELLO_BURST = 20
PEER_PENDING = 4
"""Connections of one process that may wait for their hello or their admission at once."""
MAX_PEERS = 256
"""Processes remembered at once; beyond it those quiet for `FORGET_AFTER` s are forgotten."""
FORGET_AFTER = 10.0

_CRED = struct.Struct("3i")
_SOL_LOCAL, _LOCAL_PEERPID = 0, 2  # macOS <sys/un.h>


def peer_pid(conn: socket.socket) -> int | None:
    """The pid of the process that opened a Unix connection, or None when the kernel does not say."""
    try:
        if hasattr(socket, "SO_PEERCRED"):
            pid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))[0]
        elif sys.platform == "darwin":
            pid = conn.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID)
        else:
            return None
    except (OSError, struct.error):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None


class Allowance:
    """A token bucket: `burst` at once, `rate` a second after. The gate's one rate rule."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()

    def _refill(self) -> float:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return now

    def take(self) -> bool:
        """Spend one; False (nothing spent) when none is left."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def refund(self) -> None:
        """Give back one taken for nothing."""
        self._tokens = min(self.burst, self._tokens + 1.0)

    def wait(self, n: float = 1.0) -> float:
        """Seconds until `n` are available (0: now)."""
        self._refill()
        return 0.0 if self._tokens >= n else (n - self._tokens) / self.rate


@dataclass(eq=False)
class Peer:
    """One connecting process: its pid and its allowance of hellos."""

    pid: int
    hellos: Allowance = field(default_factory=lambda: Allowance(PEER_HELLO_RATE, PEER_HELLO_BURST))
    seen: float = field(default_factory=time.monotonic)


class Peers:
    """The connecting processes the gate has seen lately, each with its allowance."""

    def __init__(self) -> None:
        self._own = os.getpid()
        self._peers: dict[int, Peer] = {}

    def of(self, conn: socket.socket, is_tcp: bool) -> Peer | None:
        """The process behind a new connection (None: unnamed, or the training process itself)."""
        if is_tcp:
            return None
        pid = peer_pid(conn)
        if pid is None or pid == self._own:
            return None
        peer = self._peers.get(pid)
        now = time.monotonic()
        if peer is None:
            if len(self._peers) >= MAX_PEERS:
                recent = sorted(self._peers.values(), key=lambda v: v.seen)[-MAX_PEERS // 2 :]
                self._peers = {v.pid: v for v in recent if now - v.seen < FORGET_AFTER}
            peer = self._peers[pid] = Peer(pid)
        peer.seen = now
        return peer

    def __len__(self) -> int:
        return len(self._peers)
