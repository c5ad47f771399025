"""Process exit for what the probe keeps open: at interpreter exit (atexit) and on a fatal
signal (SIGTERM, SIGHUP where their handler is the default), every registered object is
told once, so that viewers hear how the run ended and no run entry is left behind."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Protocol


class ExitAware(Protocol):
    def close_at_exit(self) -> None:
        """The interpreter is exiting normally (or after an uncaught exception)."""
        ...

    def terminate(self, signum: int) -> None:
        """A fatal signal arrived, in the main thread: clean up fast, take no lock for long."""
        ...


_LIVE: set[ExitAware] = set()
_LOCK = threading.Lock()
_installed = False


def register(obj: ExitAware) -> None:
    """Tell `obj` when the process exits or is killed by SIGTERM/SIGHUP."""
    global _installed
    with _LOCK:
        _LIVE.add(obj)
        if _installed:
            return
        _installed = True
    atexit.register(_close_all_at_exit)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still cleans up
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        # Only where the process would die anyway: never replace a handler the user chose.
        if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _on_fatal_signal)


def unregister(obj: ExitAware) -> None:
    with _LOCK:
        _LIVE.discard(obj)


def _close_all_at_exit() -> None:
    for obj in list(_LIVE):
        obj.close_at_exit()


def _on_fatal_signal(signum: int, frame: FrameType | None) -> None:
    for obj in list(_LIVE):
        # Dying anyway: a failed cleanup must not stop the signal from taking effect.
        with contextlib.suppress(Exception):
            obj.terminate(signum)
    # Then die of the signal as if we had never handled it.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
