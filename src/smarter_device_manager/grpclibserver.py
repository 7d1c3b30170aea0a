"""The grpclib-based unix-socket server DRA mode serves its services on.

DRA mode's services (the DRA plugin service, its health stream and the plugin watcher's
Registration) are defined against grpclib (``api/dra.py``, ``dra/``); device-plugin mode does
not import this module, nor grpclib (it speaks ``grpcwire``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from grpclib.server import Server

from smarter_device_manager.grpcserver import UnixServer


class ClosingServer(Server):
    """grpclib's Server, which on close() also closes the connections it accepted.

    grpclib only cancels the running calls; the kubelet's connection would stay
    open until the kubelet drops it, and a node that withdraws thousands of
    resources (hotplug bursts) would keep thousands of dead connections.
    """

    _shared: ClassVar[tuple[Any, Any] | None] = None  # (grpclib config, h2 config)

    def __init__(self, handlers: list[Any]) -> None:
        super().__init__(handlers)
        # The configurations are the same for every server: share one pair rather
        # than keep two objects per resource.
        if ClosingServer._shared is None:
            ClosingServer._shared = (self._config, self._h2_config)
        self._config, self._h2_config = ClosingServer._shared
        self._protocols: set[Any] = set()

    def _protocol_factory(self) -> Any:
        # Forget connections that are already closed (a plain set, not a WeakSet
        # or a callback per connection: both cost memory on every resource).
        self._protocols = {p for p in self._protocols if not _closed(p)}
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return protocol

    def close(self) -> None:
        super().close()
        for protocol in list(self._protocols):
            connection = getattr(protocol, "connection", None)
            if connection is not None:
                connection.close()


def _closed(protocol: Any) -> bool:
    connection = getattr(protocol, "connection", None)
    return connection is not None and bool(connection.is_closing())


class GrpclibServer(UnixServer):
    """A :class:`UnixServer` on grpclib (``handler``: a grpclib handler or a list of them)."""

    __slots__ = ()

    def _new_server(self) -> ClosingServer:
        return ClosingServer(self.handler if isinstance(self.handler, list) else [self.handler])
