"""One viewer attached to the probe's server: its connection, its queue, and whether it reads.

The server keeps one `Viewer` per connection; its writer thread notes when it starts and ends a
send, and the kernel says how much of what was sent the viewer has not read yet (SIOCOUTQ on
Linux). `idle_for` is what the server asks when every slot is taken: a viewer that has left what
it was sent unread for long gives its slot to a newcomer.

Torch-free: the standard library.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from gradtui.probe.gate import CommandBudget
from gradtui.wire.queue import DropQueue

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


@dataclass(eq=False)
class Viewer:
    """One attached viewer: its socket, its own bounded queue of frames, its writer, and whether it reads."""

    sock: socket.socket
    peer: str
    """The viewer's name ("viewer #3 (alice@gpu1 pid 42)"): in the log, `gradtui ls` and on its pause."""
    queue: DropQueue[bytes]
    snapshot: list[bytes] = field(default_factory=list)
    writer: threading.Thread | None = None
    gone: threading.Event = field(default_factory=threading.Event)
    budget: CommandBudget = field(default_factory=CommandBudget)
    unread_since: float | None = None
    """Since when what it was sent has been waiting for it to read (None: it read everything)."""

    def sending(self) -> None:
        if self.unread_since is None:
            self.unread_since = time.monotonic()

    def sent(self) -> None:
        """After a send: where the kernel cannot say what is unread, a finished send counts as read."""
        if not _unread(self.sock):
            self.unread_since = None

    def check_read(self) -> None:
        """Between sends: has it read everything sent so far?"""
        if _unread(self.sock) == 0:
            self.unread_since = None

    def idle_for(self, now: float) -> float:
        """Seconds it has left what it was sent unread (0: it reads)."""
        self.check_read()
        since = self.unread_since
        return 0.0 if since is None else now - since


def _unread(sock: socket.socket) -> int | None:
    """Bytes sent on `sock` that its peer has not read yet (Linux: SIOCOUTQ), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        buf = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return None
    left: int = struct.unpack("i", buf)[0]
    return left


_SIOCOUTQ = 0x5411  # <linux/sockios.h>, = TIOCOUTQ


def send_all(sock: socket.socket, frames: list[bytes], chunk: int = 1 << 20) -> None:
    """Send frames in writes of about `chunk` bytes (no SIGPIPE: a viewer gone is an OSError)."""
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
