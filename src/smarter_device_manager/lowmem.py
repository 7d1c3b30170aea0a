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

These touch private internals. The exact versions they were written against
are pinned in pyproject.toml's ``dependencies`` (so a plain ``pip install .``
gets them), and each trim still checks its target before replacing it: that it
is the class or object it was written against, with the methods, signatures
and attributes the trim relies on, not merely a name that exists. A target that
is missing or has changed is left alone, with one warning naming it: the
daemon then uses more memory per connection, but it starts and works.
``install()`` never raises. ``tests/test_lowmem.py`` checks that every trim
applies to the pinned versions and that a changed target is skipped.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class SmallList(list):  # type: ignore[type-arg]
    """A list that answers deque's ``popleft``/``appendleft`` (56 B, not 760 B)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


# What a deque has and a list has not: a library calling any of these but the two
# SmallList provides has changed in a way SmallList cannot stand in for.
_DEQUE_ONLY = frozenset(set(dir(collections.deque)) - set(dir(list)))
_SMALL_LIST_EXTRAS = frozenset({"popleft", "appendleft"})


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


class _Collections:
    """Stands in for the ``collections`` module inside h2.settings: ``deque`` is a
    SmallList, anything else is the real module's."""

    deque = SmallList

    def __getattr__(self, name: str) -> Any:
        return getattr(collections, name)


_DISPATCH: dict[type, str] = {}  # h2 event class -> EventsProcessor method name, shared
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


# --- the replacements, built on the class found at run time once it passed its checks ----
# (Built in functions rather than at import: a base class missing from a future release
# must cost that one trim, not the import of this module.)

def _forgetful_handler(base: Any) -> Any:
    class ForgetfulHandler(base):  # type: ignore[misc]
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

    return ForgetfulHandler


def _lean_events_processor(base: Any) -> Any:
    class LeanEventsProcessor(base):  # type: ignore[misc]
        """grpclib's per-connection event dispatcher without 13 bound methods per
        connection, purging h2's closed streams as grpclib releases them."""

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

    return LeanEventsProcessor


def _lean_h2_connection(base: Any) -> Any:
    class LeanH2Connection(base):  # type: ignore[misc]
        _frame_dispatch_table: Any

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            table = self._frame_dispatch_table
            if not _FRAME_METHODS:
                _FRAME_METHODS.update((cls, m.__name__) for cls, m in table.items())
            self._frame_dispatch_table = _FrameDispatch(self)

    return LeanH2Connection


# --- what each trim expects of its target -------------------------------------------------

class _Changed(Exception):
    """The target is not what the trim was written against; the message says how."""


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise _Changed(f"module {name} cannot be imported ({exc})") from None


def _attr(owner: Any, name: str) -> Any:
    try:
        return getattr(owner, name)
    except AttributeError:
        raise _Changed(f"{getattr(owner, '__name__', owner)} has no {name!r}") from None


def _is(value: object, expected: object, what: str) -> None:
    if value is not expected:
        raise _Changed(f"it is {value!r}, not {what}")


def _class(value: object, base: type | None = None) -> type:
    if not isinstance(value, type):
        raise _Changed(f"it is {type(value).__name__} {value!r}, not a class")
    if base is not None and not issubclass(value, base):
        raise _Changed(f"{value.__name__} is no longer a subclass of {base.__name__}")
    return value


def _signature(cls: type, method: str, *parameters: str) -> None:
    function = _attr(cls, method)
    try:
        actual = tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        raise _Changed(f"{cls.__name__}.{method} has no signature to check") from None
    if actual != parameters:
        raise _Changed(f"{cls.__name__}.{method}{_shown(actual)} has changed; "
                       f"written against {cls.__name__}.{method}{_shown(parameters)}")


def _shown(parameters: tuple[str, ...]) -> str:
    return "(" + ", ".join(parameters) + ")"


def _names(function: object) -> frozenset[str]:
    """Attribute and global names a function's code refers to."""
    code = getattr(function, "__code__", None)
    if code is None:
        raise _Changed(f"{function!r} is not a plain Python function")
    return frozenset(code.co_names)


def _uses(cls: type, method: str, *names: str) -> None:
    missing = set(names) - _names(_attr(cls, method))
    if missing:
        raise _Changed(f"{cls.__name__}.{method} no longer uses {', '.join(sorted(missing))}")


def _deque_calls_fit_small_list(cls: type) -> None:
    """A SmallList stands in for the deques of ``cls`` only if it calls no deque-only method
    SmallList lacks (rotate, maxlen, extendleft, ...)."""
    for name, function in vars(cls).items():
        code = getattr(function, "__code__", None)
        if code is None:
            continue
        extra = (set(code.co_names) & _DEQUE_ONLY) - _SMALL_LIST_EXTRAS
        if extra:
            raise _Changed(f"{cls.__name__}.{name} uses deque's {', '.join(sorted(extra))}")


def _check_handler(target: Any) -> None:
    protocol = _module("grpclib.protocol")
    cls = _class(target, _attr(protocol, "AbstractHandler"))
    _signature(cls, "__init__", "self", "mapping", "codec", "status_details_codec", "dispatch")
    _signature(cls, "accept", "self", "stream", "headers", "release_stream")
    _signature(cls, "cancel", "self", "stream")
    _uses(cls, "accept", "_tasks")
    _uses(cls, "cancel", "_tasks", "_cancelled")
    # The server must still look the class up by this name for each connection.
    _uses(_attr(_module("grpclib.server"), "Server"), "_protocol_factory", "Handler")


def _check_events_processor(target: Any) -> None:
    cls = _class(target)
    _signature(cls, "__init__", "self", "handler", "connection")
    _signature(cls, "process", "self", "event")
    _signature(cls, "register", "self", "stream")
    _signature(cls, "close", "self", "reason")
    _uses(cls, "__init__", "processors")
    _uses(cls, "process", "processors")
    protocol = _module("grpclib.protocol")
    _uses(_attr(protocol, "Connection"), "__init__", "_connection")
    _uses(_attr(protocol, "H2Protocol"), "connection_made", "EventsProcessor")
    h2_connection = _attr(_module("h2.connection"), "H2Connection")
    if not isinstance(vars(h2_connection).get("open_inbound_streams"), property):
        raise _Changed("h2's H2Connection.open_inbound_streams is no longer a property")


def _check_h2_connection(target: Any) -> None:
    h2_connection = _attr(_module("h2.connection"), "H2Connection")
    _is(target, h2_connection, "h2.connection.H2Connection")
    _signature(target, "__init__", "self", "config")
    _uses(target, "__init__", "_frame_dispatch_table")
    _uses(target, "_receive_frame", "_frame_dispatch_table")
    _uses(_attr(_module("grpclib.protocol"), "H2Protocol"), "connection_made", "H2Connection")


def _check_protocol_deque(target: Any) -> None:
    _is(target, collections.deque, "collections.deque")
    _deque_calls_fit_small_list(_attr(_module("grpclib.protocol"), "Buffer"))


def _check_settings_collections(target: Any) -> None:
    _is(target, collections, "the collections module")
    _deque_calls_fit_small_list(_attr(_module("h2.settings"), "Settings"))


def _check_hpack_deque(target: Any) -> None:
    _is(target, collections.deque, "collections.deque")
    _deque_calls_fit_small_list(_attr(_module("hpack.table"), "HeaderTable"))


class Trim(NamedTuple):
    """Replace ``module.attribute`` by ``build(current)`` if ``check(current)`` passes.
    (A NamedTuple, not a dataclass: a dataclass's generated methods cost 9 KB more.)"""

    module: str
    attribute: str
    what: str
    check: Callable[[Any], None]
    build: Callable[[Any], object]

    @property
    def target(self) -> str:
        return f"{self.module}.{self.attribute}"


TRIMS = (
    Trim("grpclib.server", "Handler", "forget finished streams' tasks",
         _check_handler, _forgetful_handler),
    Trim("grpclib.protocol", "Event", "list-backed asyncio Events per stream",
         lambda target: _is(target, asyncio.Event, "asyncio.Event"), lambda _: SmallEvent),
    Trim("grpclib.protocol", "Queue", "list-backed asyncio Queues per stream",
         lambda target: _is(target, asyncio.Queue, "asyncio.Queue"), lambda _: SmallQueue),
    Trim("grpclib.protocol", "deque", "list-backed read buffers",
         _check_protocol_deque, lambda _: SmallList),
    Trim("grpclib.protocol", "EventsProcessor", "shared event dispatch table",
         _check_events_processor, _lean_events_processor),
    Trim("grpclib.protocol", "H2Connection", "shared frame dispatch table",
         _check_h2_connection, _lean_h2_connection),
    Trim("h2.settings", "collections", "list-backed HTTP/2 settings histories",
         _check_settings_collections, lambda _: _Collections()),
    Trim("hpack.table", "deque", "list-backed header tables",
         _check_hpack_deque, lambda _: SmallList),
)


def apply(trim: Trim) -> str | None:
    """Apply one trim; return why it was not applied, or None."""
    try:
        owner = _module(trim.module)
        current = _attr(owner, trim.attribute)
        trim.check(current)
        replacement = trim.build(current)
    except _Changed as exc:
        return str(exc)
    except Exception as exc:  # a check tripping over an unforeseen shape: same outcome
        return f"checking it failed: {type(exc).__name__}: {exc}"
    setattr(owner, trim.attribute, replacement)
    return None


def install() -> list[str]:
    """Apply every trim whose target is as expected; call once, before any server or
    channel exists. Returns the targets left alone (each also logged once). Never raises."""
    skipped = []
    for trim in TRIMS:
        problem = apply(trim)
        if problem is not None:
            skipped.append(trim.target)
            log.warning("memory trim of %s (%s) not applied: %s; running without it, which "
                        "costs memory per kubelet connection (the tested versions are pinned "
                        "in pyproject.toml)", trim.target, trim.what, problem)
    return skipped
