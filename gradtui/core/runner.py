"""`gradtui run SCRIPT`: start a training script under the viewer.

The script is a child process in its own session. It streams to the viewer over an
inherited socket (GRADTUI_CONNECT), serves a Unix socket too (GRADTUI_SERVE=1) so that
it can be attached to again, and writes its stdout and stderr to a log file in the
runtime directory, which the viewer follows. Nothing ties the script to the viewer:
when the viewer leaves without stopping it ("detach"), the script keeps running, its
prints land in the file (no broken pipe), and `gradtui attach PID` picks it up again.

Torch-free.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradtui.core import runs, server
from gradtui.core.events import LogLine, RunEnd
from gradtui.core.stream import CONNECT_ENV, LogTail, StreamSource

_seq = itertools.count()


def describe_exit(returncode: int) -> str:
    """ "exited with code 1", "was killed by SIGKILL"."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


def script_label(argv: Sequence[str]) -> str:
    """The script's name in a command line: the first *.py argument, a -m module, or the program."""
    for i, arg in enumerate(argv):
        if arg.endswith(".py"):
            return os.path.basename(arg)
        if arg == "-m" and i + 1 < len(argv):
            return argv[i + 1]
    return os.path.basename(argv[0]) if argv else "?"


class RunSource(StreamSource):
    """Start a training process under the viewer, show its output, report its exit status.

    Events: the probe's (through the inherited socket), then a `LogLine` (stream
    "output") per line the script prints, and when it exits a `LogLine` (stream
    "gradtui") with its exit status, plus a `RunEnd` when the probe did not send one or
    the process failed after it did.

    For `q` the viewer asks the user, then calls either `close()` (stop the script:
    SIGINT, then SIGTERM, then SIGKILL to its process group) or `detach()` (leave it
    running; the returned message says how to attach again and where its output goes).

    Args:
        argv: The command to run, e.g. [sys.executable, "train.py", "--lr", "0.1"].
        name: Shown in the viewer's header (default "run: <label>").
        label: How messages name the script (default: the script's file name).
        env: The child's environment (default: ours).
        cwd: The child's working directory.
        log_path: Where its output goes (default: a new file in the runtime directory).
        serve: Let the child serve a Unix socket, so that it can be attached to after a detach.
        listen: Also make the child listen on TCP at "HOST:PORT".

    Raises:
        OSError: the command cannot be started (FileNotFoundError, PermissionError, ...).
        runs.RuntimeDirError: the runtime directory is unsafe.
    """

    owns_process = True
    can_detach = True

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        label: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        serve: bool = True,
        listen: str | None = None,
    ) -> None:
        if not argv:
            raise ValueError("no command to run")
        self.argv = list(argv)
        self.label = label or script_label(self.argv)
        """How messages name the script ("train.py")."""
        name = name or f"run: {self.label}"
        if log_path is None:
            directory = runs.runtime_dir()
            log_path = directory / f"run-{os.getpid()}-{int(time.time())}-{next(_seq)}{runs.LOG_SUFFIX}"
        self.log_path = Path(log_path)
        self.exit_code: int | None = None
        """The script's exit status once it has exited (negative: killed by that signal)."""
        self.finished = threading.Event()
        """Set once the exit status has been reported."""
        self.detach_message: str | None = None
        """What `detach()` told the user (None: not detached)."""
        self._probe_end: RunEnd | None = None
        self._detached = False

        full_env = dict(os.environ if env is None else env)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        full_env[server.LOG_ENV] = str(self.log_path)
        if serve:
            full_env[server.SERVE_ENV] = "1"
        if listen is not None:
            full_env[server.LISTEN_ENV] = listen
        out_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        full_env[CONNECT_ENV] = f"fd:{child.fileno()}"
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=full_env,
                cwd=cwd,
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=out_fd,
                stderr=out_fd,
                # Its own session: a closed terminal or ^C in the viewer does not reach it.
                start_new_session=True,
            )
        except BaseException:
            parent.close()
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)
            raise
        finally:
            child.close()
            os.close(out_fd)
        super().__init__(parent, name)
        self._tail = LogTail(self.log_path, self.events, stream="output")
        self._tail.start()
        self._waiter = threading.Thread(target=self._wait, name="gradtui-run-wait", daemon=True)
        self._waiter.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def _on_payload(self, payload: dict[str, Any]) -> None:
        super()._on_payload(payload)
        if payload.get("t") == "run_end":
            self._probe_end = RunEnd(
                step=int(payload.get("step", -1)), status=str(payload.get("status", "")), error=""
            )

    def _on_disconnect(self, why: str) -> None:
        # The process's exit, not the socket's, ends the run here (see _wait).
        return

    def _wait(self) -> None:
        rc = self.process.wait()
        self.exit_code = rc
        if self._detached:
            return
        # Frames the probe sent before exiting, then the last lines it printed, then the status.
        self._reader.join(2.0)
        self._tail.stop()
        what = describe_exit(rc)
        self.events.put(LogLine(text=f"{self.label} {what}", stream="gradtui"))
        end = self._probe_end
        if end is None:
            status = "ok" if rc == 0 else "error"
            self.events.put(RunEnd(step=-1, status=status, error="" if rc == 0 else f"the training process {what}"))
        elif rc != 0 and end.status == "ok":
            self.events.put(RunEnd(step=end.step, status="error", error=f"the training process {what} after the run"))
        self.ended = True
        self.finished.set()

    def detach(self) -> str:
        """Leave the script running without this viewer; returns what to tell the user."""
        if self.process.poll() is not None:
            self.close()
            return f"{self.label} had already {describe_exit(self.process.returncode)}; output: {self.log_path}"
        self._detached = True
        self._tail.stop(timeout=0.5)
        StreamSource.close(self)
        self.detach_message = (
            f"{self.label} keeps running as pid {self.pid}: attach again with `gradtui attach {self.pid}`; "
            f"its output goes to {self.log_path}"
        )
        return self.detach_message

    def close(self, timeout: float = 5.0) -> None:
        """Stop the script (SIGINT, then SIGTERM, then SIGKILL) and wait for its exit status."""
        if not self._detached and self.process.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
                try:
                    # The whole group: its data-loader workers too.
                    os.killpg(self.process.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                deadline = time.monotonic() + wait
                while self.process.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                if self.process.poll() is not None:
                    break
        if not self._detached:
            self.finished.wait(5.0)
        StreamSource.close(self)
