"""Our hand-written v1beta1 codec against protoc and the real protobuf runtime.

``api/deviceplugin.proto`` is the schema; protoc's output (committed in tests/,
reproducible) is the oracle. These tests prove the codec has the same
messages, field numbers, types and labels, and that both encode and decode
each other's bytes.
"""

from __future__ import annotations

import filecmp
import random
import sys
from pathlib import Path
from typing import Any

import deviceplugin_pb2 as ref
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from smarter_device_manager.api import messages as ours
from smarter_device_manager.api.services import METHODS, REGISTER_PATH

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

KINDS = {
    FieldDescriptor.TYPE_STRING: ours.STRING,
    FieldDescriptor.TYPE_BOOL: ours.BOOL,
    FieldDescriptor.TYPE_INT32: ours.INT,
    FieldDescriptor.TYPE_INT64: ours.INT,
    FieldDescriptor.TYPE_MESSAGE: ours.MESSAGE,
}


def test_generated_oracle_matches_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    import gen_proto

    gen_proto.generate(tmp_path)
    for name in gen_proto.OUTPUTS:
        assert filecmp.cmp(tmp_path / name, ROOT / "tests" / name, shallow=False), (
            f"tests/{name} is stale: run `python tools/gen_proto.py`")


def test_every_message_has_the_protos_fields() -> None:
    proto_messages = {n for n, d in ref.DESCRIPTOR.message_types_by_name.items()}
    assert {cls.__name__ for cls in ours.ALL} == proto_messages
    for cls in ours.ALL:
        descriptor: Descriptor = ref.DESCRIPTOR.message_types_by_name[cls.__name__]
        expected = []
        for f in descriptor.fields:
            is_map = f.message_type is not None and f.message_type.GetOptions().map_entry
            kind = ours.MAP if is_map else KINDS[f.type]
            repeated = f.is_repeated and not is_map
            sub = f.message_type.name if f.message_type is not None and not is_map else None
            expected.append((f.number, f.name, kind, repeated, sub))
        actual = [(f.number, f.name, f.kind, f.repeated, f.message.__name__ if f.message else None)
                  for f in cls.FIELDS]
        assert actual == expected, cls.__name__


def test_service_paths_match_the_proto() -> None:
    plugin = ref.DESCRIPTOR.services_by_name["DevicePlugin"]
    expected = {f"/v1beta1.DevicePlugin/{m.name}": (m.input_type.name, m.output_type.name)
                for m in plugin.methods}
    assert {path: (request.__name__, reply.__name__)
            for path, (_, request, reply, _) in METHODS.items()} == expected
    streaming = {f"/v1beta1.DevicePlugin/{m.name}" for m in plugin.methods if m.server_streaming}
    assert {path for path, (*_, stream) in METHODS.items() if stream} == streaming
    assert all(name == path.rsplit("/", 1)[1] for path, (name, *_) in METHODS.items())
    register = ref.DESCRIPTOR.services_by_name["Registration"].methods_by_name["Register"]
    assert f"/v1beta1.Registration/{register.name}" == REGISTER_PATH


def _random_value(rng: random.Random, field: ours.Field, depth: int) -> Any:
    def scalar() -> Any:
        if field.kind == ours.STRING:
            return "".join(rng.choice("ab/é_-0\u2603") for _ in range(rng.randint(0, 6)))
        if field.kind == ours.BOOL:
            return rng.random() < 0.5
        if field.kind == ours.INT:
            bits = 31 if field.name == "allocation_size" else 63
            return rng.randint(-(1 << bits), (1 << bits) - 1)
        assert field.message is not None
        return random_message(rng, field.message, depth + 1) if depth < 3 else field.message()

    if field.kind == ours.MAP:
        return {f"k{i}": f"v{rng.randint(0, 9)}" for i in range(rng.randint(0, 3))}
    if field.repeated:
        return [scalar() for _ in range(rng.randint(0, 3))]
    return scalar() if rng.random() < 0.8 else field.default()


def random_message(rng: random.Random, cls: type[ours.Message], depth: int = 0) -> ours.Message:
    return cls(**{f.name: _random_value(rng, f, depth) for f in cls.FIELDS})


def same(mine: ours.Message, theirs: Any) -> None:
    for field in type(mine).FIELDS:
        a, b = getattr(mine, field.name), getattr(theirs, field.name)
        if field.kind == ours.MAP:
            assert a == dict(b)
        elif field.kind == ours.MESSAGE and field.repeated:
            assert len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                same(x, y)
        elif field.kind == ours.MESSAGE:
            if a is None:
                assert not theirs.HasField(field.name)
            else:
                same(a, b)
        else:
            assert (list(a) if field.repeated else a) == (list(b) if field.repeated else b)


def has_map(cls: type[ours.Message], seen: frozenset[str] = frozenset()) -> bool:
    if cls.__name__ in seen:
        return False
    return any(f.kind == ours.MAP or (f.message is not None and has_map(f.message, seen | {cls.__name__}))
               for f in cls.FIELDS)


@pytest.mark.parametrize("cls", ours.ALL, ids=lambda c: c.__name__)
def test_random_messages_round_trip_with_protobuf(cls: type[ours.Message]) -> None:
    rng = random.Random(cls.__name__)
    ref_cls = getattr(ref, cls.__name__)
    for _ in range(200):
        mine = random_message(rng, cls)
        data = mine.SerializeToString()
        theirs = ref_cls.FromString(data)
        same(mine, theirs)
        assert cls.FromString(data) == mine
        back = cls.FromString(theirs.SerializeToString())
        assert back == mine
        if not has_map(cls):  # protobuf's map order is not canonical (hash-seeded)
            assert theirs.SerializeToString() == data, "byte-identical encoding"


def test_hand_checked_wire_bytes() -> None:
    spec = ours.DeviceSpec(container_path="/dev/a", host_path="/dev/b", permissions="rw")
    assert spec.SerializeToString() == b"\x0a\x06/dev/a\x12\x06/dev/b\x1a\x02rw"
    register = ours.RegisterRequest(version="v1beta1", endpoint="s.sock", resource_name="d/x",
                                    options=ours.DevicePluginOptions(get_preferred_allocation_available=True))
    assert register.SerializeToString() == b"\x0a\x07v1beta1\x12\x06s.sock\x1a\x03d/x\x22\x02\x10\x01"
    device = ours.Device(ID="0", health="Healthy",
                         topology=ours.TopologyInfo(nodes=[ours.NUMANode(ID=1)]))
    assert device.SerializeToString() == b"\x0a\x010\x12\x07Healthy\x1a\x04\x0a\x02\x08\x01"
    assert ours.ContainerAllocateResponse(envs={"K": "V"}).SerializeToString() == \
        b"\x0a\x06\x0a\x01K\x12\x01V"
    assert ours.NUMANode(ID=-1).SerializeToString() == b"\x08" + b"\xff" * 9 + b"\x01"
    assert ours.Empty().SerializeToString() == b""


def test_decoding_skips_unknown_fields_and_rejects_truncation() -> None:
    # field 9 (unknown) as varint, fixed64, length-delimited and fixed32, then ID="x"
    data = b"\x48\x05" + b"\x49" + b"\0" * 8 + b"\x4a\x01z" + b"\x4d" + b"\0" * 4 + b"\x0a\x01x"
    assert ours.Device.FromString(data) == ours.Device(ID="x")
    assert ours.Device.FromString(b"\x08\x01") == ours.Device(), "wrong wire type: skipped"
    for bad in (b"\x0a\x05ab", b"\x08", b"\x49\x00", b"\x0a"):
        with pytest.raises(ValueError):
            ours.Device.FromString(bad)
    with pytest.raises(TypeError, match="no field"):
        ours.Device(name="x")
