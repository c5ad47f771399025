"""`gradtui attach`: a viewer attached to a live run's server (see `gradtui.probe.server`).

`SocketSource` connects to the run's Unix socket or TCP address, performs the handshake
(our hello with the token, the run's hello back, role "probe"), then reads the run's
history and its live stream like any `StreamSource`. A refused or silent connection
raises `AttachError` before any viewer starts. Closing it leaves the run untouched.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from typing import Any

from gradtui.sources.logtail import LogTail
from gradtui.sources.stream import StreamSource, viewer_hello
from gradtui.wire import codec as wire


class AttachError(ConnectionError):
    """A viewer could not attach: nothing listening, refused (wrong token), or no answer."""


class SocketSource(StreamSource):
    """A viewer attached to a run's server: its history first, then the live stream.

    Closing it leaves the training process untouched (so `can_detach` is False and
    `detach` raises: there is nothing more to leave). The handshake happens in the
    constructor, so a refused connection raises before any viewer starts.

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
                sock = connect_unix(os.fspath(address), timeout)
        except FileNotFoundError:
            raise AttachError(f"no run is serving at {where} (it has ended?)") from None
        except ConnectionRefusedError:
            raise AttachError(f"nothing answers at {where} (the run has ended?)") from None
        except BlockingIOError:
            raise AttachError(
                f"the run at {where} took no new connection within {timeout:g} s (another client flooding it?)"
            ) from None
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
        """Stop reading (and following the log); the run goes on."""
        if self._tail is not None:
            self._tail.stop()
        super().close()


def connect_unix(path: str, timeout: float) -> socket.socket:
    """Connect to a Unix socket, waiting at most `timeout` s for room in its backlog.

    A run whose backlog is full is busy, not gone: a client connecting in a loop keeps it full,
    and a socket with a timeout fails at once there (EAGAIN). Where the kernel can wait for room
    (`SO_SNDTIMEO` on a blocking socket, Linux) we wait in its queue, woken with the flooder each
    time the run accepts; elsewhere we try again every 10 ms. Raises BlockingIOError on time out.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if sys.platform.startswith("linux"):
            sec = max(timeout, 0.001)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(sec), int(sec % 1 * 1e6)))
            sock.connect(path)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))
            sock.settimeout(timeout)
            return sock
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock.connect(path)
                return sock
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
    except BaseException:
        sock.close()
        raise


def _handshake(
    sock: socket.socket, token: str | None, where: str, is_tcp: bool, timeout: float
) -> tuple[wire.FrameDecoder, list[dict[str, Any]]]:
    hello = viewer_hello(**({"token": token} if token is not None else {}))
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


