"""Per-connection memory trims for the pinned grpclib 0.4.9 / h2 4.4 / hpack 4.2.

Why: the kubelet holds one HTTP/2 connection per resource open for ever (its
ListAndWatch stream). With the libraries as they are, each connection keeps
about 55 KB of Python objects, so 1,000 devices cost ~50 MiB more than 20.
Measured (bench/run.py, 1,000 resources): 76 MiB before, about 50 MiB after.
Nothing here changes behaviour on the wire; the whole end-to-end suite runs
the daemon with these installed.

* grpclib keeps every finished stream's task (with its stream, buffer, queue
  and events) until ten more streams arrive on that connection: two dead
  unary calls per kubelet connection, for ever. We forget a task when it ends.
* h2 keeps each HTTP/2 setting's value history in a ``collections.deque``
  (760 B each, a dozen per connection), hpack its header tables likewise, and
  grpclib makes asyncio Events/Queues (each with deques) per stream. A list
  with ``popleft``/``appendleft`` does the same job in 56 B; these queues hold
  zero to two items, so ``list.pop(0)`` costs nothing.
* h2 drops closed streams from its table only when ``open_inbound_streams`` is
  read; we read it when grpclib releases a stream.
* grpclib's event dispatcher builds a dict of 13 bound methods per connection,
  and h2's frame dispatcher one of 12; ours share one table of method names.

These touch private internals, which is why the versions are pinned exactly
(pyproject.toml, constraints.txt) and ``tests/test_lowmem.py`` fails if a
dependency upgrade makes any patch stop applying.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpclib.protocol as grpclib_protocol
import grpclib.server as grpclib_server
import h2.connection as h2_connection
import h2.settings as h2_settings
import hpack.table as hpack_table


class SmallList(list):  # type: ignore[type-arg]
    """A list that answers deque's ``popleft``/``appendleft`` (56 B, not 760 B)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class SmallEvent(asyncio.Event):
    """asyncio.Event with a list of waiters: set() iterates, wait() appends and removes."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters = SmallList()  # type: ignore[assignment]


class SmallQueue(asyncio.Queue):  # type: ignore[type-arg]
    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self._getters = SmallList()
        self._putters = SmallList()
        self._queue = SmallList()
        self._finished = SmallEvent()
        self._finished.set()


class _Settings:
    """Stands in for the ``collections`` module inside h2.settings (it only uses deque)."""

    deque = SmallList


class ForgetfulHandler(grpclib_server.Handler):
    """grpclib's per-connection handler, forgetting each stream's task once it ends."""

    def accept(self, stream: Any, headers: Any, release_stream: Callable[[], Any]) -> None:
        super().accept(stream, headers, release_stream)
        # self._tasks, not a local: grpclib's periodic collection rebinds the dict.
        self._tasks[stream].add_done_callback(
            lambda task: self._tasks.get(stream) is task and self._tasks.pop(stream))

    def cancel(self, stream: Any) -> None:
        task = self._tasks.pop(stream, None)
        if task is not None:
            task.cancel()
            self._cancelled.add(task)


_DISPATCH: dict[type, str] = {}  # h2 event class -> EventsProcessor method name, shared


class LeanEventsProcessor(grpclib_protocol.EventsProcessor):
    """grpclib's per-connection event dispatcher without 13 bound methods per connection,
    purging h2's closed streams as grpclib releases them."""

    def __init__(self, handler: Any, connection: Any) -> None:
        super().__init__(handler, connection)
        if not _DISPATCH:
            _DISPATCH.update((cls, m.__name__) for cls, m in self.processors.items())
        del self.processors
        self._open = True

    def process(self, event: Any) -> None:
        if not self._open:
            return  # as grpclib: events after close are dropped
        name = _DISPATCH.get(event.__class__)
        if name is None:
            raise NotImplementedError(event)
        getattr(self, name)(event)

    def close(self, reason: str = "Connection closed") -> None:
        super().close(reason)
        self._open = False

    def register(self, stream: Any) -> Callable[[], None]:
        release = super().register(stream)
        h2_connection = self.connection._connection

        def release_stream() -> None:
            release()
            _ = h2_connection.open_inbound_streams  # a property that purges closed streams

        return release_stream


_FRAME_METHODS: dict[type, str] = {}  # h2 frame class -> H2Connection method name, shared


class _FrameDispatch:
    """Looks the handler up by name when a frame arrives, instead of holding 12 bound
    methods per connection. h2 only ever indexes it; grpclib deletes it on close."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def __getitem__(self, frame_class: type) -> Callable[[Any], Any]:
        method: Callable[[Any], Any] = getattr(self._connection, _FRAME_METHODS[frame_class])
        return method


class LeanH2Connection(h2_connection.H2Connection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        table = self._frame_dispatch_table
        if not _FRAME_METHODS:
            _FRAME_METHODS.update((cls, m.__name__) for cls, m in table.items())
        self._frame_dispatch_table = _FrameDispatch(self)  # type: ignore[assignment]


def _patch(owner: object, name: str, value: object) -> None:
    if not hasattr(owner, name):  # a dependency changed under us: fail loudly, not silently
        raise RuntimeError(f"lowmem: {owner!r} has no attribute {name!r}; re-check the pins")
    setattr(owner, name, value)


def install() -> None:
    """Apply the trims; call once, before any server or channel exists."""
    _patch(grpclib_server, "Handler", ForgetfulHandler)  # looked up per connection by Server
    _patch(grpclib_protocol, "Event", SmallEvent)
    _patch(grpclib_protocol, "Queue", SmallQueue)
    _patch(grpclib_protocol, "deque", SmallList)
    _patch(grpclib_protocol, "EventsProcessor", LeanEventsProcessor)
    _patch(grpclib_protocol, "H2Connection", LeanH2Connection)
    _patch(h2_settings, "collections", _Settings)
    _patch(hpack_table, "deque", SmallList)
