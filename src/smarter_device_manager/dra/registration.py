"""Registration with the kubelet's plugin watcher, and the two unix-socket servers of DRA mode.

The kubelet finds DRA drivers by the sockets in its ``plugins_registry`` directory: it calls
``GetInfo`` on ours (type ``DRAPlugin``, our driver name, the endpoint of our DRA service, and
the service versions we serve: ``v1.DRAPlugin``), dials that endpoint, and reports the outcome
with ``NotifyRegistrationStatus``. It does this again after it restarts, without deleting our
socket. So the order is: serve the DRA service first, then create the registration socket.

If either socket is deleted (an admin cleaning up, a kubelet that purges its directories) the
daemon serves it again: ``serve`` is idempotent and ``present`` tells whether our own socket
(by inode, not a stranger's of the same name) is still there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from grpclib.server import Server, Stream

from smarter_device_manager.api import dra as pb
from smarter_device_manager.plugin import remove_socket

log = logging.getLogger(__name__)


class Registration(pb.RegistrationService):
    """Answers the plugin watcher; ``on_status(registered, error)`` gets the kubelet's verdict."""

    __slots__ = ("driver", "endpoint", "on_status")

    def __init__(self, driver: str, endpoint: str, on_status: Callable[[bool, str], None]) -> None:
        self.driver = driver
        self.endpoint = endpoint
        self.on_status = on_status

    async def GetInfo(self, stream: Stream[pb.InfoRequest, pb.PluginInfo]) -> None:
        await stream.recv_message()
        log.debug("GetInfo from the kubelet's plugin watcher")
        await stream.send_message(pb.PluginInfo(type=pb.PLUGIN_TYPE, name=self.driver, endpoint=self.endpoint,
                                                supported_versions=[pb.DRA_V1]))

    async def NotifyRegistrationStatus(
            self, stream: Stream[pb.RegistrationStatus, pb.RegistrationStatusResponse]) -> None:
        status = await stream.recv_message()
        await stream.send_message(pb.RegistrationStatusResponse())
        if status is not None:
            self.on_status(status.plugin_registered, status.error)


class SocketServer:
    """One grpclib server on one unix socket, restartable."""

    def __init__(self, handler: Any, path: str) -> None:
        self.handler = handler
        self.path = path
        self._server: Server | None = None
        self._inode = 0

    def present(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self._inode
        except OSError:
            return False

    async def serve(self) -> None:
        """Serve on the socket (again, if it was deleted); a no-op while ours is there."""
        if self._server is not None and self.present():
            return
        await self.stop()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        remove_socket(self.path)
        server = Server([self.handler])
        await server.start(path=self.path)
        self._server = server
        self._inode = os.stat(self.path).st_ino

    async def stop(self) -> None:
        if self.present():
            remove_socket(self.path)
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()


