"""The two gRPC services of the device-plugin API, bound to our message classes.

What a protoc plugin would generate (method paths, request and reply types), written out
because the messages are ours (see messages.py) and the wire is ours (``grpcwire``).
``tests/test_api.py`` checks the paths and types against protoc's descriptor of
``deviceplugin.proto``.
"""

from __future__ import annotations

from typing import Any

from smarter_device_manager.api import messages as pb
from smarter_device_manager.grpcwire import Channel

_BASE = "/v1beta1.DevicePlugin/"
# path -> (handler method, request type, reply type, server-streaming?)
METHODS: dict[str, tuple[str, type[pb.Message], type[pb.Message], bool]] = {
    _BASE + "GetDevicePluginOptions": ("GetDevicePluginOptions", pb.Empty, pb.DevicePluginOptions,
                                       False),
    _BASE + "ListAndWatch": ("ListAndWatch", pb.Empty, pb.ListAndWatchResponse, True),
    _BASE + "GetPreferredAllocation": ("GetPreferredAllocation", pb.PreferredAllocationRequest,
                                       pb.PreferredAllocationResponse, False),
    _BASE + "Allocate": ("Allocate", pb.AllocateRequest, pb.AllocateResponse, False),
    _BASE + "PreStartContainer": ("PreStartContainer", pb.PreStartContainerRequest,
                                  pb.PreStartContainerResponse, False),
}
# What grpcwire.Server dispatches on (shared by every plugin's server): path -> (method, request).
SERVER_METHODS = {path: (name, request) for path, (name, request, _, _) in METHODS.items()}


class DevicePluginService:
    """Base of a plugin: subclasses define the five async handlers, each given a
    ``grpcwire.Call``."""

    __slots__ = ()

    async def GetDevicePluginOptions(self, stream: Any) -> None:
        raise NotImplementedError

    async def ListAndWatch(self, stream: Any) -> None:
        raise NotImplementedError

    async def GetPreferredAllocation(self, stream: Any) -> None:
        raise NotImplementedError

    async def Allocate(self, stream: Any) -> None:
        raise NotImplementedError

    async def PreStartContainer(self, stream: Any) -> None:
        raise NotImplementedError


REGISTER_PATH = "/v1beta1.Registration/Register"


async def register(channel: Channel, request: pb.RegisterRequest) -> pb.Empty:
    """The kubelet's ``Registration.Register`` on ``channel``."""
    reply: pb.Empty = await channel.unary(REGISTER_PATH, request, pb.Empty)
    return reply
