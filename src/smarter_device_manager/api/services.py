"""The two gRPC services of the API, bound to our message classes for grpclib.

What grpclib's protoc plugin would generate (method paths, cardinality,
request and reply types), written out because the messages are ours
(see messages.py). ``tests/test_api.py`` checks the paths against protoc's
descriptor of ``deviceplugin.proto``.
"""

from __future__ import annotations

from typing import Any

from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Cardinality, Handler

from smarter_device_manager.api import messages as pb

_UNARY = Cardinality.UNARY_UNARY


class DevicePluginService:
    """Base of a plugin: subclasses define the five async handlers."""

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

    def __mapping__(self) -> dict[str, Handler]:
        base = "/v1beta1.DevicePlugin/"
        return {
            base + "GetDevicePluginOptions": Handler(
                self.GetDevicePluginOptions, _UNARY, pb.Empty, pb.DevicePluginOptions),
            base + "ListAndWatch": Handler(
                self.ListAndWatch, Cardinality.UNARY_STREAM, pb.Empty, pb.ListAndWatchResponse),
            base + "GetPreferredAllocation": Handler(
                self.GetPreferredAllocation, _UNARY, pb.PreferredAllocationRequest,
                pb.PreferredAllocationResponse),
            base + "Allocate": Handler(self.Allocate, _UNARY, pb.AllocateRequest, pb.AllocateResponse),
            base + "PreStartContainer": Handler(
                self.PreStartContainer, _UNARY, pb.PreStartContainerRequest,
                pb.PreStartContainerResponse),
        }


REGISTER_PATH = "/v1beta1.Registration/Register"


def register_method(channel: Channel) -> UnaryUnaryMethod[pb.RegisterRequest, pb.Empty]:
    """The kubelet's ``Registration.Register`` on ``channel``."""
    return UnaryUnaryMethod(channel, REGISTER_PATH, pb.RegisterRequest, pb.Empty)
