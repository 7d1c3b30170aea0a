"""Our hand codec for the DRA v1 and plugin-registration APIs against protoc and protobuf.

``api/dra.proto`` and ``api/pluginregistration.proto`` are the schemas; protoc's output
(committed in tests/, reproducible with tools/gen_proto.py, checked by test_api.py) is the
oracle. Same three angles as for the device plugin API: the descriptors (names, numbers, types,
labels, service paths), random messages both ways against the real runtime, and hand-checked
bytes for the two codec features DRA added (map<string, Message>, proto3 optional).
"""

from __future__ import annotations

import random
from typing import Any

import dra_pb2
import drahealth_v1_pb2
import drahealth_v1alpha1_pb2
import pluginregistration_pb2
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpclib.const import Cardinality

from smarter_device_manager.api import dra as ours
from smarter_device_manager.api import messages as codec

KINDS = {
    FieldDescriptor.TYPE_STRING: codec.STRING,
    FieldDescriptor.TYPE_BOOL: codec.BOOL,
    FieldDescriptor.TYPE_MESSAGE: codec.MESSAGE,
    FieldDescriptor.TYPE_INT64: codec.INT,
    FieldDescriptor.TYPE_ENUM: codec.INT,  # a varint on the wire, as int32
}
HEALTH_MODULES = (drahealth_v1alpha1_pb2, drahealth_v1_pb2)
CASES = [(cls, dra_pb2) for cls in ours.DRA_MESSAGES] + \
    [(cls, pluginregistration_pb2) for cls in ours.REGISTRATION_MESSAGES] + \
    [(cls, module) for module in HEALTH_MODULES for cls in ours.HEALTH_MESSAGES]


def _shape(descriptor: Any) -> list[tuple[int, str, int, bool, str | None, bool]]:
    shape = []
    for f in descriptor.fields:
        is_map = f.message_type is not None and f.message_type.GetOptions().map_entry
        if is_map:
            value = f.message_type.fields_by_name["value"]
            sub = value.message_type.name if value.message_type is not None else None
            shape.append((f.number, f.name, codec.MAP, False, sub, False))
            continue
        sub = f.message_type.name if f.message_type is not None else None
        optional = f.has_presence and f.containing_oneof is not None  # proto3 optional
        shape.append((f.number, f.name, KINDS[f.type], f.is_repeated, sub, optional))
    return shape


def test_every_message_has_the_protos_fields() -> None:
    assert {cls.__name__ for cls in ours.DRA_MESSAGES} == set(dra_pb2.DESCRIPTOR.message_types_by_name)
    assert {cls.__name__ for cls in ours.REGISTRATION_MESSAGES} == \
        set(pluginregistration_pb2.DESCRIPTOR.message_types_by_name)
    for module in HEALTH_MODULES:
        assert {cls.__name__ for cls in ours.HEALTH_MESSAGES} == set(module.DESCRIPTOR.message_types_by_name)
    for cls, module in CASES:
        expected = _shape(module.DESCRIPTOR.message_types_by_name[cls.__name__])
        actual = [(f.number, f.name, f.kind, f.repeated, f.message.__name__ if f.message else None,
                   f.optional) for f in cls.FIELDS]
        assert actual == expected, cls.__name__


def test_service_paths_match_the_protos() -> None:
    for service, module, base in ((ours.DRAPluginService(), dra_pb2, "DRAPlugin"),
                                  (ours.RegistrationService(), pluginregistration_pb2, "Registration")):
        descriptor = module.DESCRIPTOR.services_by_name[base]
        expected = {f"/{descriptor.full_name}/{m.name}": (m.input_type.name, m.output_type.name)
                    for m in descriptor.methods}
        assert {path: (h.request_type.__name__, h.reply_type.__name__)
                for path, h in service.__mapping__().items()} == expected
    assert dra_pb2.DESCRIPTOR.services_by_name["DRAPlugin"].full_name == ours.DRA_SERVICE
    assert pluginregistration_pb2.DESCRIPTOR.services_by_name["Registration"].full_name == \
        ours.REGISTRATION_SERVICE


def test_health_service_answers_under_both_versions() -> None:
    expected = {}
    for module in HEALTH_MODULES:
        descriptor = module.DESCRIPTOR.services_by_name["DRAResourceHealth"]
        assert descriptor.full_name in ours.HEALTH_SERVICES
        for m in descriptor.methods:
            assert m.server_streaming and not m.client_streaming
            expected[f"/{descriptor.full_name}/{m.name}"] = (m.input_type.name, m.output_type.name)
    mapping = ours.DRAResourceHealthService().__mapping__()
    assert {path: (h.request_type.__name__, h.reply_type.__name__) for path, h in mapping.items()} == expected
    assert {h.cardinality for h in mapping.values()} == {Cardinality.UNARY_STREAM}
    # the enum's numbers are the proto's
    for module in HEALTH_MODULES:
        assert (module.UNKNOWN, module.HEALTHY, module.UNHEALTHY) == \
            (ours.UNKNOWN, ours.HEALTHY, ours.UNHEALTHY)


def _random(rng: random.Random, cls: type[codec.Message], depth: int = 0) -> codec.Message:
    values: dict[str, Any] = {}
    for field in cls.FIELDS:
        def scalar(f: codec.Field = field) -> Any:
            if f.kind == codec.STRING:
                return "".join(rng.choice("ab/é_-0=\u2603") for _ in range(rng.randint(0, 6)))
            if f.kind == codec.BOOL:
                return rng.random() < 0.5
            if f.kind == codec.INT:
                return rng.choice([0, 1, 2, 1_752_000_000, -1, -(1 << 63), (1 << 63) - 1]) \
                    if f.name != "health" else rng.randint(0, 2)
            assert f.message is not None
            return _random(rng, f.message, depth + 1) if depth < 3 else f.message()

        if field.kind == codec.MAP:
            assert field.message is not None
            values[field.name] = {f"uid-{i}": _random(rng, field.message, depth + 1)
                                  for i in range(rng.randint(0, 3))}
        elif field.repeated:
            values[field.name] = [scalar() for _ in range(rng.randint(0, 3))]
        elif field.optional:
            values[field.name] = rng.choice([None, "", scalar()])
        else:
            values[field.name] = scalar() if rng.random() < 0.8 else field.default()
    return cls(**values)


def _same(mine: codec.Message, theirs: Any) -> None:
    for field in type(mine).FIELDS:
        a, b = getattr(mine, field.name), getattr(theirs, field.name)
        if field.kind == codec.MAP:
            assert set(a) == set(b)
            for key in a:
                _same(a[key], b[key])
        elif field.kind == codec.MESSAGE and field.repeated:
            assert len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                _same(x, y)
        elif field.kind == codec.MESSAGE:
            if a is None:
                assert not theirs.HasField(field.name)
            else:
                _same(a, b)
        elif field.optional:
            assert theirs.HasField(field.name) == (a is not None)
            if a is not None:
                assert a == b
        else:
            assert (list(a) if field.repeated else a) == (list(b) if field.repeated else b)


@pytest.mark.parametrize(("cls", "module"), CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_random_messages_round_trip_with_protobuf(cls: type[codec.Message], module: Any) -> None:
    rng = random.Random(cls.__name__)
    ref_cls = getattr(module, cls.__name__)
    for _ in range(200):
        mine = _random(rng, cls)
        data = mine.SerializeToString()
        theirs = ref_cls.FromString(data)
        _same(mine, theirs)
        assert cls.FromString(data) == mine
        assert cls.FromString(theirs.SerializeToString()) == mine
        if not any(f.kind == codec.MAP for f in cls.FIELDS):
            assert theirs.SerializeToString() == data, "byte-identical encoding"


def test_hand_checked_wire_bytes() -> None:
    # optional string: absent when None, present (tag + empty) when "".
    assert ours.Device(device_name="d").SerializeToString() == b"\x1a\x01d"
    assert ours.Device(share_id="").SerializeToString() == b"\x2a\x00"
    assert ours.Device.FromString(b"\x2a\x00").share_id == ""
    assert ours.Device.FromString(b"").share_id is None
    # map<string, Message>: entry {1: key, 2: value message}; an empty value is still sent.
    response = ours.NodeUnprepareResourcesResponse(claims={"u": ours.NodeUnprepareResourceResponse()})
    assert response.SerializeToString() == b"\x0a\x05\x0a\x01u\x12\x00"
    failed = ours.NodeUnprepareResourcesResponse(claims={"u": ours.NodeUnprepareResourceResponse(error="x")})
    assert failed.SerializeToString() == b"\x0a\x08\x0a\x01u\x12\x03\x0a\x01x"
    # a map entry without its value (protobuf may omit an empty one) decodes as the empty message
    assert ours.NodeUnprepareResourcesResponse.FromString(b"\x0a\x03\x0a\x01u").claims == {
        "u": ours.NodeUnprepareResourceResponse()}
    info = ours.PluginInfo(type="DRAPlugin", name="d.io", endpoint="/s", supported_versions=["v1.DRAPlugin"])
    assert pluginregistration_pb2.PluginInfo.FromString(info.SerializeToString()).supported_versions == \
        ["v1.DRAPlugin"]
    # a negative int64 is ten bytes of two's complement; the enum a plain varint
    health = ours.DeviceHealth(health=ours.UNHEALTHY, health_check_timeout_seconds=-1)
    assert health.SerializeToString() == b"\x10\x02\x20" + b"\xff" * 9 + b"\x01"
    theirs = drahealth_v1alpha1_pb2.DeviceHealth.FromString(health.SerializeToString())
    assert theirs.health_check_timeout_seconds == -1
