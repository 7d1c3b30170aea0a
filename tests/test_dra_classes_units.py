"""The dra-classes controller's pure parts: which extended resource names the slices carry, the
DeviceClass each gets, the writes that get there (never touching a class it does not manage), the
removal grace, and the command line's bad values."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from smarter_device_manager.dra.classes import (
    DRIVER_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    class_names,
    desired,
    plan,
    resources_in,
    selector,
    with_grace,
)

DRIVER = "smarter-devices.io"
PREFIX = "smarter-devices"
OURS = {MANAGED_BY_LABEL: MANAGED_BY, DRIVER_LABEL: DRIVER}


def device(name: str, resource: str | None, **more: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {"path": {"string": f"/dev/{name}"}}
    if resource is not None:
        attributes["resource"] = {"string": resource}
    return {"name": name, "attributes": attributes, **more}


def a_slice(node: str, *devices: dict[str, Any], driver: str = DRIVER) -> dict[str, Any]:
    return {"metadata": {"name": f"{node}-{driver}-0"},
            "spec": {"driver": driver, "nodeName": node, "pool": {"name": node, "generation": 1,
                                                                   "resourceSliceCount": 1},
                     "devices": list(devices)}}


def test_resources_in_collects_names_and_nodes_across_slices_and_pool_members() -> None:
    found = resources_in([
        a_slice("n1", device("ttyusb0", "smarter-devices/ttyUSB0"),
                device("usb-serial-a1", "smarter-devices/usb-serial"),
                device("usb-serial-a2", "smarter-devices/usb-serial")),
        a_slice("n2", device("ttyusb0", "smarter-devices/ttyUSB0"), device("gps", "smarter-devices/gps"),
                device("odd", None)),
        a_slice("n3", device("gpu0", "nvidia.com/gpu"), driver="gpu.nvidia.com"),  # not our driver
    ], DRIVER, PREFIX)
    assert dict(found.resources) == {"smarter-devices/gps": {"n2"}, "smarter-devices/ttyUSB0": {"n1", "n2"},
                                     "smarter-devices/usb-serial": {"n1"}}
    assert found.problems == ()


def test_values_that_cannot_be_extended_resource_names_are_problems_not_classes() -> None:
    found = resources_in([a_slice(
        "n1", device("a", "other-prefix/ttyUSB0"), device("b", "smarter-devices/-bad-"),
        device("c", "no-slash"), device("d", "smarter-devices/" + "x" * 48))], DRIVER, PREFIX)
    assert list(found.resources) == ["smarter-devices/" + "x" * 48]  # 64 characters: kept, warned
    text = "\n".join(found.problems)
    assert "'other-prefix/ttyUSB0'" in text
    assert "not the controller's --resource-prefix 'smarter-devices'" in text
    assert "'smarter-devices/-bad-'" in text and "start and end with a letter or digit" in text
    assert "'no-slash'" in text and "no '<prefix>/' part" in text
    assert "64 characters, the API's limit" in text and "was cut" in text
    assert len(found.problems) == 4


def test_class_names_are_dns_subdomains_and_never_shared() -> None:
    names = class_names(DRIVER, ["smarter-devices/ttyUSB0", "smarter-devices/net_tun",
                                 "smarter-devices/i2c-1", "smarter-devices/gpu.0"])
    assert names == {"smarter-devices/ttyUSB0": "smarter-devices.io-ttyusb0",
                     "smarter-devices/net_tun": "smarter-devices.io-net-tun",
                     "smarter-devices/i2c-1": "smarter-devices.io-i2c-1",
                     "smarter-devices/gpu.0": "smarter-devices.io-gpu-0"}
    folded = class_names(DRIVER, ["smarter-devices/ttyUSB0", "smarter-devices/ttyusb0",
                                  "smarter-devices/tty_usb0"])
    assert len(set(folded.values())) == 3
    assert all(re.fullmatch(r"smarter-devices\.io-ttyusb0-[0-9a-f]{8}", n) for n in
               (folded["smarter-devices/ttyUSB0"], folded["smarter-devices/ttyusb0"]))
    assert folded == class_names(DRIVER, reversed(list(folded)))  # the same whatever the order
    long = class_names(DRIVER, ["smarter-devices/" + "a" * 63])["smarter-devices/" + "a" * 63]
    assert len(long) <= 253 and len(long.split(".")[-1]) <= 63 + 3


def test_desired_class_maps_the_extended_resource_to_the_devices_that_carry_it() -> None:
    (name, body), = desired(DRIVER, ["smarter-devices/ttyUSB0"]).items()
    assert name == "smarter-devices.io-ttyusb0"
    assert body["spec"] == {
        "extendedResourceName": "smarter-devices/ttyUSB0",
        "selectors": [{"cel": {"expression": (
            'device.driver == "smarter-devices.io" && '
            'device.attributes["smarter-devices.io"].resource == "smarter-devices/ttyUSB0"')}}]}
    assert body["metadata"]["labels"] == OURS
    assert selector(DRIVER, "smarter-devices/ttyUSB0") == body["spec"]["selectors"][0]["cel"]["expression"]


def held(body: dict[str, Any], version: str = "7", **labels: str) -> dict[str, Any]:
    obj = {**body, "metadata": {**body["metadata"], "resourceVersion": version,
                                "labels": {**body["metadata"]["labels"], **labels}}}
    return obj


def test_plan_creates_updates_deletes_only_its_own_classes() -> None:
    want = desired(DRIVER, ["smarter-devices/ttyUSB0", "smarter-devices/gps"])
    gps = want["smarter-devices.io-gps"]
    stale_gps = held(gps, "9", team="iot")
    stale_gps["spec"] = {**gps["spec"], "selectors": [{"cel": {"expression": "true"}}]}
    gone = held(desired(DRIVER, ["smarter-devices/video0"])["smarter-devices.io-video0"])
    foreign = {"metadata": {"name": "gpu.example.com", "resourceVersion": "3"},
               "spec": {"selectors": [{"cel": {"expression": "true"}}]}}
    other_driver = held(desired("other.example.com", ["smarter-devices/x"])["other.example.com-x"])
    result = plan(DRIVER, want, {"smarter-devices.io-gps": stale_gps, "smarter-devices.io-video0": gone,
                                 "gpu.example.com": foreign, "other.example.com-x": other_driver})
    verbs = {(w.verb, w.name) for w in result.writes}
    assert verbs == {("create", "smarter-devices.io-ttyusb0"), ("update", "smarter-devices.io-gps"),
                     ("delete", "smarter-devices.io-video0")}
    update = next(w for w in result.writes if w.verb == "update")
    assert update.body is not None
    assert update.body["metadata"]["resourceVersion"] == "9"
    assert update.body["metadata"]["labels"] == {**OURS, "team": "iot"}  # others' labels kept
    assert update.body["spec"] == gps["spec"]
    assert result.notes == ()
    # once the server holds what we want, nothing to do
    in_sync = {name: held(body) for name, body in want.items()}
    assert plan(DRIVER, want, in_sync).writes == ()


def test_plan_leaves_names_and_extended_resources_of_foreign_classes_alone() -> None:
    want = desired(DRIVER, ["smarter-devices/ttyUSB0", "smarter-devices/gps", "smarter-devices/video0"])
    same_name = {"metadata": {"name": "smarter-devices.io-ttyusb0", "resourceVersion": "4",
                              "labels": {"owner": "admin"}}, "spec": {}}
    same_resource = {"metadata": {"name": "my-gps", "resourceVersion": "5"},
                     "spec": {"extendedResourceName": "smarter-devices/gps", "selectors": []}}
    ours_for_gps = held(want["smarter-devices.io-gps"])
    result = plan(DRIVER, want, {"smarter-devices.io-ttyusb0": same_name, "my-gps": same_resource,
                                 "smarter-devices.io-gps": ours_for_gps})
    assert [(w.verb, w.name) for w in result.writes] == [("create", "smarter-devices.io-video0"),
                                                          ("delete", "smarter-devices.io-gps")]
    notes = "\n".join(result.notes)
    assert "a DeviceClass named smarter-devices.io-ttyusb0 exists and is not managed" in notes
    assert "DeviceClass my-gps (not managed by this controller) already maps it" in notes


def test_grace_counts_from_when_a_held_resource_was_first_seen_missing() -> None:
    missing: dict[str, float] = {}
    held = ["a", "b"]
    assert with_grace({"a", "b"}, missing, held, now=100.0, grace=30.0) == ({"a", "b"}, None)
    # idle for a long time, then b goes: a full grace from now, not from the last look
    assert with_grace({"a"}, missing, held, now=1000.0, grace=30.0) == ({"a", "b"}, 1030.0)
    assert with_grace({"a"}, missing, held, now=1010.0, grace=30.0) == ({"a", "b"}, 1030.0)
    assert with_grace({"a", "b"}, missing, held, now=1020.0, grace=30.0) == ({"a", "b"}, None)  # back
    assert missing == {}
    assert with_grace({"a"}, missing, held, now=1025.0, grace=30.0) == ({"a", "b"}, 1055.0)  # a new grace
    assert with_grace({"a"}, missing, held, now=1055.0, grace=30.0) == ({"a"}, None)  # ended
    # its class is deleted: no longer held, forgotten
    assert with_grace({"a"}, missing, ["a"], now=1056.0, grace=30.0) == ({"a"}, None)
    assert missing == {}
    # a class the controller finds at start for a resource no node has: a grace from now
    assert with_grace({"a"}, missing, ["a", "old"], now=2000.0, grace=30.0) == ({"a", "old"}, 2030.0)
    assert with_grace(set(), missing, ["a", "old"], now=2031.0, grace=30.0) == ({"a"}, 2061.0)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "smarter_device_manager", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})}, check=False)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--driver-name", "NoDots"], {}, "argument --driver-name: driver name 'NoDots' is not a DNS subdomain"),
    (["--driver-name", "nodots"], {}, "should be a domain you own"),
    ([], {"SDM_DRIVER_NAME": "x" * 70 + ".io"}, "argument --driver-name (set by SDM_DRIVER_NAME)"),
    (["--resource-prefix", "Bad_Prefix"], {}, "resource prefix 'Bad_Prefix' is not valid"),
    (["--resource-prefix", "devices.kubernetes.io"], {}, "reserved"),
    (["--grace", "soon"], {}, "'soon' is not a duration"),
    ([], {"SDM_GRACE": "200h"}, "argument --grace (set by SDM_GRACE): '200h' is more than a week"),
    (["--http-address", "nowhere"], {}, "is not HOST:PORT"),
])
def test_bad_options_are_usage_errors_naming_the_option(args: list[str], env: dict[str, str],
                                                        message: str) -> None:
    result = _cli("dra-classes", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_no_cluster_and_bad_kubeconfig_say_so(tmp_path: Any) -> None:
    alone = _cli("dra-classes", env={"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": ""})
    assert alone.returncode == 2 and "not in a pod" in alone.stderr
    (tmp_path / "kc").write_text("[]")
    bad = _cli("dra-classes", "--kubeconfig", str(tmp_path / "kc"))
    assert bad.returncode == 2 and "not a kubeconfig" in bad.stderr
