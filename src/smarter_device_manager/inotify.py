"""A minimal inotify binding over libc with ctypes.

Why not ``inotify_simple`` or ``asyncinotify``: both import ``ctypes.util``
(which pulls in ``subprocess``, ``tempfile`` and ``random``) and cost 1.3 MiB of
RSS here against 0.4 MiB for this file, on a daemon whose whole budget is 24 MiB
(numbers in docs/decisions.md). The two libc calls are stable ABI, so this
stays small: no policy here, just the syscalls and event parsing. (Watches are
never removed by hand: the kernel drops a watch when its directory goes, and
the daemon keeps one inotify instance for its whole life.)
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

# Only what watch.py asks for or reads back.
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Event:
    wd: int
    mask: int
    cookie: int
    name: str


class Inotify:
    """One inotify instance; ``fileno()`` is non-blocking, for an event loop reader."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            _raise("inotify_init1")
        self.fd: int = fd

    def fileno(self) -> int:
        return self.fd

    def add_watch(self, path: str, mask: int) -> int:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            _raise("inotify_add_watch", path)
        return int(wd)

    def read(self) -> list[Event]:
        """Every event queued now; empty when there is none."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            offset = 0
            while offset < len(data):
                wd, mask, cookie, size = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = os.fsdecode(data[offset:offset + size].rstrip(b"\0"))
                offset += size
                events.append(Event(wd, mask, cookie, name))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _raise(call: str, path: str | None = None) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{call}: {os.strerror(code)}", path)
