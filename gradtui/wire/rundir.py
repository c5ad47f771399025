"""The private runtime directory that live runs are kept in, and safe reads of the small files there.

The directory is the user's alone (mode 0700, owned by the user, not a symlink). A
directory anyone else could enter, own or replace is never used and never repaired: when
the usual place (`$XDG_RUNTIME_DIR/gradtui`, else `/tmp/gradtui-<uid>`) is taken, runs go
to a fallback under the user's cache directory, which no other user can create, and one
line says so. `$GRADTUI_RUNTIME_DIR`, set by hand, is used as it is or refused.

Torch-free and free of threads; `runs` re-exports what its callers use.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import stat
import tempfile
from pathlib import Path

from gradtui.wire import env

log = logging.getLogger("gradtui")

_SOCK_PATH_MAX = 107
"""AF_UNIX paths are at most 107 bytes on Linux (108 with the NUL)."""
_SOCK_NAME_MAX = 24
"""Room left for "/<id>.sock" after a directory, for the ids a probe makes."""
_FIX = f"set {env.RUNTIME_DIR_ENV} to a private directory (mkdir -m 700 DIR)"


class RuntimeDirError(RuntimeError):
    """The runtime directory is missing, unsafe or unusable."""


class UnsafeFileError(ValueError):
    """A file that is not a small regular file: a symlink, a FIFO, a device, or too large.

    The message is the reason alone ("is a symbolic link"), for the caller to prefix.
    """


def current_uid() -> int:
    """The user id files must belong to (0 where there are none)."""
    return os.getuid() if hasattr(os, "getuid") else 0


def candidate_dir() -> Path:
    """Where runs are kept first: $GRADTUI_RUNTIME_DIR, $XDG_RUNTIME_DIR/gradtui, or /tmp/gradtui-<uid>."""
    override = env.get(env.RUNTIME_DIR_ENV)
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        try:
            st = os.stat(xdg)
            usable = stat.S_ISDIR(st.st_mode) and st.st_uid == current_uid() and os.access(xdg, os.W_OK | os.X_OK)
        except OSError:
            usable = False
        if usable:
            return Path(xdg) / "gradtui"
    return Path(tempfile.gettempdir()) / f"gradtui-{current_uid()}"


def fallback_dir() -> Path | None:
    """Where runs go when `candidate_dir()` is taken: $XDG_CACHE_HOME (or ~/.cache)/gradtui/run-<host>.

    The host is in the name because a home directory may be shared between machines, and
    `gradtui ls` judges entries by their pid. None when there is no home directory.
    """
    cache = os.environ.get("XDG_CACHE_HOME")
    if not cache or not os.path.isabs(cache):
        try:
            cache = str(Path.home() / ".cache")
        except (RuntimeError, KeyError, OSError):
            return None
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"
    return Path(cache) / "gradtui" / f"run-{host}"


def _private_problem(st: os.stat_result, path: Path) -> str | None:
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"runtime directory {str(path)!r} is not a directory (a symlink or a file?)"
    if st.st_uid != current_uid():
        return f"runtime directory {str(path)!r} belongs to uid {st.st_uid}, not to you"
    if st.st_mode & 0o077:
        return (
            f"runtime directory {str(path)!r} has mode {stat.S_IMODE(st.st_mode):04o}: others could reach "
            "its sockets; fix it with chmod 700 or remove it"
        )
    return None


def check_private_dir(path: Path) -> None:
    """Raise `RuntimeDirError` unless `path` is a real directory owned by us with no group/other access."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise RuntimeDirError(f"runtime directory {str(path)!r} does not exist") from None
    except OSError as exc:
        raise RuntimeDirError(f"runtime directory {str(path)!r} cannot be checked: {exc.strerror or exc}") from None
    problem = _private_problem(st, path)
    if problem is not None:
        raise RuntimeDirError(problem)


def check_private_fd(fd: int, path: Path) -> None:
    """`check_private_dir` on an open directory: the one that will be used, not the one a name pointed at."""
    problem = _private_problem(os.fstat(fd), path)
    if problem is not None:
        raise RuntimeDirError(problem)


def _create(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a file or a dangling symlink there: check_private_dir says which
    except OSError as exc:
        raise RuntimeDirError(f"cannot create runtime directory {str(path)!r}: {exc.strerror or exc}") from None


_warned: set[tuple[str, str]] = set()


def _say_fallback(problem: str, used: Path) -> None:
    # Once per process and pair: a probe and its viewer each resolve the directory.
    if (problem, str(used)) not in _warned:
        _warned.add((problem, str(used)))
        log.warning("gradtui: %s; using %s instead", problem, used)


def _fallbacks() -> list[Path]:
    fb = fallback_dir()
    return [fb] if fb is not None and fb != candidate_dir() else []


def runtime_dir(create: bool = True) -> Path:
    """The private runtime directory, created with mode 0700 when missing.

    When the usual one is taken (another user's, group or world accessible, a symlink) the
    fallback (`fallback_dir()`) is used, and one warning names both.

    Raises:
        RuntimeDirError: $GRADTUI_RUNTIME_DIR names a directory that is not private, or
            neither the usual directory nor the fallback can be used (the message says how
            to fix it).
    """
    primary = candidate_dir()
    if env.get(env.RUNTIME_DIR_ENV):
        try:
            if create:
                _create(primary)
            check_private_dir(primary)
        except RuntimeDirError as exc:
            raise RuntimeDirError(f"{exc} ({env.RUNTIME_DIR_ENV} must name a private directory)") from None
        return primary
    problems: list[str] = []
    for path in [primary, *_fallbacks()]:
        try:
            if path is not primary and len(os.fsencode(path)) + _SOCK_NAME_MAX > _SOCK_PATH_MAX:
                raise RuntimeDirError(f"{str(path)!r} is too long for the path of a Unix socket")
            if create:
                _create(path)
            check_private_dir(path)
        except RuntimeDirError as exc:
            problems.append(str(exc))
            continue
        if problems:
            _say_fallback(problems[0], path)
        return path
    raise RuntimeDirError(f"{'; '.join(problems)}; {_FIX}")


def runtime_dirs() -> list[Path]:
    """Every private runtime directory that exists, where `gradtui ls` and `attach` look.

    The usual one and the fallback both, so that runs are found wherever `runtime_dir()`
    put them; one that is not private is skipped with one warning.

    Raises:
        RuntimeDirError: $GRADTUI_RUNTIME_DIR names a directory that is not private.
    """
    primary = candidate_dir()
    if env.get(env.RUNTIME_DIR_ENV):
        if not os.path.lexists(primary):
            return []
        try:
            check_private_dir(primary)
        except RuntimeDirError as exc:
            raise RuntimeDirError(f"{exc} ({env.RUNTIME_DIR_ENV} must name a private directory)") from None
        return [primary]
    found: list[Path] = []
    problem: str | None = None
    for path in [primary, *_fallbacks()]:
        if not os.path.lexists(path):
            continue
        try:
            check_private_dir(path)
        except RuntimeDirError as exc:
            problem = problem or str(exc)
            continue
        if problem is not None:
            _say_fallback(problem, path)
        found.append(path)
    return found


# ---------------------------------------------------------------- small files


def read_small_file(
    path: str | os.PathLike[str], cap: int, *, dir_fd: int | None = None
) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file of at most `cap` bytes, and its status, from one descriptor.

    Opened without following a symlink and without blocking (a FIFO answers at once), then
    checked to be a regular file; at most `cap + 1` bytes are ever read.

    Raises:
        UnsafeFileError: a symlink, not a regular file, or more than `cap` bytes.
        OSError: it cannot be opened or read (FileNotFoundError when it is not there).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        # Linux says ELOOP for O_NOFOLLOW on a symlink, the BSDs EMLINK.
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise UnsafeFileError("is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError("is not a regular file")
        if st.st_size > cap:
            raise UnsafeFileError(f"is {st.st_size} bytes, more than the {cap} allowed")
        chunks: list[bytes] = []
        left = cap + 1
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise UnsafeFileError(f"is more than the {cap} bytes allowed")
        return b"".join(chunks), st
    finally:
        os.close(fd)
