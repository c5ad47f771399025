"""Training processes started by the viewer: the demo's worker and `gradtui run SCRIPT`.

One spawner, `ChildSource`, for both. It starts the command in its own session (a closed
terminal or ^C in the viewer does not reach it) with one end of a socket pair inherited
(GRADTUI_CONNECT=fd:N), over which the probe inside streams to this viewer; follows its
output with `LogTail`; reports its exit status when it exits; and stops it, when asked,
with SIGINT, then SIGTERM, then SIGKILL to its process group.

Where the output goes is the one difference between the two uses:

- `gradtui demo` (`ChildSource`): stdout and stderr through pipes, as `LogLine` events
  labelled "stdout" and "stderr". The worker lives and dies with its viewer.
- `gradtui run` (`RunSource`): both into a log file in the runtime directory, followed
  as "output" lines. Nothing ties the script to the viewer: when the viewer leaves
  without stopping it (`detach`), the script keeps running, its prints land in the file
  (no broken pipe), and `gradtui attach PID` picks it up again (it serves a Unix socket,
  GRADTUI_SERVE=1).

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gradtui.model.events import LogLine, RunEnd
from gradtui.sources.base import DetachError
from gradtui.sources.logtail import LogTail
from gradtui.sources.stream import StreamSource
from gradtui.wire import runs
from gradtui.wire.env import CONNECT_ENV, LISTEN_ENV, LOG_ENV, SERVE_ENV, VIEWER_PID_ENV

STOP_SEQUENCE: tuple[tuple[signal.Signals, float | None], ...] = (
    (signal.SIGINT, None),
    (signal.SIGTERM, 2.0),
    (signal.SIGKILL, 2.0),
)
"""How a child is stopped: each signal, then how long to wait for its exit (None: the caller's timeout)."""

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


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
    """Stop a process started in its own session: SIGINT to its group (its data-loader
    workers too), then SIGTERM, then SIGKILL, waiting for its exit after each (`timeout` s
    after SIGINT, 2 s after the others). Returns its exit status (None: it still runs)."""
    for sig, wait in STOP_SEQUENCE:
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            if process.poll() is not None:
                break
            process.send_signal(sig)  # it left its own group: signal the process at least
        except PermissionError:
            break
        deadline = time.monotonic() + (timeout if wait is None else wait)
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    return process.poll()


class ChildSource(StreamSource):
    """Start a training process that streams to this viewer over an inherited socket.

    Events: the probe's (through the socket); a `LogLine` per line the process prints;
    when it exits, a `LogLine` (stream "gradtui") with its exit status after every line it
    printed, plus a `RunEnd` when the probe did not send one (so a crash shows its
    traceback even if the probe never got that far) or when the process failed after it did.

    Args:
        argv: The command to run, e.g. [sys.executable, "-m", "gradtui.demo.worker", "sigmoid"].
        name: Shown in the viewer's header (default: the label).
        label: How messages name the process (default: the script's name, see `script_label`).
        env: The child's environment (default: ours); GRADTUI_CONNECT is added.
        cwd: The child's working directory.
        log_path: None: stdout and stderr come through pipes (streams "stdout" and
            "stderr"). A path: both go to that file (created or emptied, mode 0600),
            followed as stream "output"; the child then prints whether a viewer reads or not.
        viewer_pid: Tell the child this viewer's pid (GRADTUI_VIEWER_PID) so that it can
            stop when the viewer is gone (the demo's worker does).

    `close()` stops the process. It cannot detach (`detach` raises `DetachError`): its
    output would go nowhere; `RunSource` can.

    Raises:
        OSError: the command cannot be started (FileNotFoundError, PermissionError, ...).
    """

    owns_process = True

    def __init__(
        self,
        argv: Sequence[str],
        name: str | None = None,
        *,
        label: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        viewer_pid: bool = True,
    ) -> None:
        if not argv:
            raise ValueError("no command to run")
        self.argv = list(argv)
        self.label = label or script_label(self.argv)
        """How messages name the process ("train.py")."""
        self.log_path = Path(log_path) if log_path is not None else None
        """The file the output goes to (None: pipes)."""
        self.exit_code: int | None = None
        """The exit status once the process has exited (negative: killed by that signal)."""
        self.finished = threading.Event()
        """Set once the exit status has been reported."""
        self._probe_end: RunEnd | None = None
        self._detached = False
        full_env = dict(os.environ if env is None else env)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if viewer_pid:
            full_env[VIEWER_PID_ENV] = str(os.getpid())
        parent = self._spawn(full_env, cwd)
        super().__init__(parent, name or self.label)
        self._outputs: list[LogTail] = []
        if self.log_path is not None:
            self._outputs.append(LogTail(self.log_path, self.events, stream="output"))
        else:
            for pipe, label_ in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
                if pipe is not None:
                    self._outputs.append(LogTail(pipe, self.events, stream=label_))
        for tail in self._outputs:
            tail.start()
        self._waiter = threading.Thread(target=self._wait, name="gradtui-child-wait", daemon=True)
        self._waiter.start()

    def _spawn(self, env: dict[str, str], cwd: str | None) -> socket.socket:
        """Start the process; returns our end of its socket."""
        out: int = subprocess.PIPE
        if self.log_path is not None:
            out = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env[CONNECT_ENV] = f"fd:{child.fileno()}"
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=env,
                cwd=cwd,
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                # Its own session: a closed terminal or ^C in the viewer does not reach it.
                start_new_session=True,
            )
        except BaseException:
            parent.close()
            if self.log_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.log_path)
            raise
        finally:
            child.close()
            if out != subprocess.PIPE:
                os.close(out)
        return parent

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
        for tail in self._outputs:
            tail.stop()
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
        """Refused: this process's output goes to the viewer (see `RunSource` for one that can).

        Raises:
            DetachError: always.
        """
        raise DetachError(f"{self.label} cannot run on without this viewer: its output comes through pipes")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the process (SIGINT, then SIGTERM, then SIGKILL) and wait for its exit status."""
        if not self._detached:
            stop_process_group(self.process, timeout)
            self.finished.wait(5.0)
        StreamSource.close(self)


class RunSource(ChildSource):
    """`gradtui run`: a training script under the viewer, which it can leave running.

    Its output goes to a log file (see `ChildSource`), and it serves a Unix socket so
    that it can be attached to again. For `q` the viewer asks the user, then calls either
    `close()` (stop the script) or `detach()` (leave it running; the returned message says
    how to attach again and where its output goes).

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

    can_detach = True

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        label: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        serve: bool = True,
        listen: str | None = None,
    ) -> None:
        if not argv:
            raise ValueError("no command to run")
        label = label or script_label(argv)
        if log_path is None:
            directory = runs.runtime_dir()
            log_path = directory / f"run-{os.getpid()}-{int(time.time())}-{next(_seq)}{runs.LOG_SUFFIX}"
        self.detach_message: str | None = None
        """What `detach()` told the user (None: not detached)."""
        full_env = dict(os.environ if env is None else env)
        full_env[LOG_ENV] = os.fspath(log_path)
        if serve:
            full_env[SERVE_ENV] = "1"
        if listen is not None:
            full_env[LISTEN_ENV] = listen
        super().__init__(
            argv, name or f"run: {label}", label=label, env=full_env, cwd=cwd, log_path=log_path, viewer_pid=False
        )
        self.log_path: Path = Path(log_path)

    def detach(self) -> str:
        """Leave the script running without this viewer; returns what to tell the user."""
        if self.process.poll() is not None:
            self.close()
            return f"{self.label} had already {describe_exit(self.process.returncode)}; output: {self.log_path}"
        self._detached = True
        for tail in self._outputs:
            tail.stop(timeout=0.5)
        StreamSource.close(self)
        self.detach_message = (
            f"{self.label} keeps running as pid {self.pid}: attach again with `gradtui attach {self.pid}`; "
            f"its output goes to {self.log_path}"
        )
        return self.detach_message
