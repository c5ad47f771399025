"""Live runs on this machine: the private runtime directory and its run entries.

A probe that serves (`watch(..., serve=True)`) keeps two files in the runtime
directory: `<id>.sock`, the Unix socket viewers attach to, and `<id>.json`, a small
sidecar (pid, script, start time, last step) that `gradtui ls` reads without
connecting. The directory is the user's alone (mode 0700, owned by the user); a
directory anyone else could enter or write is refused, never repaired.

Torch-free: `gradtui ls` and `gradtui attach` start fast.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
import socket
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradtui.wire.env import RUNTIME_DIR_ENV

log = logging.getLogger("gradtui")

SOCK_SUFFIX = ".sock"
META_SUFFIX = ".json"
LOG_SUFFIX = ".log"
LOG_KEEP_DAYS = 7


class RuntimeDirError(RuntimeError):
    """The runtime directory is missing, unsafe or unusable."""


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def candidate_dir() -> Path:
    """Where runs are kept: $GRADTUI_RUNTIME_DIR, $XDG_RUNTIME_DIR/gradtui, or /tmp/gradtui-<uid>."""
    override = os.environ.get(RUNTIME_DIR_ENV)
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        try:
            st = os.stat(xdg)
            usable = stat.S_ISDIR(st.st_mode) and st.st_uid == _uid() and os.access(xdg, os.W_OK | os.X_OK)
        except OSError:
            usable = False
        if usable:
            return Path(xdg) / "gradtui"
    return Path(tempfile.gettempdir()) / f"gradtui-{_uid()}"


def check_private_dir(path: Path) -> None:
    """Raise `RuntimeDirError` unless `path` is a real directory owned by us with no group/other access."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise RuntimeDirError(f"runtime directory {str(path)!r} does not exist") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {str(path)!r} is not a directory (a symlink or a file?)")
    if st.st_uid != _uid():
        raise RuntimeDirError(f"runtime directory {str(path)!r} belongs to uid {st.st_uid}, not to you")
    if st.st_mode & 0o077:
        raise RuntimeDirError(
            f"runtime directory {str(path)!r} has mode {stat.S_IMODE(st.st_mode):04o}: others could reach "
            "its sockets; fix it with chmod 700 or remove it"
        )


def runtime_dir(create: bool = True) -> Path:
    """The private runtime directory, created with mode 0700 when missing.

    Raises:
        RuntimeDirError: the directory exists but is not safe, or cannot be created.
    """
    path = candidate_dir()
    if create:
        try:
            path.mkdir(mode=0o700, parents=False, exist_ok=True)
        except FileNotFoundError:
            # The parent is missing (only possible with an override): create it for the user alone.
            try:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise RuntimeDirError(f"cannot create runtime directory {str(path)!r}: {exc}") from None
        except OSError as exc:
            raise RuntimeDirError(f"cannot create runtime directory {str(path)!r}: {exc}") from None
    check_private_dir(path)
    return path


# ---------------------------------------------------------------- entries


@dataclass(frozen=True)
class RunInfo:
    """One run entry as `gradtui ls` shows it."""

    id: str
    pid: int
    run: str
    script: str
    argv: tuple[str, ...]
    started: float
    step: int
    steps_per_sec: float
    viewers: int
    socket: str | None
    """Path of the Unix socket, or None when the run only listens on TCP."""
    listen: str | None
    """"host:port" of the TCP listener, or None."""
    log: str | None
    """The script's output file when it was started by `gradtui run`."""
    updated: float
    meta_path: str

    @classmethod
    def from_json(cls, data: dict[str, Any], meta_path: str) -> RunInfo:
        def get(key: str, typ: type | tuple[type, ...], default: Any) -> Any:
            value = data.get(key, default)
            return value if isinstance(value, typ) and not isinstance(value, bool) else default

        argv = data.get("argv", [])
        return cls(
            id=get("id", str, Path(meta_path).stem),
            pid=get("pid", int, 0),
            run=get("run", str, ""),
            script=get("script", str, ""),
            argv=tuple(a for a in argv if isinstance(a, str)) if isinstance(argv, list) else (),
            started=float(get("started", (int, float), 0.0)),
            step=get("step", int, -1),
            steps_per_sec=float(get("steps_per_sec", (int, float), 0.0)),
            viewers=get("viewers", int, 0),
            socket=get("socket", str, None),
            listen=get("listen", str, None),
            log=get("log", str, None),
            updated=float(get("updated", (int, float), 0.0)),
            meta_path=meta_path,
        )


def write_meta(path: Path, data: dict[str, Any]) -> None:
    """Replace a sidecar atomically (readers never see half a file), mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[0] != b"Z"
    except (OSError, IndexError):
        return True


def _socket_answers(path: str) -> bool:
    """Whether something listens on a Unix socket (a connection refused means nobody does)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(0.5)
    try:
        sock.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # busy or slow, but there: never remove a live run's entry on a guess
    finally:
        sock.close()
    return True


def is_stale(info: RunInfo) -> bool:
    """True when the process behind an entry is gone, or its pid now names another process.

    A reused pid is caught by the socket: nothing listens on a dead run's socket.
    """
    if not pid_alive(info.pid):
        return True
    if info.socket is None:
        return False
    return not os.path.exists(info.socket) or not _socket_answers(info.socket)


def remove_entry(directory: Path, run_id: str, *, keep_log: bool = True) -> None:
    """Remove a run's socket and sidecar (and its log unless `keep_log`)."""
    suffixes = [SOCK_SUFFIX, META_SUFFIX] + ([] if keep_log else [LOG_SUFFIX])
    for suffix in suffixes:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / f"{run_id}{suffix}")


def list_runs(directory: Path | None = None, *, clean: bool = True) -> list[RunInfo]:
    """Live runs, oldest first; entries of dead processes are removed when `clean`."""
    if directory is None:
        directory = candidate_dir()
        if not directory.exists():
            return []
        check_private_dir(directory)
    out: list[RunInfo] = []
    for meta in sorted(directory.glob(f"*{META_SUFFIX}")):
        if meta.name.startswith("."):
            continue
        try:
            with open(meta, encoding="utf-8") as fh:
                data = json.load(fh)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            info = RunInfo.from_json(data, str(meta))
        except FileNotFoundError:
            continue  # removed by its own run while we listed
        except (OSError, ValueError):
            # A sidecar is replaced atomically, so an unreadable one was not written by gradtui.
            continue
        if is_stale(info):
            if clean:
                remove_entry(directory, info.id)
            continue
        out.append(info)
    # Leftover sockets without a sidecar (a run killed between the two writes).
    if clean:
        for sock in directory.glob(f"*{SOCK_SUFFIX}"):
            if not (directory / f"{sock.stem}{META_SUFFIX}").exists():
                pid_part = sock.stem.split("-", 1)[0]
                if pid_part.isdigit() and not pid_alive(int(pid_part)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(sock)
        # Output files of `gradtui run` scripts are kept for the user to read, for a while.
        cutoff = time.time() - LOG_KEEP_DAYS * 86400
        for log_file in directory.glob(f"run-*{LOG_SUFFIX}"):
            with contextlib.suppress(OSError):
                if log_file.stat().st_mtime < cutoff:
                    os.unlink(log_file)
    out.sort(key=lambda r: (r.started, r.id))
    return out


def parse_address(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Parse "HOST:PORT", "[v6]:PORT", ":PORT" or "PORT"; raises ValueError with a readable reason."""
    text = text.strip()
    host, port_text = default_host, text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"cannot read address {text!r}: expected [IPv6]:PORT")
        host, port_text = text[1:end], text[end + 2 :]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        host = host or default_host
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"cannot read address {text!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_or_create_token(path: str | os.PathLike[str]) -> tuple[str, bool]:
    """The token in `path`, or a new one written there with mode 0600; returns (token, created)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(24)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
        return token, True
    if not text:
        raise ValueError(f"token file {str(p)!r} is empty")
    if os.stat(p).st_mode & 0o077:
        log.warning("gradtui: token file %s is readable by others; chmod 600 it", p)
    return text, False


class RunLookupError(LookupError):
    """No run, or several, match what the user typed."""


def resolve(runs: list[RunInfo], query: str | None) -> RunInfo:
    """The one run that `query` names: an id, a pid, a run name or a script name.

    Raises:
        RunLookupError: none or several match (the message lists the candidates).
    """
    if query is None:
        if len(runs) == 1:
            return runs[0]
        if not runs:
            raise RunLookupError(
                "no live gradtui runs here (start one with watch(..., serve=True) or GRADTUI_SERVE=1)"
            )
        raise RunLookupError(f"{len(runs)} live runs: name one of {_names(runs)} (see gradtui ls)")
    for key in ("id", "pid", "run", "script"):
        hits = [r for r in runs if str(getattr(r, key)) == query]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise RunLookupError(f"{query!r} names {len(hits)} runs: use one of the ids {_names(hits)}")
    hits = [r for r in runs if r.run.startswith(query) or r.script.startswith(query)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise RunLookupError(f"{query!r} names {len(hits)} runs: use one of the ids {_names(hits)}")
    known = f" (live runs: {_names(runs)})" if runs else " (there are no live runs)"
    raise RunLookupError(f"no live run named {query!r}{known}")


def _names(runs: list[RunInfo]) -> str:
    return ", ".join(f"{r.id} [{r.script or r.run}]" for r in runs[:8]) + (" ..." if len(runs) > 8 else "")


def format_table(runs: list[RunInfo], now: float | None = None) -> str:
    """The `gradtui ls` table."""
    now = time.time() if now is None else now
    header = ("RUN", "PID", "SCRIPT", "STARTED", "STEP", "STEPS/S", "VIEWERS", "ADDRESS")
    rows = [header]
    for r in runs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started)) if r.started else "?"
        address = "unix" if r.socket else ""
        if r.listen:
            address = f"{address} + tcp {r.listen}" if address else f"tcp {r.listen}"
        rows.append(
            (
                r.id,
                str(r.pid),
                r.script or "-",
                started,
                str(r.step) if r.step >= 0 else "-",
                f"{r.steps_per_sec:.1f}" if r.steps_per_sec > 0 else "-",
                str(r.viewers),
                address,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
