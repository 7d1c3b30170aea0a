"""File locks that let two instances of the daemon run side by side on one node (a rolling update).

During ``kubectl rollout restart`` with ``maxSurge: 1`` the new pod starts while the old one
still runs; the kubelet may send any call to either (it prefers the newest connected plugin,
but falls back to the other), so a claim prepared by one may be unprepared by the other. Two
locks on files in the shared state dir (``flock(2)``: released by the kernel when a process
dies, however it dies) keep them from stepping on each other:

* ``claims.lock``, taken for the few milliseconds of file work of each prepare and unprepare
  (re-read the checkpoint, check, write the CDI spec and the checkpoint): the two daemons then
  see each other's claims and never write the checkpoint over each other. Never held across an
  API call, so a slow API server cannot stall the other daemon.
* ``publisher.lock``, taken for the daemon's whole life by whichever gets it first: only its
  holder writes ResourceSlices; the other waits (polling every ``POLL`` s, a cheap non-blocking
  ``flock``) and takes over when the first exits. Both compute the same slices from the same
  ``/dev``, so the takeover writes nothing, and the slice (its ``metadata.uid``) stays.

The waits poll with ``LOCK_NB`` instead of blocking: the daemon is one asyncio thread, and a
blocking ``flock`` would stop it serving (and a thread blocked in ``flock`` cannot be cancelled).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os

CLAIMS_LOCK = "claims.lock"
PUBLISHER_LOCK = "publisher.lock"
POLL = 0.5
CLAIMS_WAIT = 30.0


class LockTimeout(Exception):
    """The lock stayed taken by another process for the whole wait."""


class FileLock:
    """An exclusive ``flock`` on one file; the file descriptor stays open for the daemon's life."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self.held = False

    def _open(self) -> int:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits."""
        if self.held:
            return True
        try:
            fcntl.flock(self._open(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        self.held = True
        return True

    async def acquire(self, timeout: float | None = None, poll: float = POLL) -> None:
        """Wait for the lock without blocking the loop: short polls first (a prepare holds it for
        milliseconds), growing to ``poll``; LockTimeout after ``timeout`` s (None: for ever)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = 0.002
        while not self.try_acquire():
            if deadline is not None and loop.time() + delay > deadline:
                raise LockTimeout(f"{self.path} stayed locked by another process for {timeout:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, poll)

    def release(self) -> None:
        if self.held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self.held = False

    def close(self) -> None:
        self.release()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
