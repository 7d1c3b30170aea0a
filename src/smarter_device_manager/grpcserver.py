"""gRPC over a unix socket: the restartable server both modes host their services on.

Device-plugin mode serves one DevicePlugin per resource on its own socket (``grpcwire``, the
lean HTTP/2 of that mode), DRA mode its DRA service with the health service on one socket (the
kubelet dials one endpoint for both) and the plugin watcher's Registration service on another
(grpclib: ``grpclibserver.GrpclibServer``, which device-plugin mode never imports). What they share: the
socket is ours only while its inode is the one we created (a stranger's file of the same name,
or one the kubelet recreated, is not), anything at the path that is not a socket is never
removed, and closing a server closes the connections it accepted.
"""

from __future__ import annotations

import os
import stat
from typing import Any


class UnixServer:
    """A server hosting ``handler`` on the unix socket ``socket_path``, restartable.

    ``_new_server`` makes the server proper (anything with ``start(path=)``, ``close()`` and
    ``wait_closed()``): grpclib's for DRA mode (``grpclibserver.GrpclibServer``), ``grpcwire``'s for
    device-plugin mode (``deviceplugin.plugin.PluginServer``). ``handler`` may be a list of
    handlers served together on the one socket. A list rather than a second attribute:
    device-plugin mode keeps one server per resource, and a slot costs on each of them.
    """

    __slots__ = ("_inode", "_server", "handler", "socket_path")

    def __init__(self, handler: Any, socket_path: str) -> None:
        self.handler = handler
        self.socket_path = socket_path
        self._server: Any = None
        self._inode = 0

    def _new_server(self) -> Any:
        raise NotImplementedError

    def present(self) -> bool:
        """Is our socket file (not a stranger's with the same name) still there?"""
        try:
            return os.stat(self.socket_path).st_ino == self._inode
        except OSError:
            return False

    async def start(self) -> None:
        """Serve on a fresh socket (whatever socket was at the path is replaced)."""
        remove_socket(self.socket_path)
        server = self._new_server()
        await server.start(path=self.socket_path)
        self._server = server
        self._inode = os.stat(self.socket_path).st_ino

    async def serve(self) -> None:
        """Serve on the socket (again, if it was deleted); a no-op while ours is there."""
        if self._server is not None and self.present():
            return
        await self.stop()
        os.makedirs(os.path.dirname(self.socket_path), exist_ok=True)
        await self.start()

    def remove_own_socket(self) -> None:
        if self.present():
            remove_socket(self.socket_path)

    async def close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def stop(self) -> None:
        self.remove_own_socket()
        await self.close_server()


def remove_socket(path: str) -> None:
    """Remove our socket file at ``path``; anything that is not a socket there is left alone."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
