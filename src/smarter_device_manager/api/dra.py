"""The kubelet's DRA v1 node service and plugin-registration messages, on the shared codec.

Why the hand codec here too: DRA mode's budget is 40 MiB with the API client and ``ssl`` loaded,
and the protobuf runtime would cost 3.6 MiB (upb) to 5.0 MiB (pure Python, what 32-bit ARM
gets) for eleven small messages. ``messages.py`` already has everything but ``map<string,
Message>`` and ``optional``, which were added there (tested once for both modes).

The schemas are ``dra.proto``, ``pluginregistration.proto`` and ``drahealth_v1alpha1.proto`` /
``drahealth_v1.proto`` (the same messages under two packages) next to this file;
``tests/test_api_dra.py`` checks every class against protoc's descriptors (names, numbers, types,
labels, service paths) and round-trips random messages with the real protobuf runtime. Only DRA
mode imports this module.
"""

from __future__ import annotations

from typing import Any

from grpclib.const import Cardinality, Handler

from smarter_device_manager.api.messages import BOOL, INT, MAP, MESSAGE, STRING, Field, Message

DRA_SERVICE = "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
REGISTRATION_SERVICE = "pluginregistration.Registration"
# What GetInfo lists as supported_versions: the kubelet's name for the v1 DRAPlugin service.
DRA_V1 = "v1.DRAPlugin"
PLUGIN_TYPE = "DRAPlugin"
# The kubelet's health service (ResourceHealthStatus): 1.36 calls v1alpha1 whatever GetInfo says;
# 1.37 calls the newest one GetInfo lists. Same messages in both; the gRPC service name is also
# what GetInfo lists.
HEALTH_SERVICES = ("v1alpha1.DRAResourceHealth", "v1.DRAResourceHealth")
UNKNOWN, HEALTHY, UNHEALTHY = range(3)  # enum HealthStatus


class Claim(Message):
    namespace: str
    uid: str
    name: str
    FIELDS = (Field(1, "namespace", STRING), Field(2, "uid", STRING), Field(3, "name", STRING))


class Device(Message):
    request_names: list[str]
    pool_name: str
    device_name: str
    cdi_device_ids: list[str]
    share_id: str | None
    FIELDS = (Field(1, "request_names", STRING, repeated=True), Field(2, "pool_name", STRING),
              Field(3, "device_name", STRING), Field(4, "cdi_device_ids", STRING, repeated=True),
              Field(5, "share_id", STRING, optional=True))


class NodePrepareResourcesRequest(Message):
    claims: list[Claim]
    FIELDS = (Field(1, "claims", MESSAGE, repeated=True, message=Claim),)


class NodePrepareResourceResponse(Message):
    devices: list[Device]
    error: str
    FIELDS = (Field(1, "devices", MESSAGE, repeated=True, message=Device), Field(2, "error", STRING))


class NodePrepareResourcesResponse(Message):
    claims: dict[str, NodePrepareResourceResponse]
    FIELDS = (Field(1, "claims", MAP, message=NodePrepareResourceResponse),)


class NodeUnprepareResourcesRequest(Message):
    claims: list[Claim]
    FIELDS = (Field(1, "claims", MESSAGE, repeated=True, message=Claim),)


class NodeUnprepareResourceResponse(Message):
    error: str
    FIELDS = (Field(1, "error", STRING),)


class NodeUnprepareResourcesResponse(Message):
    claims: dict[str, NodeUnprepareResourceResponse]
    FIELDS = (Field(1, "claims", MAP, message=NodeUnprepareResourceResponse),)


DRA_MESSAGES: tuple[type[Message], ...] = (
    Claim, Device, NodePrepareResourcesRequest, NodePrepareResourceResponse,
    NodePrepareResourcesResponse, NodeUnprepareResourcesRequest, NodeUnprepareResourceResponse,
    NodeUnprepareResourcesResponse,
)


class PluginInfo(Message):
    type: str
    name: str
    endpoint: str
    supported_versions: list[str]
    FIELDS = (Field(1, "type", STRING), Field(2, "name", STRING), Field(3, "endpoint", STRING),
              Field(4, "supported_versions", STRING, repeated=True))


class RegistrationStatus(Message):
    plugin_registered: bool
    error: str
    FIELDS = (Field(1, "plugin_registered", BOOL), Field(2, "error", STRING))


class RegistrationStatusResponse(Message):
    pass


class InfoRequest(Message):
    pass


REGISTRATION_MESSAGES: tuple[type[Message], ...] = (
    PluginInfo, RegistrationStatus, RegistrationStatusResponse, InfoRequest,
)


class NodeWatchResourcesRequest(Message):
    pass


class DeviceIdentifier(Message):
    pool_name: str
    device_name: str
    FIELDS = (Field(1, "pool_name", STRING), Field(2, "device_name", STRING))


class DeviceHealth(Message):
    device: DeviceIdentifier | None
    health: int
    last_updated_time: int
    health_check_timeout_seconds: int
    message: str
    FIELDS = (Field(1, "device", MESSAGE, message=DeviceIdentifier), Field(2, "health", INT),
              Field(3, "last_updated_time", INT), Field(4, "health_check_timeout_seconds", INT),
              Field(5, "message", STRING))


class NodeWatchResourcesResponse(Message):
    devices: list[DeviceHealth]
    FIELDS = (Field(1, "devices", MESSAGE, repeated=True, message=DeviceHealth),)


HEALTH_MESSAGES: tuple[type[Message], ...] = (
    NodeWatchResourcesRequest, DeviceIdentifier, DeviceHealth, NodeWatchResourcesResponse,
)


class DRAPluginService:
    """Base of the DRA node service: a subclass defines the two async handlers.

    What grpclib's protoc plugin would generate, written out because the messages are ours.
    """

    __slots__ = ()

    async def NodePrepareResources(self, stream: Any) -> None:
        raise NotImplementedError

    async def NodeUnprepareResources(self, stream: Any) -> None:
        raise NotImplementedError

    def __mapping__(self) -> dict[str, Handler]:
        base = f"/{DRA_SERVICE}/"
        return {
            base + "NodePrepareResources": Handler(
                self.NodePrepareResources, Cardinality.UNARY_UNARY, NodePrepareResourcesRequest,
                NodePrepareResourcesResponse),
            base + "NodeUnprepareResources": Handler(
                self.NodeUnprepareResources, Cardinality.UNARY_UNARY, NodeUnprepareResourcesRequest,
                NodeUnprepareResourcesResponse),
        }


class RegistrationService:
    """Base of the plugin-watcher service the kubelet calls on our registration socket."""

    __slots__ = ()

    async def GetInfo(self, stream: Any) -> None:
        raise NotImplementedError

    async def NotifyRegistrationStatus(self, stream: Any) -> None:
        raise NotImplementedError

    def __mapping__(self) -> dict[str, Handler]:
        base = f"/{REGISTRATION_SERVICE}/"
        return {
            base + "GetInfo": Handler(self.GetInfo, Cardinality.UNARY_UNARY, InfoRequest, PluginInfo),
            base + "NotifyRegistrationStatus": Handler(
                self.NotifyRegistrationStatus, Cardinality.UNARY_UNARY, RegistrationStatus,
                RegistrationStatusResponse),
        }


class DRAResourceHealthService:
    """Base of the health service: one handler answering under both service names."""

    __slots__ = ()

    async def NodeWatchResources(self, stream: Any) -> None:
        raise NotImplementedError

    def __mapping__(self) -> dict[str, Handler]:
        return {f"/{service}/NodeWatchResources": Handler(
            self.NodeWatchResources, Cardinality.UNARY_STREAM, NodeWatchResourcesRequest,
            NodeWatchResourcesResponse) for service in HEALTH_SERVICES}
