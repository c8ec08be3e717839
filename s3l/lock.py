"""An exclusive operating-system lock on a file, held for the life of a process.

`fcntl.flock` is the kernel lock that `filelock` uses on Unix too; we call it directly because we need what
filelock keeps private: the lock file's own descriptor, to write the holder's host and pid into the locked
file, so that a refused claimant can say who holds it. The kernel drops the lock when its holder dies, however
it dies (SIGKILL, a zombie whose parent never reaps it, a node that reboots), so a dead run never blocks the
next one, and two processes claiming the same file at the same instant never both win.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

_RECORD = 256  # bytes of "host H, pid P", padded


def _read_holder(fd: int) -> str:
    # The winner of a simultaneous claim writes its record just after taking the lock: wait for it briefly.
    for _ in range(100):
        holder = os.pread(fd, _RECORD, 0).decode(errors="replace").strip()
        if holder:
            return holder
        time.sleep(0.01)
    return "a process that has not yet said who it is"


class ProcessLock:
    """`try_acquire()` an exclusive flock on `path` (created if needed); `release()` or process exit frees it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> str | None:
        """Take the lock without waiting: None when taken, else who holds it ("host H, pid P")."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            return holder
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        # One fixed-size write, never a truncation: a reader sees the old record or the new one, not nothing.
        record = f"host {socket.gethostname()}, pid {os.getpid()}".encode()[: _RECORD - 1]
        os.pwrite(fd, record.ljust(_RECORD - 1) + b"\n", 0)
        return None

    def acquire(self) -> None:
        """Take the lock, waiting for its holder to release it or die."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        """Free the lock (the file stays: unlinking it would let a waiter lock a file nobody else sees)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
