"""The viewer's end when its terminal goes away and no hangup signal says so.

Killing a tmux pane hangs up the pane's session leader. Where that is the viewer, it dies of
the SIGHUP; under `make demo`, `make` gets it and the viewer below it does not. Textual's input
thread then reads end-of-file from the dead terminal in a loop (half a core, for ever) and its
writer blocks, so no timer of the app runs again. A thread of our own watches the terminal and
ends the process as the hangup would have.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

CHECK_S = 0.5
"""How often the terminal is looked at (an `isatty` call: a few microseconds)."""
GRACE_S = 2.0
"""How long a handler of the hangup may take before the process exits without it."""


def stdin_fd() -> int:
    """The descriptor Textual reads keys from, or -1 where there is none."""
    try:
        return sys.__stdin__.fileno() if sys.__stdin__ is not None else -1
    except (ValueError, OSError):  # closed or detached
        return -1


def watch_terminal(fd: int, interval: float = CHECK_S) -> threading.Thread | None:
    """Start a daemon thread that ends this process as a hangup would once `fd` is no longer a
    terminal (a hung-up terminal fails `isatty`). None where `fd` is no terminal now (tests, pipes)."""
    if fd < 0 or not os.isatty(fd):
        return None

    def watch() -> None:
        while os.isatty(fd):
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGHUP)  # its default action ends the process; a handler runs first
        time.sleep(GRACE_S)
        os._exit(128 + signal.SIGHUP)  # a handler that went on: nothing is left to draw on

    thread = threading.Thread(target=watch, name="gradtui-terminal", daemon=True)
    thread.start()
    return thread


__all__ = ["stdin_fd", "watch_terminal"]
