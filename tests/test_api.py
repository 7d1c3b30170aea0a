"""The committed kubelet API code: reproducible from the .proto, and on the kubelet's wire numbers."""

from __future__ import annotations

import asyncio
import filecmp
import sys
from pathlib import Path

import pytest

from smarter_device_manager.api import deviceplugin_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    import gen_proto

    gen_proto.generate(tmp_path)
    api = ROOT / "src" / "smarter_device_manager" / "api"
    for name in gen_proto.OUTPUTS:
        fresh = tmp_path / "smarter_device_manager" / "api" / name
        assert filecmp.cmp(fresh, api / name, shallow=False), (
            f"{name} is stale: run `python tools/gen_proto.py`")


def test_wire_format_field_numbers() -> None:
    # Bytes written by hand from the reference's field numbers: tag = number << 3 | wire type.
    spec = pb.DeviceSpec(container_path="/dev/a", host_path="/dev/b", permissions="rw")
    assert spec.SerializeToString() == b"\x0a\x06/dev/a\x12\x06/dev/b\x1a\x02rw"
    register = pb.RegisterRequest(version="v1beta1", endpoint="s.sock", resource_name="d/x",
                                  options=pb.DevicePluginOptions(get_preferred_allocation_available=True))
    assert register.SerializeToString() == (
        b"\x0a\x07v1beta1\x12\x06s.sock\x1a\x03d/x\x22\x02\x10\x01")
    device = pb.Device(ID="0", health="Healthy", topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=1)]))
    assert device.SerializeToString() == b"\x0a\x010\x12\x07Healthy\x1a\x04\x0a\x02\x08\x01"
    preferred = pb.ContainerPreferredAllocationRequest(
        available_deviceIDs=["a"], must_include_deviceIDs=["b"], allocation_size=2)
    assert preferred.SerializeToString() == b"\x0a\x01a\x12\x01b\x18\x02"
    response = pb.ContainerAllocateResponse(envs={"K": "V"}, cdi_devices=[pb.CDIDevice(name="v/c=n")])
    assert response.SerializeToString() == b"\x0a\x06\x0a\x01K\x12\x01V\x2a\x07\x0a\x05v/c=n"
    options = pb.DevicePluginOptions(pre_start_required=True)
    assert options.SerializeToString() == b"\x08\x01"


def test_service_paths() -> None:
    from smarter_device_manager.discovery import Resource
    from smarter_device_manager.plugin import DevicePlugin, Paths

    async def mapping() -> list[str]:
        plugin = DevicePlugin("d/x", Resource("x", "x", "device", 1, 1, ()), Paths("/dev", "/dev"))
        return sorted(plugin.__mapping__())

    assert asyncio.run(mapping()) == [
        "/v1beta1.DevicePlugin/Allocate", "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        "/v1beta1.DevicePlugin/GetPreferredAllocation", "/v1beta1.DevicePlugin/ListAndWatch",
        "/v1beta1.DevicePlugin/PreStartContainer"]
