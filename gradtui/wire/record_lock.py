"""One writer per record file: an exclusive `flock` held for the writer's lifetime.

Two processes appending to one record mix two runs frame by frame, and `overwrite=True`
truncating a record that a live process still writes destroys both. The writer takes
`LOCK_EX | LOCK_NB` on its descriptor before it truncates or writes anything, and the
kernel drops the lock when the descriptor is closed or the process dies, so a crash
never leaves a stale lock. Readers never lock: a viewer can follow a record being written.
"""

from __future__ import annotations

import errno
import fcntl
import os


class RecordBusy(Exception):
    """Another open file description holds the record's lock: a live writer."""

    def __init__(self, holder: int | None) -> None:
        super().__init__(holder)
        self.holder = holder
        """The writer's process id, when it can be told (Linux), else None."""


def lock_record(fd: int) -> None:
    """Take the writer's lock on `fd`, without waiting.

    A file system that cannot lock (some network mounts) is written unlocked: the lock
    guards against a mistake, and must never be the reason a record cannot be made.

    Raises:
        RecordBusy: another writer holds it.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RecordBusy(lock_holder(os.fstat(fd))) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise


def lock_holder(st: os.stat_result) -> int | None:
    """The pid holding a `flock` on the file `st` describes, from /proc/locks (None when unknown)."""
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters are marked "->".
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[3] != "WRITE":
            continue
        dev = parts[5].split(":")
        try:
            if len(dev) == 3 and (int(dev[0], 16), int(dev[1], 16), int(dev[2])) == want:
                return int(parts[4])
        except ValueError:
            continue
    return None


def holder_words(holder: int | None) -> str:
    """Who writes a locked record, in words."""
    if holder is None:
        return "another process is writing it"
    if holder == os.getpid():
        return "this process is already writing it (a monitor that was not closed?)"
    return f"process {holder} is writing it"
