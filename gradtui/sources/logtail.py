"""`LogTail`: a training process's output, line by line, as `LogLine` events.

One way of turning printed bytes into lines for every source: a text file that grows
(the log of a `gradtui run` script, followed live or after attaching again) or a pipe
(the demo worker's stdout and stderr, read until the process closes it). Either way a
line is cut at 8 KiB, decoded as UTF-8 with replacement, and a progress bar that redraws
its line with `\\r` shows its latest state only.
"""

from __future__ import annotations

import os
import threading
from typing import IO

from gradtui.model.events import LogLine
from gradtui.wire.queue import EventQueue


class LogTail:
    """Follow a script's output and turn each line into a `LogLine` event.

    Args:
        source: A text file's path (it may not exist yet; it is followed as it grows until
            `stop()`), or a pipe opened for reading (read until its writer closes it, then
            closed).
        out: Where the events go.
        stream: The `LogLine.stream` label.
        last_lines: A file only: start near the end, with at most this many earlier lines
            (None: from the start).
        interval: A file only: seconds between looks at it when nothing new came.

    Call `start()`, then `stop()`.
    """

    MAX_LINE = 8192

    def __init__(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        out: EventQueue,
        *,
        stream: str = "output",
        last_lines: int | None = None,
        interval: float = 0.05,
    ) -> None:
        self.path: str | None = None
        """The file followed (None for a pipe)."""
        self._pipe: IO[bytes] | None = None
        if isinstance(source, (str, os.PathLike)):
            self.path = os.fspath(source)
        else:
            self._pipe = source
        self._out = out
        self._stream = stream
        self._last_lines = last_lines
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"gradtui-log-{stream}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Read what is left, then stop (waits at most `timeout` s).

        A file is read to its current end; a pipe until its writer closes it (when the
        process has exited), which `stop` cannot hasten.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        if self._pipe is not None:
            self._follow_pipe(self._pipe)
        else:
            self._follow_file()

    def _follow_pipe(self, pipe: IO[bytes]) -> None:
        partial = b""
        try:
            fd = pipe.fileno()
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)  # what is there, not a full buffer: lines show as printed
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                partial = self._emit_lines(partial + chunk)
            if partial:
                self._emit(partial)
        finally:
            pipe.close()

    def _follow_file(self) -> None:
        assert self.path is not None
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
