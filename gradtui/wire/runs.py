"""Live runs on this machine: the private runtime directory and its run entries.

A probe that serves (`watch(..., serve=True)`) keeps two files in the runtime
directory (see `rundir`): `<id>.sock`, the Unix socket viewers attach to, and
`<id>.json`, a small sidecar (pid, script, start time, last step) that `gradtui ls`
reads without connecting. Nothing a sidecar says is trusted to name a path: a run's
files are found from its id, and the id must be the sidecar's own file name.

Torch-free: `gradtui ls` and `gradtui attach` start fast.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# RuntimeDirError, candidate_dir, check_private_dir, fallback_dir and runtime_dir are
# re-exported: callers know the runtime directory as part of `runs`.
from gradtui.wire.rundir import RuntimeDirError as RuntimeDirError
from gradtui.wire.rundir import UnsafeFileError, check_private_fd, current_uid, read_small_file, runtime_dirs
from gradtui.wire.rundir import candidate_dir as candidate_dir
from gradtui.wire.rundir import check_private_dir as check_private_dir
from gradtui.wire.rundir import fallback_dir as fallback_dir
from gradtui.wire.rundir import runtime_dir as runtime_dir

log = logging.getLogger("gradtui")

SOCK_SUFFIX = ".sock"
META_SUFFIX = ".json"
LOG_SUFFIX = ".log"
LOG_KEEP_DAYS = 7
SIDECAR_MAX = 64 * 1024
"""Largest sidecar read (a real one is well under 4 KiB; `write_meta` shortens argv to fit)."""
TOKEN_MAX = 4096
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class SidecarError(ValueError):
    """A sidecar that is not a small JSON object in a regular file named after its run."""


class TokenFileError(ValueError):
    """A token file that must not be used: the message names the file and the fix."""


def valid_run_id(text: str) -> bool:
    """Whether `text` can be a run id: 1-64 of [A-Za-z0-9._-], starting with a letter or digit."""
    return _RUN_ID.fullmatch(text) is not None


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
    paused_by: str | None = None
    """Who paused the run ("alice@pane2 (viewer 3)"), or None when it is not paused."""

    @classmethod
    def from_json(cls, data: dict[str, Any], meta_path: str) -> RunInfo:
        """An entry from a sidecar's fields; a field of the wrong type takes its default.

        The socket is always `<id>.sock` beside the sidecar, whatever path the field holds.
        """

        def get(key: str, typ: type | tuple[type, ...], default: Any) -> Any:
            value = data.get(key, default)
            return value if isinstance(value, typ) and not isinstance(value, bool) else default

        def number(key: str) -> float:
            value = float(get(key, (int, float), 0.0))
            return value if math.isfinite(value) else 0.0

        meta = Path(meta_path)
        run_id = meta.name[: -len(META_SUFFIX)] if meta.name.endswith(META_SUFFIX) else meta.stem
        pid = get("pid", int, 0)
        argv = data.get("argv", [])
        return cls(
            id=run_id,
            pid=pid if 0 < pid < 1 << 31 else 0,
            run=get("run", str, ""),
            script=get("script", str, ""),
            argv=tuple(a for a in argv if isinstance(a, str)) if isinstance(argv, list) else (),
            started=number("started"),
            step=get("step", int, -1),
            steps_per_sec=number("steps_per_sec"),
            viewers=get("viewers", int, 0),
            socket=str(meta.with_name(f"{run_id}{SOCK_SUFFIX}")) if isinstance(data.get("socket"), str) else None,
            listen=get("listen", str, None),
            log=get("log", str, None),
            updated=number("updated"),
            meta_path=meta_path,
            paused_by=get("paused_by", str, None),
        )


def _parse_sidecar(raw: bytes, run_id: str) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SidecarError("is not UTF-8 text") from None
    except RecursionError:
        raise SidecarError("is JSON nested too deep") from None
    except ValueError as exc:
        raise SidecarError(f"is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SidecarError("is not a JSON object")
    if "id" in data and data["id"] != run_id:
        # Never build a path from it: an id of "../x" would name files outside the directory.
        raise SidecarError(f"names run {str(data['id'])[:80]!r}, not {run_id!r} (its file name)")
    sock = data.get("socket")
    if isinstance(sock, str) and os.path.basename(sock) != f"{run_id}{SOCK_SUFFIX}":
        raise SidecarError(f"names socket {sock[:200]!r}, not {run_id}{SOCK_SUFFIX} beside it")
    return data


def _read_sidecar_at(name: str, dir_fd: int | None) -> dict[str, Any]:
    if not name.endswith(META_SUFFIX) or not valid_run_id(run_id := name[: -len(META_SUFFIX)]):
        raise SidecarError("is not named <run id>.json")
    try:
        raw, _ = read_small_file(name, SIDECAR_MAX, dir_fd=dir_fd)
    except UnsafeFileError as exc:
        raise SidecarError(str(exc)) from None
    return _parse_sidecar(raw, run_id)


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A sidecar's fields, read the safe way (no symlink, no FIFO, at most `SIDECAR_MAX` bytes).

    Raises:
        SidecarError: it is not a small regular file holding a JSON object whose id (when
            present) is its file name.
        OSError: it cannot be opened or read (FileNotFoundError when it is not there).
    """
    p = Path(path)
    fd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _read_sidecar_at(p.name, fd)
    finally:
        os.close(fd)


def _fit_argv(data: dict[str, Any]) -> dict[str, Any]:
    argv = data.get("argv")
    if not isinstance(argv, list):
        return data
    kept: list[Any] = []
    size = 0
    for arg in argv:
        size += len(str(arg)) + 4
        if size > SIDECAR_MAX // 4:
            kept.append("...")
            break
        kept.append(arg)
    return {**data, "argv": kept}


def write_meta(path: Path, data: dict[str, Any]) -> None:
    """Replace a sidecar atomically (readers never see half a file), mode 0600.

    The new text goes to a temporary name that is created, never reused: a file or symlink
    already there is left alone and another name is picked.

    Raises:
        OSError: it cannot be written. ValueError: it cannot fit in `SIDECAR_MAX` bytes.
    """
    text = json.dumps(data)
    if len(text.encode("utf-8")) > SIDECAR_MAX:
        text = json.dumps(_fit_argv(data))
        if len(text.encode("utf-8")) > SIDECAR_MAX:
            raise ValueError(f"the sidecar {path} would be more than {SIDECAR_MAX} bytes")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(16):
        # Two threads of one process may write at once: only the first name is predictable.
        tail = f"{os.getpid()}.tmp" if attempt == 0 else f"{os.getpid()}.{secrets.token_hex(6)}.tmp"
        tmp = path.with_name(f".{path.name}.{tail}")
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name beside it", str(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
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
    """Remove a run's socket and sidecar (and its log unless `keep_log`).

    Raises:
        ValueError: `run_id` is not a run id (nothing outside `directory` is ever removed).
    """
    if not valid_run_id(run_id):
        raise ValueError(f"{run_id!r} is not a run id")
    suffixes = [SOCK_SUFFIX, META_SUFFIX] + ([] if keep_log else [LOG_SUFFIX])
    for suffix in suffixes:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / f"{run_id}{suffix}")


def list_runs(directory: Path | None = None, *, clean: bool = True) -> list[RunInfo]:
    """Live runs, oldest first; entries of dead processes are removed when `clean`.

    Without `directory`, every private runtime directory (`runtime_dirs()`) is read. A
    sidecar that is not a gradtui one (a symlink, a FIFO, too large, not JSON, named
    after another run) is skipped with one warning and left alone.

    Raises:
        RuntimeDirError: $GRADTUI_RUNTIME_DIR names a directory that is not private.
    """
    if directory is None:
        out = [info for d in runtime_dirs() for info in _list_dir(d, clean, checked=True)]
    else:
        out = _list_dir(directory, clean, checked=False)
    out.sort(key=lambda r: (r.started, r.id))
    return out


def _list_dir(directory: Path, clean: bool, *, checked: bool) -> list[RunInfo]:
    # Everything below goes through this descriptor: names, never paths a sidecar gave.
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (os.O_NOFOLLOW if checked else 0))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RuntimeDirError(f"cannot read runtime directory {str(directory)!r}: {exc.strerror or exc}") from None
    try:
        if checked:
            check_private_fd(dfd, directory)
        try:
            names = sorted(os.listdir(dfd))
        except OSError as exc:
            raise RuntimeDirError(f"cannot list runtime directory {str(directory)!r}: {exc.strerror or exc}") from None
        out: list[RunInfo] = []
        for name in names:
            if name.startswith(".") or not name.endswith(META_SUFFIX):
                continue
            try:
                info = RunInfo.from_json(_read_sidecar_at(name, dfd), str(directory / name))
            except FileNotFoundError:
                continue  # removed by its own run while we listed
            except SidecarError as exc:
                log.warning("gradtui: skipping %s: it %s", directory / name, exc)
                continue
            except OSError as exc:
                log.warning("gradtui: skipping %s: it cannot be read (%s)", directory / name, exc.strerror or exc)
                continue
            if is_stale(info):
                if clean:
                    _unlink_at(dfd, f"{info.id}{SOCK_SUFFIX}", f"{info.id}{META_SUFFIX}")
                continue
            out.append(info)
        if clean:
            _clean_leftovers(dfd, names)
        return out
    finally:
        os.close(dfd)


def _unlink_at(dfd: int, *names: str) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)


def _kind_at(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except OSError:
        return None


def _clean_leftovers(dfd: int, names: list[str]) -> None:
    cutoff = time.time() - LOG_KEEP_DAYS * 86400
    for name in names:
        if name.endswith(SOCK_SUFFIX) and valid_run_id(stem := name[: -len(SOCK_SUFFIX)]):
            # A socket without a sidecar: a run killed between the two writes.
            pid_part = stem.split("-", 1)[0]
            st = _kind_at(dfd, name)
            if (
                st is not None
                and stat.S_ISSOCK(st.st_mode)
                and _kind_at(dfd, f"{stem}{META_SUFFIX}") is None
                and pid_part.isdigit()
                and not pid_alive(int(pid_part))
            ):
                _unlink_at(dfd, name)
        elif name.startswith("run-") and name.endswith(LOG_SUFFIX):
            # Output files of `gradtui run` scripts are kept for the user to read, for a while.
            st = _kind_at(dfd, name)
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dfd)


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
    """The token in `path`, or a new one written there with mode 0600; returns (token, created).

    An existing file must be a regular file (not a symlink), owned by the user, that no
    one else can read or write.

    Raises:
        TokenFileError: the file is unsafe or empty (the message names the fix).
        OSError: it cannot be read or created.
    """
    p = Path(path)
    try:
        raw, st = read_small_file(p, TOKEN_MAX)
    except FileNotFoundError:
        token = secrets.token_urlsafe(24)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
        return token, True
    except UnsafeFileError as exc:
        raise TokenFileError(f"token file {str(p)!r} {exc}: give the path of the file itself, or remove it") from None
    if st.st_uid != current_uid():
        raise TokenFileError(
            f"token file {str(p)!r} belongs to uid {st.st_uid}, not to you: remove it (a new one is written) "
            "or use a token file of your own"
        )
    if st.st_mode & 0o077:
        raise TokenFileError(
            f"token file {str(p)!r} has mode {stat.S_IMODE(st.st_mode):04o}: others could read or change the "
            f"token; chmod 600 {p} (or remove it and a new one is written)"
        )
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise TokenFileError(f"token file {str(p)!r} is not text") from None
    if not text:
        raise TokenFileError(f"token file {str(p)!r} is empty")
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


def _cell(text: str, limit: int = 80) -> str:
    # A sidecar's strings reach the terminal: no escape sequences, no line breaks.
    clean = "".join(ch if ch.isprintable() else "?" for ch in text[: limit + 1])
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _started(t: float) -> str:
    if not t:
        return "?"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (OverflowError, OSError, ValueError):
        return "?"


def format_table(runs: list[RunInfo], now: float | None = None) -> str:
    """The `gradtui ls` table; STATUS reads "paused by WHO" while a viewer holds the run paused.

    RUN is the run's name and PID its process; the run id (what `attach` also takes) is
    the pid, and is shown only where it is not ("4242-1": a second monitor in that process).
    """
    now = time.time() if now is None else now
    header = ("RUN", "PID", "SCRIPT", "STARTED", "STEP", "STEPS/S", "VIEWERS", "STATUS", "ADDRESS")
    rows = [header]
    for r in runs:
        address = "unix" if r.socket else ""
        if r.listen:
            address = f"{address} + tcp {_cell(r.listen)}" if address else f"tcp {_cell(r.listen)}"
        rows.append(
            (
                _cell(r.run) or "-",
                str(r.pid) if r.id == str(r.pid) else f"{r.pid} (id {r.id})",
                _cell(r.script) or "-",
                _started(r.started),
                str(r.step) if r.step >= 0 else "-",
                f"{r.steps_per_sec:.1f}" if r.steps_per_sec > 0 else "-",
                str(r.viewers),
                "running" if r.paused_by is None else f"paused by {_cell(r.paused_by)}",
                address,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
