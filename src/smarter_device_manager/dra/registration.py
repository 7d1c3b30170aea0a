"""Registration with the kubelet's plugin watcher.

Served, like the DRA service, on a ``grpclibserver.GrpclibServer``.

The kubelet finds DRA drivers by the sockets in its ``plugins_registry`` directory: it calls
``GetInfo`` on ours (type ``DRAPlugin``, our driver name, the endpoint of our DRA service, and
the service versions we serve: ``v1.DRAPlugin``, and the health service under both its names,
which 1.37 reads to choose one), dials that endpoint, and reports the outcome
with ``NotifyRegistrationStatus``. It does this again after it restarts, without deleting our
socket. So the order is: serve the DRA service first, then create the registration socket.

If either socket is deleted (an admin cleaning up, a kubelet that purges its directories) the
daemon serves it again: ``UnixServer.serve`` is idempotent and ``present`` tells whether our own socket
(by inode, not a stranger's of the same name) is still there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from grpclib.server import Stream

from smarter_device_manager.api import dra as pb

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
                                                supported_versions=[pb.DRA_V1, *pb.HEALTH_SERVICES]))

    async def NotifyRegistrationStatus(
            self, stream: Stream[pb.RegistrationStatus, pb.RegistrationStatusResponse]) -> None:
        status = await stream.recv_message()
        await stream.send_message(pb.RegistrationStatusResponse())
        if status is not None:
            self.on_status(status.plugin_registered, status.error)
