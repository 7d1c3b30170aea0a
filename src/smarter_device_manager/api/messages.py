"""The kubelet device plugin API (v1beta1) messages, with their proto3 wire codec.

Why not the ``protobuf`` runtime: loading the generated module costs 3.3 MiB
of RSS with its C backend and 5.0 MiB with the pure-Python one, which is what
32-bit ARM boards get (PyPI has no armv7/armv6 wheel), against a 24 MiB budget
for the whole daemon. This API needs strings, bools, varint integers, nested
and repeated messages and ``map<string, string>``: a small, complete codec.
DRA mode adds ``map<string, Message>`` and proto3 ``optional`` strings
(``api/dra.py``); they live here so there is one codec, tested once.

The schema is ``deviceplugin.proto`` next to this file, the single source of
truth. ``tests/test_api.py`` checks every class here against the descriptor
protoc builds from that file (names, numbers, types, labels), and encodes and
decodes random messages both ways against the real protobuf runtime, byte for
byte. The kubelet stand-in of the end-to-end tests speaks real protobuf.

Classes expose ``SerializeToString``/``FromString``, which is all grpclib's
codec asks of a message.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

STRING, BOOL, INT, MESSAGE, MAP = range(5)

M = TypeVar("M", bound="Message")


def _put_varint(value: int, out: bytearray) -> None:
    if value < 0:
        value += 1 << 64  # proto3 int32/int64: two's complement in ten bytes
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _get_varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def _put_bytes(tag: int, payload: bytes, out: bytearray) -> None:
    _put_varint(tag, out)
    _put_varint(len(payload), out)
    out += payload


class Field:
    """One field of the schema: number, attribute name, kind, and what it holds."""

    __slots__ = ("kind", "message", "name", "number", "optional", "repeated")

    def __init__(self, number: int, name: str, kind: int, repeated: bool = False,
                 message: type[Message] | None = None, optional: bool = False) -> None:
        self.number = number
        self.name = name
        self.kind = kind
        self.repeated = repeated
        self.message = message  # for MAP: the value type of map<string, Message>, else strings
        self.optional = optional  # proto3 ``optional``: None when unset, sent when set (even "")

    def default(self) -> Any:
        if self.kind == MAP:
            return {}
        if self.repeated:
            return []
        if self.optional:
            return None
        return {STRING: "", BOOL: False, INT: 0, MESSAGE: None}[self.kind]


class Message:
    """Base of every message: keyword construction, equality, proto3 encoding."""

    FIELDS: ClassVar[tuple[Field, ...]] = ()
    _BY_NUMBER: ClassVar[dict[int, Field]] = {}

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._BY_NUMBER = {f.number: f for f in cls.FIELDS}

    def __init__(self, **values: Any) -> None:
        for field in self.FIELDS:
            if field.name in values:
                value = values.pop(field.name)
                if field.kind == MAP:
                    value = dict(value)
                elif field.repeated:
                    value = list(value)
            else:
                value = field.default()
            setattr(self, field.name, value)
        if values:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(values)}")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, f.name) == getattr(other, f.name) for f in self.FIELDS)

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self.FIELDS)
        return f"{type(self).__name__}({shown})"

    def SerializeToString(self) -> bytes:
        out = bytearray()
        for field in self.FIELDS:
            value = getattr(self, field.name)
            tag = field.number << 3
            if field.kind == MAP:
                for key, item in value.items():
                    entry = bytearray()
                    _put_bytes(0x0A, key.encode(), entry)
                    payload = item.encode() if field.message is None else item.SerializeToString()
                    _put_bytes(0x12, payload, entry)
                    _put_bytes(tag | 2, bytes(entry), out)
                continue
            if field.optional and value is None:
                continue
            for item in value if field.repeated else (value,):
                if field.kind == STRING:
                    if item or field.repeated or field.optional:
                        _put_bytes(tag | 2, item.encode(), out)
                elif field.kind == MESSAGE:
                    if item is not None:
                        _put_bytes(tag | 2, item.SerializeToString(), out)
                elif item or field.repeated:  # bool, int: varint; proto3 omits zero
                    _put_varint(tag, out)
                    _put_varint(int(item), out)
        return bytes(out)

    @classmethod
    def FromString(cls: type[M], data: bytes) -> M:
        message = cls()
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            key, pos = _get_varint(view, pos)
            number, wire = key >> 3, key & 7
            raw: Any
            if wire == 0:
                raw, pos = _get_varint(view, pos)
            elif wire == 2:
                size, pos = _get_varint(view, pos)
                if pos + size > end:
                    raise ValueError("truncated field")
                raw, pos = bytes(view[pos:pos + size]), pos + size
            elif wire in (1, 5):
                raw, pos = None, pos + (8 if wire == 1 else 4)  # no such field here: skip
            else:
                raise ValueError(f"unsupported wire type {wire}")
            field = cls._BY_NUMBER.get(number)
            if field is None or raw is None or (wire == 0) != (field.kind in (BOOL, INT)):
                continue  # unknown field or unexpected wire type: skipped, as protobuf does
            message._take(field, raw)
        if pos != end:
            raise ValueError("truncated message")
        return message

    def _take(self, field: Field, raw: Any) -> None:
        if field.kind == MAP:
            if field.message is None:
                entry = _MapEntry.FromString(raw)
                getattr(self, field.name)[entry.key] = entry.value
            else:
                holder = _MessageMapEntry.FromString(raw)
                getattr(self, field.name)[holder.key] = field.message.FromString(holder.value or b"")
            return
        if field.kind == STRING:
            value: Any = raw.decode()
        elif field.kind == BOOL:
            value = bool(raw)
        elif field.kind == INT:
            value = raw - (1 << 64) if raw >= 1 << 63 else raw
        else:
            assert field.message is not None
            value = field.message.FromString(raw)
        if field.repeated:
            getattr(self, field.name).append(value)
        else:
            setattr(self, field.name, value)


class _MapEntry(Message):
    key: str
    value: str
    FIELDS = (Field(1, "key", STRING), Field(2, "value", STRING))


class _MessageMapEntry(Message):
    """A map<string, Message> entry, its value left encoded for the map's own value type."""

    key: str
    value: bytes
    FIELDS = (Field(1, "key", STRING), Field(2, "value", STRING))

    def _take(self, field: Field, raw: Any) -> None:
        setattr(self, field.name, raw.decode() if field.number == 1 else raw)


class Empty(Message):
    pass


class DevicePluginOptions(Message):
    pre_start_required: bool
    get_preferred_allocation_available: bool
    FIELDS = (Field(1, "pre_start_required", BOOL),
              Field(2, "get_preferred_allocation_available", BOOL))


class RegisterRequest(Message):
    version: str
    endpoint: str
    resource_name: str
    options: DevicePluginOptions | None
    FIELDS = (Field(1, "version", STRING), Field(2, "endpoint", STRING),
              Field(3, "resource_name", STRING),
              Field(4, "options", MESSAGE, message=DevicePluginOptions))


class NUMANode(Message):
    ID: int
    FIELDS = (Field(1, "ID", INT),)


class TopologyInfo(Message):
    nodes: list[NUMANode]
    FIELDS = (Field(1, "nodes", MESSAGE, repeated=True, message=NUMANode),)


class Device(Message):
    ID: str
    health: str
    topology: TopologyInfo | None
    FIELDS = (Field(1, "ID", STRING), Field(2, "health", STRING),
              Field(3, "topology", MESSAGE, message=TopologyInfo))


class ListAndWatchResponse(Message):
    devices: list[Device]
    FIELDS = (Field(1, "devices", MESSAGE, repeated=True, message=Device),)


class PreStartContainerRequest(Message):
    devices_ids: list[str]
    FIELDS = (Field(1, "devices_ids", STRING, repeated=True),)


class PreStartContainerResponse(Message):
    pass


class ContainerPreferredAllocationRequest(Message):
    available_deviceIDs: list[str]
    must_include_deviceIDs: list[str]
    allocation_size: int
    FIELDS = (Field(1, "available_deviceIDs", STRING, repeated=True),
              Field(2, "must_include_deviceIDs", STRING, repeated=True),
              Field(3, "allocation_size", INT))


class PreferredAllocationRequest(Message):
    container_requests: list[ContainerPreferredAllocationRequest]
    FIELDS = (Field(1, "container_requests", MESSAGE, repeated=True,
                    message=ContainerPreferredAllocationRequest),)


class ContainerPreferredAllocationResponse(Message):
    deviceIDs: list[str]
    FIELDS = (Field(1, "deviceIDs", STRING, repeated=True),)


class PreferredAllocationResponse(Message):
    container_responses: list[ContainerPreferredAllocationResponse]
    FIELDS = (Field(1, "container_responses", MESSAGE, repeated=True,
                    message=ContainerPreferredAllocationResponse),)


class ContainerAllocateRequest(Message):
    devices_ids: list[str]
    FIELDS = (Field(1, "devices_ids", STRING, repeated=True),)


class AllocateRequest(Message):
    container_requests: list[ContainerAllocateRequest]
    FIELDS = (Field(1, "container_requests", MESSAGE, repeated=True,
                    message=ContainerAllocateRequest),)


class CDIDevice(Message):
    name: str
    FIELDS = (Field(1, "name", STRING),)


class Mount(Message):
    container_path: str
    host_path: str
    read_only: bool
    FIELDS = (Field(1, "container_path", STRING), Field(2, "host_path", STRING),
              Field(3, "read_only", BOOL))


class DeviceSpec(Message):
    container_path: str
    host_path: str
    permissions: str
    FIELDS = (Field(1, "container_path", STRING), Field(2, "host_path", STRING),
              Field(3, "permissions", STRING))


class ContainerAllocateResponse(Message):
    envs: dict[str, str]
    mounts: list[Mount]
    devices: list[DeviceSpec]
    annotations: dict[str, str]
    cdi_devices: list[CDIDevice]
    FIELDS = (Field(1, "envs", MAP), Field(2, "mounts", MESSAGE, repeated=True, message=Mount),
              Field(3, "devices", MESSAGE, repeated=True, message=DeviceSpec),
              Field(4, "annotations", MAP),
              Field(5, "cdi_devices", MESSAGE, repeated=True, message=CDIDevice))


class AllocateResponse(Message):
    container_responses: list[ContainerAllocateResponse]
    FIELDS = (Field(1, "container_responses", MESSAGE, repeated=True,
                    message=ContainerAllocateResponse),)


ALL: tuple[type[Message], ...] = (
    Empty, DevicePluginOptions, RegisterRequest, ListAndWatchResponse, TopologyInfo, NUMANode,
    Device, PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    ContainerPreferredAllocationRequest, PreferredAllocationResponse,
    ContainerPreferredAllocationResponse, AllocateRequest, ContainerAllocateRequest, CDIDevice,
    AllocateResponse, ContainerAllocateResponse, Mount, DeviceSpec,
)
