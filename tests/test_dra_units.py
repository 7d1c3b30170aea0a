"""DRA mode's pure parts and its edges without a daemon: device names and attributes, slices and
their write plan, the API client (against the API server stand-in), the checkpoint, and the
``dra`` subcommand's option checks (flags and SDM_* variables alike)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import mkdev, needs_root
from fake_apiserver import FakeApiServer
from fakesysfs import FakeSysfs

from smarter_device_manager.config import load_config
from smarter_device_manager.discovery import discover
from smarter_device_manager.dra import kube
from smarter_device_manager.dra.devices import DraDevice, dra_devices, label
from smarter_device_manager.dra.locks import FileLock
from smarter_device_manager.dra.node import Checkpoint, entry_problem
from smarter_device_manager.dra.slices import Echo, desired_specs, device_entry, plan, slice_name
from smarter_device_manager.rules import Config


def _config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "conf.yaml"
    path.write_text(text)
    return load_config(str(path))


# --- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("ttyUSB0", "ttyusb0"),
    ("net_tun", "net-tun"),  # '_' and '.' read as '-'
    ("1-1.2", "1-1-2"),
    ("Serial #5/A", "serial-5-a-"),  # anything else replaced gets a crc: '#5/A' and '-5-A' differ
    ("usb-serial-A50285BI", "usb-serial-a50285bi"),
    ("serial_by-id_usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0", "serial-by-id-usb-ftdi"),
    ("___", "d-"),
])
def test_labels_are_dns_labels_and_stable(text: str, expected: str) -> None:
    name = label(text)
    assert name.startswith(expected)
    assert len(name) <= 63 and name == label(text)
    assert name[0].isalnum() and name[-1].isalnum() and name == name.lower()
    assert label("Serial #5/A") != label("serial--5-a")


def test_slice_names_fit_a_dns_subdomain() -> None:
    assert slice_name("node-a", "smarter-devices.io", 0) == "node-a-smarter-devices.io-0"
    long = slice_name("n" * 250, "smarter-devices.io", 3)
    assert len(long) <= 253 and long == slice_name("n" * 250, "smarter-devices.io", 3)
    assert slice_name("Node_A", "d.io", 0) != slice_name("node-a", "d.io", 0)


# --- devices --------------------------------------------------------------------------------------
@needs_root
def test_devices_have_typed_attributes_and_pool_members(tmp_path: Path) -> None:
    sysfs = FakeSysfs(str(tmp_path / "sys"))
    dev = tmp_path / "dev"
    for made in (sysfs.ftdi(), sysfs.cp2102(), sysfs.ch340()):
        mkdev(dev / made.node, major=made.major, minor=made.minor)
    mkdev(dev / "fuse", major=10, minor=229)
    mkdev(dev / "rtc0", major=252, minor=0)
    config = _config(tmp_path, """\
- name: gps
  subsystem: tty
  attributes: {idVendor: "0403"}
  nummaxdevices: 1
- name: usb-serial
  pool: true
  subsystem: tty
  attributes: {driver: "*"}
  nummaxdevices: 2
- devicematch: ^fuse$
  nummaxdevices: 20
- devicematch: ^rtc0$
  nummaxdevices: 0
""")
    inventory = discover(str(dev), config, "smarter-devices", str(tmp_path / "sys"))
    devices, problems = dra_devices(inventory, "smarter-devices", str(dev), str(tmp_path / "sys"))
    by_name = {d.name: d for d in devices}
    assert set(by_name) == {"gps", "usb-serial-0001", "usb-serial-usb-1-1-2", "fuse"}
    assert any("nummaxdevices 0" in p and "rtc0" in p for p in problems)
    gps = dict(by_name["gps"].attributes)
    assert gps["idVendor"] == {"string": "0403"} and gps["serial"] == {"string": "A50285BI"}
    assert gps["major"] == {"int": 188} and gps["type"] == {"string": "char"}
    assert gps["driver"] == {"string": "ftdi_sio"} and gps["subsystem"] == {"string": "tty"}
    assert gps["usbPort"] == {"string": "1-1.3"} and gps["usbHub"] == {"string": "1-1"}
    assert gps["bcdDevice"] == {"version": "6.0.0"}
    assert gps["rule"] == {"int": 1} and gps["resource"] == {"string": "smarter-devices/gps"}
    ch340 = dict(by_name["usb-serial-usb-1-1-2"].attributes)
    assert ch340["identity"] == {"string": "usb-1-1.2"} and "serial" not in ch340
    assert by_name["usb-serial-0001"].member is not None
    fuse = dict(by_name["fuse"].attributes)
    assert fuse["usb"] == {"bool": False}
    entry = device_entry(by_name["fuse"])
    assert entry["allowMultipleAllocations"] is True
    policy = entry["capacity"]["shares"]["requestPolicy"]
    assert policy == {"default": "1", "validRange": {"min": "1", "max": "20", "step": "1"}}
    assert "capacity" not in device_entry(by_name["gps"])
    for device in devices:
        for key, value in device.attributes:
            assert key.isidentifier() and len(key) <= 32
            assert len(value) == 1 and len(str(value.get("string", ""))) <= 64


# --- what the API server accepts ---------------------------------------------------------------------
def test_cut_counts_bytes_and_keeps_characters_whole() -> None:
    from smarter_device_manager.dra.validation import cut

    assert cut("x" * 70) == "x" * 64
    assert cut("沁" * 30) == "沁" * 21  # 3 bytes each: 63 bytes, the 22nd would make 66
    assert cut("ab" + "é" * 40) == "ab" + "é" * 31  # 2 + 62 bytes
    assert cut("short") == "short"
    assert cut("😀" * 20).encode() == ("😀" * 16).encode()


def test_fit_drops_what_the_server_refuses_and_keeps_the_rest(tmp_path: Path) -> None:
    from smarter_device_manager.dra.slices import fit

    good, bad_attrs, bad_name, twin = _fake_devices(tmp_path, 4)
    bad_attrs = DraDevice(bad_attrs.name, bad_attrs.resource, (
        ("path", {"string": "/dev/x"}), ("long", {"string": "沁" * 30}), ("v", {"version": "1.0"}),
        ("not-an-identifier", {"int": 1}), ("two", {"int": 1, "bool": True})), bad_attrs.nodes)
    bad_name = DraDevice("Bad_Name", bad_name.resource, bad_name.attributes, bad_name.nodes)
    twin = DraDevice(good.name, twin.resource, twin.attributes, twin.nodes)
    kept, problems = fit([good, bad_attrs, bad_name, twin])
    assert [d.name for d in kept] == [good.name, bad_attrs.name]
    assert dict(kept[1].attributes) == {"path": {"string": "/dev/x"}}
    text = "\n".join(problems)
    for word in ("long", "'1.0' is not a semantic version", "not-an-identifier", "two", "Bad_Name",
                 f"device name {good.name} is taken"):
        assert word in text, word
    api_errors = _stand_in_errors(desired_specs("n1", "d.io", kept, 1))
    assert api_errors == [], "what fit keeps, the API server stand-in accepts"


def _stand_in_errors(specs: dict[str, dict[str, Any]]) -> list[str]:
    from fake_apiserver import _invalid

    return [e for name, spec in specs.items() for e in _invalid({"metadata": {"name": name}, "spec": spec})]


def test_colliding_names_are_renamed_until_unique(tmp_path: Path) -> None:
    """Serials abc, ABC and abc-<crc> gave two devices of one name after one round of renaming."""
    import binascii

    from smarter_device_manager.dra.devices import _unique

    a, b, c = _fake_devices(tmp_path, 3)
    crc = f"{binascii.crc32(b.where.encode()):08x}"
    devices = [DraDevice("p-abc", a.resource, a.attributes, a.nodes),
               DraDevice("p-abc", b.resource, b.attributes, b.nodes),
               DraDevice(f"p-abc-{crc}", c.resource, c.attributes, c.nodes)]
    problems: list[str] = []
    names = [d.name for d in _unique(devices, problems)]
    assert len(set(names)) == 3 and f"p-abc-{crc}" in names
    assert [d.name for d in _unique(list(reversed(devices)), [])] == names, "the same in any order"


SLICE = {"metadata": {"name": "n1-d.io-0"}, "spec": {
    "driver": "d.io", "nodeName": "n1", "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 1},
    "devices": [{"name": "gpu-0", "attributes": {"foo": {"string": "x"}}}]}}


@pytest.mark.parametrize(("change", "expected"), [
    # the messages of K/pkg/apis/resource/validation/validation_resourceslice_test.go (Kubernetes 1.36)
    ({"attributes": {"foo": {"string": "x" * 65}}},
     ["spec.devices[0].attributes[foo].string: Too long: may not be more than 64 bytes"]),
    ({"attributes": {"foo": {"string": "沁" * 22}}},  # 22 characters, 66 bytes
     ["spec.devices[0].attributes[foo].string: Too long: may not be more than 64 bytes"]),
    ({"attributes": {"1foo": {"int": 1}}},
     ["spec.devices[0].attributes: Invalid value: \"1foo\": a valid C identifier must start with alphabetic "
      "character or '_', followed by a string of alphanumeric characters or '_' (e.g. 'my_name',  or "
      "'MY_NAME',  or 'MyName', regex used for validation is '[A-Za-z_][A-Za-z0-9_]*')"]),
    ({"attributes": {"a" * 33: {"int": 1}}},
     ["spec.devices[0].attributes: Too long: may not be more than 32 bytes"]),
    ({"attributes": {"/x": {"int": 1}}},
     ["spec.devices[0].attributes: Invalid value: \"\": the domain must not be empty"]),
    ({"attributes": {"v": {"version": "1.0"}}},
     ["spec.devices[0].attributes[v].version: Invalid value: \"1.0\": must be a string compatible with "
      "semver.org spec 2.0.0"]),
    ({"name": "GPU_0"},
     ["spec.devices[0].name: Invalid value: \"GPU_0\": a lowercase RFC 1123 label must consist of lower case "
      "alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. "
      "'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"]),
    ({"attributes": {f"a{i}": {"int": i} for i in range(33)}},
     ["spec.devices[0]: Invalid value: 33: the total number of attributes and capacities must not "
      "exceed 32"]),
])
def test_the_api_stand_in_judges_like_the_api_server(change: dict[str, Any], expected: list[str]) -> None:
    obj = json.loads(json.dumps(SLICE))
    obj["spec"]["devices"][0].update(change)
    assert _stand_in_errors({obj["metadata"]["name"]: obj["spec"]}) == expected


def test_the_api_stand_in_counts_devices_and_duplicates_like_the_api_server() -> None:
    obj = json.loads(json.dumps(SLICE))
    obj["spec"]["devices"] = [{"name": "gpu-0"}, {"name": "gpu-0"}]
    assert _stand_in_errors({"s": obj["spec"]}) == ['spec.devices[1]: Duplicate value: "gpu-0"']
    obj["spec"]["devices"] = [{"name": f"d{i}"} for i in range(129)]
    assert _stand_in_errors({"s": obj["spec"]}) == [
        "spec.devices: Too many: 129: must have at most 128 items"]
    obj["spec"]["devices"] = [{"name": f"d{i}", "taints": [{"key": "k", "effect": "NoSchedule"}]}
                              for i in range(65)]
    assert _stand_in_errors({"s": obj["spec"]}) == ["spec.devices: Too many: 65: must have at most 64 items"]
    obj["spec"]["devices"] = []
    obj["spec"]["pool"]["resourceSliceCount"] = 0
    assert _stand_in_errors({"s": obj["spec"]}) == [
        "spec.pool.resourceSliceCount: Invalid value: 0: must be greater than zero"]


# --- slices and the write plan ---------------------------------------------------------------------
def _fake_devices(tmp_path: Path, count: int, shares: int = 1) -> list[DraDevice]:
    config = _config(tmp_path, f"- devicematch: ^x\n  nummaxdevices: {shares}\n")
    rule = config.rules[0]
    from smarter_device_manager.discovery import KIND_DEVICE, DeviceNode, Resource

    return [DraDevice(f"x{i:04d}", Resource(f"x{i:04d}", f"x{i:04d}", KIND_DEVICE, shares, rule,
                                            (DeviceNode(f"x{i:04d}", f"x{i:04d}"),)),
                      (("path", {"string": f"/dev/x{i:04d}"}),), (DeviceNode(f"x{i:04d}", f"x{i:04d}"),))
            for i in range(count)]


def _stored(specs: dict[str, dict[str, Any]], version: int = 7) -> dict[str, dict[str, Any]]:
    return {name: {"metadata": {"name": name, "resourceVersion": str(version)}, "spec": spec}
            for name, spec in specs.items()}


def test_plan_writes_nothing_when_in_sync_and_one_update_per_change(tmp_path: Path) -> None:
    devices = _fake_devices(tmp_path, 3)
    first = plan("n", "d.io", devices, {}, {})
    assert [(w.verb, w.name) for w in first] == [("create", "n-d.io-0")]
    assert first[0].body is not None and first[0].body["spec"]["pool"]["generation"] == 1
    observed = _stored(desired_specs("n", "d.io", devices, 1))
    assert plan("n", "d.io", devices, observed, {}) == []
    changed = plan("n", "d.io", devices[:2], observed, {})
    assert [(w.verb, w.resource_version) for w in changed] == [("update", "7")]
    assert changed[0].body is not None and changed[0].body["spec"]["pool"]["generation"] == 2


def test_plan_splits_at_128_devices_and_deletes_slices_no_longer_needed(tmp_path: Path) -> None:
    devices = _fake_devices(tmp_path, 200)
    writes = plan("n", "d.io", devices, {}, {})
    assert [(w.verb, w.name) for w in writes] == [("create", "n-d.io-0"), ("create", "n-d.io-1")]
    counts = [len(w.body["spec"]["devices"]) for w in writes if w.body]
    assert counts == [128, 72]
    assert all(w.body and w.body["spec"]["pool"]["resourceSliceCount"] == 2 for w in writes)
    observed = _stored(desired_specs("n", "d.io", devices, 1))
    shrink = plan("n", "d.io", devices[:5], observed, {})
    assert [(w.verb, w.name) for w in shrink] == [("update", "n-d.io-0"), ("delete", "n-d.io-1")]
    empty = plan("n", "d.io", [], {}, {})
    assert empty[0].body is not None and empty[0].body["spec"]["devices"] == []


def test_plan_accepts_what_a_server_without_a_feature_stored(tmp_path: Path) -> None:
    devices = _fake_devices(tmp_path, 1, shares=4)
    sent = desired_specs("n", "d.io", devices, 1)["n-d.io-0"]
    stored = json.loads(json.dumps(sent))
    for device in stored["devices"]:  # a 1.34 server drops the consumable-capacity fields
        device.pop("allowMultipleAllocations")
        device.pop("capacity")
    observed = _stored({"n-d.io-0": stored})
    assert plan("n", "d.io", devices, observed, {}) != [], "without the echo it would rewrite"
    assert plan("n", "d.io", devices, observed, {"n-d.io-0": Echo(sent, stored)}) == []


def test_plan_rewrites_every_slice_when_generations_disagree(tmp_path: Path) -> None:
    devices = _fake_devices(tmp_path, 130)
    observed = _stored(desired_specs("n", "d.io", devices, 3))
    observed["n-d.io-1"]["spec"]["pool"]["generation"] = 2
    writes = plan("n", "d.io", devices, observed, {})
    assert {w.verb for w in writes} == {"update"} and len(writes) == 2
    assert all(w.body and w.body["spec"]["pool"]["generation"] == 4 for w in writes)


# --- the API client ----------------------------------------------------------------------------------
def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_client_requests_errors_and_watch(tmp_path: Path) -> None:
    async def scenario() -> None:
        api = FakeApiServer()
        await api.start()
        try:
            cluster = kube.load_kubeconfig(api.kubeconfig(str(tmp_path / "kc")))
            client = kube.KubeClient(cluster, timeout=1.0)
            path = kube.path_of("resource.k8s.io/v1", "resourceslices")
            listed = await client.request("GET", path, verb="list", resource="resourceslices")
            assert listed["items"] == []
            api.forbid.add(("list", "resourceslices"))
            with pytest.raises(kube.KubeError) as refused:
                await client.request("GET", path, verb="list", resource="resourceslices")
            assert refused.value.status == 403
            assert "needs the verb 'list' on 'resourceslices'" in str(refused.value)
            api.forbid.clear()
            api.fail_next = [500]
            with pytest.raises(kube.KubeError, match="HTTP 500"):
                await client.request("GET", path, verb="list", resource="resourceslices")
            api.delay = 2.0
            with pytest.raises(kube.KubeError, match=r"no answer from the API server .* within 1 s"):
                await client.request("GET", path, verb="list", resource="resourceslices")
            api.delay = 0
            bad = kube.KubeClient(kube.Cluster("127.0.0.1", api.port, None, token="wrong"))
            with pytest.raises(kube.KubeError, match="did not accept our credentials"):
                await bad.request("GET", path, verb="list")
            api.add_claim("ns", "c", "u1", [])
            events: list[str] = []

            async def watch() -> None:
                async for event in client.watch(path, {"timeoutSeconds": "1"}):
                    events.append(event["type"])

            task = asyncio.create_task(watch())
            await asyncio.sleep(0.1)
            body = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": "s"},
                    "spec": {"driver": "d.io", "nodeName": "n", "devices": [],
                             "pool": {"name": "n", "generation": 1, "resourceSliceCount": 1}}}
            await client.request("POST", path, body, verb="create")
            await asyncio.wait_for(task, 5)
            assert events == ["ADDED"]
            await client.close()
            await bad.close()
            await api.stop()
            down = kube.KubeClient(kube.Cluster("127.0.0.1", api.port, None), timeout=1.0)
            with pytest.raises(kube.KubeError, match="cannot reach the API server"):
                await down.request("GET", path, verb="list")
        finally:
            await api.stop()
    _run(scenario())


def test_client_over_tls_with_inline_certificates(tmp_path: Path) -> None:
    """A kubeconfig as kubeadm writes it: CA and client certificate inline (base64)."""
    import base64
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make certificates")

    def make(name: str, extra: list[str]) -> tuple[Path, Path]:
        key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert), *extra],
                       check=True, capture_output=True)
        return key, cert

    server_key, server_cert = make("127.0.0.1", ["-addext", "subjectAltName=IP:127.0.0.1"])
    client_key, client_cert = make("sdm", [])

    async def scenario() -> None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(server_cert), str(server_key))
        tls.load_verify_locations(str(client_cert))
        tls.verify_mode = ssl.CERT_REQUIRED  # the client certificate must really be sent
        api = FakeApiServer(token="")
        await api.start(tls=tls)
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        kubeconfig = tmp_path / "kc"
        kubeconfig.write_text(f"""
current-context: c
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
clusters: [{{name: k, cluster: {{server: "{api.url}", certificate-authority-data: {b64(server_cert)}}}}}]
users: [{{name: u, user: {{client-certificate-data: {b64(client_cert)},
                          client-key-data: {b64(client_key)}}}}}]
""")
        client = kube.KubeClient(kube.load_kubeconfig(str(kubeconfig)))
        try:
            listed = await client.request("GET", kube.path_of("resource.k8s.io/v1", "resourceslices"))
            assert listed["kind"] == "ResourceSliceList"
            other = kubeconfig.read_text().replace(b64(server_cert), b64(client_cert))
            kubeconfig.write_text(other)  # a CA that did not sign the server's certificate
            wrong = kube.KubeClient(kube.load_kubeconfig(str(kubeconfig)), timeout=2)
            with pytest.raises(kube.KubeError, match="CERTIFICATE_VERIFY_FAILED"):
                await wrong.request("GET", kube.path_of("resource.k8s.io/v1", "resourceslices"))
            await wrong.close()
        finally:
            await client.close()
            await api.stop()
    _run(scenario())


@pytest.mark.parametrize(("text", "message"), [
    ("[]", "not a kubeconfig"),
    ("{", "not valid YAML"),
    ("current-context: x\n", "no context named 'x'"),
    ("apiVersion: v1\n", "no current-context"),
    ("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
     "clusters: [{name: k, cluster: {server: 'ftp://x'}}]\nusers: [{name: u, user: {}}]\n",
     "is not an http(s) URL"),
    ("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
     "clusters: [{name: k, cluster: {server: 'https://x'}}]\n"
     "users: [{name: u, user: {exec: {command: aws}}}]\n", "uses 'exec'"),
    ("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
     "clusters: [{name: k, cluster: {server: 'https://x', certificate-authority-data: '!!'}}]\n"
     "users: [{name: u, user: {}}]\n", "not valid base64"),
    ("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
     "clusters: [{name: k, cluster: {server: 'https://x', certificate-authority: /nonexistent}}]\n"
     "users: [{name: u, user: {}}]\n", "certificates unusable"),
])
def test_bad_kubeconfigs_are_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "kc"
    path.write_text(text)
    with pytest.raises(kube.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kube.load_kubeconfig(str(path))
    with pytest.raises(kube.ConfigError, match=r"kubeconfig .*missing"):
        kube.load_kubeconfig(str(tmp_path / "missing"))


def test_in_cluster_needs_the_service_account(tmp_path: Path) -> None:
    with pytest.raises(kube.ConfigError, match="not in a pod"):
        kube.in_cluster(str(tmp_path), env={})
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(kube.ConfigError, match="automountServiceAccountToken"):
        kube.in_cluster(str(tmp_path), env=env)
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("not a certificate")
    with pytest.raises(kube.ConfigError, match="not a usable CA certificate"):
        kube.in_cluster(str(tmp_path), env=env)
    with pytest.raises(kube.ConfigError, match="not a port number"):
        kube.in_cluster(str(tmp_path), env={**env, "KUBERNETES_SERVICE_PORT": "https"})


# --- checkpoint -----------------------------------------------------------------------------------------
def test_checkpoint_round_trips_and_sets_a_damaged_file_aside(tmp_path: Path) -> None:
    checkpoint = Checkpoint(str(tmp_path))
    checkpoint.load()
    assert checkpoint.claims == {}
    checkpoint.claims["u"] = {"namespace": "n", "name": "c", "devices": []}
    checkpoint.save()
    again = Checkpoint(str(tmp_path))
    again.load()
    assert again.claims == checkpoint.claims
    (tmp_path / "checkpoint.json").write_text("{not json")
    damaged = Checkpoint(str(tmp_path))
    damaged.load()
    assert damaged.claims == {} and (tmp_path / "checkpoint.json.damaged").exists()
    (tmp_path / "checkpoint.json").write_text('{"version": 99, "claims": {}}')
    other = Checkpoint(str(tmp_path))
    other.load()
    assert other.claims == {}


def test_checkpoint_sets_a_bad_entry_aside_and_keeps_the_rest(tmp_path: Path) -> None:
    good = {"namespace": "n", "name": "c", "devices": [
        {"requests": ["r"], "pool": "n1", "device": "video0", "cdi": ["d.io/device=video0"]}]}
    bad = {
        "x": {"devices": []},  # the entry that crashed every start (KeyError: 'namespace')
        "y": {"namespace": "n", "name": "c2", "devices": [{"pool": "n1", "device": "v"}]},
        "z": {"namespace": "n", "name": "c3", "devices": [
            {"requests": "r", "pool": "n1", "device": "v", "cdi": []}]},
        "w": ["not", "an", "object"],
    }
    path = tmp_path / "checkpoint.json"
    path.write_text(json.dumps({"version": 1, "claims": {"u": good, **bad}}))
    checkpoint = Checkpoint(str(tmp_path))
    checkpoint.load()
    assert checkpoint.claims == {"u": good}
    assert json.loads((tmp_path / "checkpoint.json.damaged").read_text())["claims"] == bad
    assert json.loads(path.read_text())["claims"] == {"u": good}, "the checkpoint keeps the good one"
    for uid, entry in bad.items():
        assert entry_problem(entry) is not None, uid


@needs_root
def test_daemon_starts_with_a_bad_checkpoint_entry(tmp_path: Path) -> None:
    """The daemon's start reads every entry; a bad one must not stop it (it crashed at each start)."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "checkpoint.json").write_text('{"version": 1, "claims": {"x": {"devices": []}}}')
    (tmp_path / "dev").mkdir()
    (tmp_path / "cdi").mkdir()
    (tmp_path / "c.yaml").write_text("[]\n")

    async def scenario() -> None:
        api = FakeApiServer()
        await api.start()
        kubeconfig = api.kubeconfig(str(tmp_path / "kc"))
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smarter_device_manager", "dra", "--node-name", "n1", "--kubeconfig",
            kubeconfig, "--dev-dir", str(tmp_path / "dev"), "--config", str(tmp_path / "c.yaml"),
            "--kubelet-plugins-dir", str(tmp_path / "plugins"), "--kubelet-registry-dir",
            str(tmp_path / "registry"), "--cdi-dir", str(tmp_path / "cdi"), "--state-dir",
            str(tmp_path / "state"), "--sys-dir", str(tmp_path / "sys"),
            stderr=asyncio.subprocess.PIPE)
        assert daemon.stderr is not None
        log = b""
        try:
            while b"registering through" not in log:
                line = await asyncio.wait_for(daemon.stderr.readline(), 30)
                assert line, f"the daemon ended: {log.decode()}"
                log += line
        finally:
            if daemon.returncode is None:
                daemon.terminate()
            await daemon.wait()
            await api.stop()
        assert "claim x is not usable (no string 'namespace')" in log.decode()
    _run(scenario())


# --- the dra subcommand ------------------------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SDM_", "KUBERNETES_"))}
    return subprocess.run([sys.executable, "-m", "smarter_device_manager", *args], capture_output=True,
                          text=True, env={**full, **(env or {})}, timeout=30)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--driver-name", "Smarter_Devices"], {}, "not a DNS subdomain"),
    (["--driver-name", "nodots"], {}, "should be a domain you own"),
    (["--driver-name", "a" * 64 + ".io"], {}, "longer than 63"),
    (["--driver-name", "1devices.io"], {}, "must start with a letter"),
    ([], {"SDM_DRIVER_NAME": "bad_name"}, "not a DNS subdomain"),
    (["--node-name", "Node_A"], {}, "not a DNS subdomain"),
    ([], {"SDM_NODE_NAME": ""}, "node name is empty"),
    (["--kubelet-plugins-dir", "relative/dir"], {}, "not an absolute path"),
    ([], {"SDM_CDI_DIR": "cdi"}, "not an absolute path"),
    (["--http-address", "nope"], {}, "is not HOST:PORT"),
    ([], {"SDM_LOG_LEVEL": "loud"}, "invalid choice"),
    (["--pod-uid", "Pod/../x"], {}, "is not a pod UID"),
    (["--pod-uid", "a" * 37], {}, "at most 36 characters"),
    ([], {"SDM_POD_UID": "-6f1c1d7e"}, "is not a pod UID"),
])
def test_dra_options_are_checked_from_flags_and_environment(args: list[str], env: dict[str, str],
                                                           message: str) -> None:
    result = _cli("dra", *args, env=env)
    assert result.returncode == 2
    assert message in result.stderr


def test_dra_start_errors_are_clear(tmp_path: Path) -> None:
    missing_node = _cli("dra", "--kubeconfig", str(tmp_path / "kc"))
    assert missing_node.returncode == 2 and "needs this node's name" in missing_node.stderr
    no_cluster = _cli("dra", "--node-name", "n")
    assert no_cluster.returncode == 2 and "not in a pod" in no_cluster.stderr
    bad_kc = _cli("dra", "--node-name", "n", "--kubeconfig", str(tmp_path / "kc"))
    assert bad_kc.returncode == 2 and "No such file" in bad_kc.stderr
    (tmp_path / "kc").write_text("[]")
    assert "not a kubeconfig" in _cli("dra", "--node-name", "n", "--kubeconfig", str(tmp_path / "kc")).stderr
    api = FakeApiServer()
    api.port = 1
    long_dir = "/" + "r" * 60
    too_long = _cli("dra", "--node-name", "n", "--kubeconfig", api.kubeconfig(str(tmp_path / "kc2")),
                    "--kubelet-registry-dir", long_dir, "--pod-uid", "6f1c1d7e-0b1f-4c35-9f55-3b0f1f0c2a9e",
                    "--dev-dir", str(tmp_path))
    assert too_long.returncode == 2, too_long.stderr
    assert "longer than a unix socket path may be (107); shorten --kubelet-registry-dir" in too_long.stderr


def test_serve_loads_nothing_of_dra_mode(tmp_path: Path) -> None:
    """Device-plugin mode keeps its memory: no DRA package, no API client, no ssl."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "plugins").mkdir()
    (tmp_path / "c.yaml").write_text("[]\n")
    probe = f"""
import sys
sys.modules["ssl"] = None  # what cli._serve does first; anything importing ssl after it fails
import asyncio, json
def stop(coro):
    coro.close()
    print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))
    return 0
asyncio.run = stop
from smarter_device_manager import cli
sys.exit(cli.main(["serve", "--dev-dir", {str(tmp_path / 'dev')!r}, "--plugin-dir",
                   {str(tmp_path / 'plugins')!r}, "--config", {str(tmp_path / 'c.yaml')!r}]))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert "smarter_device_manager.deviceplugin.daemon" in loaded, "the probe must reach the serve path"
    assert not {m for m in loaded if m.startswith("smarter_device_manager.dra.")}
    assert "smarter_device_manager.api.dra" not in loaded
    assert "_ssl" not in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("lightkube", "httpx", "kubernetes")}


# --- NodePrepareResources paths, in process ------------------------------------------------------------
@needs_root
def test_prepare_refuses_what_it_cannot_prepare_and_cleans_up(tmp_path: Path) -> None:
    from smarter_device_manager.api import dra as pb
    from smarter_device_manager.dra.devices import Paths
    from smarter_device_manager.dra.node import NodeService
    from smarter_device_manager.metrics import Metrics

    dev = tmp_path / "dev"
    mkdev(dev / "video0", major=81, minor=0)
    mkdev(dev / "snd" / "controlC0", major=116, minor=0)
    config = _config(tmp_path, "- devicematch: ^video0$\n  nummaxdevices: 1\n"
                               "- devicematch: ^snd$\n  nummaxdevices: 1\n")
    inventory = discover(str(dev), config, "smarter-devices", None)
    devices, _ = dra_devices(inventory, "smarter-devices", str(dev), None)
    current = {d.name: d for d in devices}
    (tmp_path / "state").mkdir()
    (tmp_path / "cdi").mkdir()

    async def scenario() -> None:
        api = FakeApiServer()
        await api.start()
        client = kube.KubeClient(kube.load_kubeconfig(api.kubeconfig(str(tmp_path / "kc"))))
        checkpoint = Checkpoint(str(tmp_path / "state"))
        service = NodeService("d.io", "n1", client, lambda: current, lambda: None,
                              Paths(str(dev), str(dev)), "smarter-devices", str(tmp_path / "cdi"),
                              checkpoint, Metrics(), FileLock(str(tmp_path / "state" / "claims.lock")))

        async def prepare(name: str, results: list[dict[str, Any]] | None, uid: str = "") -> str:
            if results is not None:
                api.add_claim("ns", name, f"u-{name}", results)
            answer = await service.prepare(pb.Claim(namespace="ns", name=name, uid=uid or f"u-{name}"))
            return answer.error

        assert "no allocated device of driver d.io" in await prepare("other", [
            {"request": "r", "driver": "gpu.example.com", "pool": "n1", "device": "video0"}])
        assert "allocated from pool n2, but this is node n1" in await prepare("remote", [
            {"request": "r", "driver": "d.io", "pool": "n2", "device": "video0"}])
        assert "device ghost is no longer on node n1" in await prepare("ghost", [
            {"request": "r", "driver": "d.io", "pool": "n1", "device": "ghost"}])
        (dev / "snd" / "controlC0").unlink()
        assert "holds no device nodes any more" in await prepare("sound", [
            {"request": "r", "driver": "d.io", "pool": "n1", "device": "snd"}])
        (dev / "video0").unlink()
        (dev / "video0").write_text("not a device")
        assert "is no longer a device node" in await prepare("cam", [
            {"request": "r", "driver": "d.io", "pool": "n1", "device": "video0"}])
        assert checkpoint.claims == {}, "nothing failed is remembered"
        (dev / "video0").unlink()
        mkdev(dev / "video0", major=81, minor=0)
        (tmp_path / "state" / f"checkpoint.json.{os.getpid()}.tmp").mkdir()  # unwritable, even for root
        assert "cannot write the checkpoint" in await prepare("cam2", [
            {"request": "r", "driver": "d.io", "pool": "n1", "device": "video0"}])
        assert checkpoint.claims == {}
        await client.close()
        await api.stop()
    _run(scenario())


# --- rolling updates, owners, adminAccess ------------------------------------------------------------------
def test_file_lock_is_exclusive_between_processes_and_waits_without_blocking(tmp_path: Path) -> None:
    from smarter_device_manager.dra.locks import FileLock, LockTimeout

    path = str(tmp_path / "claims.lock")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({path!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.readline()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    lock = FileLock(path)

    async def scenario() -> None:
        assert not lock.try_acquire()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        with pytest.raises(LockTimeout, match=r"stayed locked by another process for 0\.3 s"):
            await lock.acquire(0.3, poll=0.05)
        assert ticks >= 5, "the loop kept running while waiting"
        holder.stdin.write("\n")  # type: ignore[union-attr]
        holder.stdin.flush()  # type: ignore[union-attr]
        await lock.acquire(30, poll=0.05)
        assert lock.held
        ticker.cancel()
    try:
        _run(scenario())
    finally:
        holder.kill()
        holder.wait()
        lock.close()


def test_slices_name_their_node_as_owner_and_old_slices_get_it_with_one_update(tmp_path: Path) -> None:
    from smarter_device_manager.dra.slices import owner_reference

    owner = owner_reference("n1", "node-uid-1")
    assert owner == {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "node-uid-1",
                     "controller": True}
    devices = _fake_devices(tmp_path, 1)
    [create] = plan("n1", "d.io", devices, {}, {}, owner)
    assert create.verb == "create" and create.body is not None
    assert create.body["metadata"]["ownerReferences"] == [owner]
    stored = {create.name: {**create.body, "metadata": {**create.body["metadata"], "resourceVersion": "5"}}}
    assert plan("n1", "d.io", devices, stored, {}, owner) == []
    # published before slices had owners: one update adds it (same object, so the same uid)
    old = {create.name: {**stored[create.name], "metadata": {"name": create.name, "resourceVersion": "5"}}}
    [update] = plan("n1", "d.io", devices, old, {}, owner)
    assert update.verb == "update" and update.body is not None
    assert update.body["metadata"]["ownerReferences"] == [owner]
    assert update.body["metadata"]["resourceVersion"] == "5"
    assert plan("n1", "d.io", devices, old, {}, None) == [], "owner not known yet: not checked"


@needs_root
def test_admin_access_claims_get_held_devices_and_normal_claims_do_not(tmp_path: Path) -> None:
    from smarter_device_manager.api import dra as pb
    from smarter_device_manager.dra.devices import Paths
    from smarter_device_manager.dra.node import NodeService
    from smarter_device_manager.metrics import Metrics

    dev = tmp_path / "dev"
    mkdev(dev / "ttyUSB0", major=188, minor=0)
    mkdev(dev / "video0", major=81, minor=0)
    config = _config(tmp_path, "- devicematch: ^ttyUSB0$\n  nummaxdevices: 1\n"
                               "- devicematch: ^video0$\n  nummaxdevices: 3\n")
    inventory = discover(str(dev), config, "smarter-devices", None)
    devices, _ = dra_devices(inventory, "smarter-devices", str(dev), None)
    current = {d.name: d for d in devices}
    (tmp_path / "state").mkdir()
    (tmp_path / "cdi").mkdir()

    async def scenario() -> None:
        api = FakeApiServer()
        await api.start()
        client = kube.KubeClient(kube.load_kubeconfig(api.kubeconfig(str(tmp_path / "kc"))))
        checkpoint = Checkpoint(str(tmp_path / "state"))
        service = NodeService("d.io", "n1", client, lambda: current, lambda: None,
                              Paths(str(dev), str(dev)), "smarter-devices", str(tmp_path / "cdi"),
                              checkpoint, Metrics(), FileLock(str(tmp_path / "state" / "claims.lock")))

        async def prepare(name: str, device: str, **extra: Any) -> str:
            api.add_claim("ns", name, f"u-{name}", [
                {"request": "r", "driver": "d.io", "pool": "n1", "device": device, **extra}])
            answer = await service.prepare(pb.Claim(namespace="ns", name=name, uid=f"u-{name}"))
            return answer.error

        async def unprepare(name: str) -> str:
            answer = await service.unprepare(pb.Claim(namespace="ns", name=name, uid=f"u-{name}"))
            return answer.error

        # a device of one claim at a time (nummaxdevices 1)
        assert await prepare("first", "ttyusb0") == ""
        refused = await prepare("second", "ttyusb0")
        assert "device ttyusb0 is still prepared on this node for ns/first (one claim at a time)" in refused
        assert "u-second" not in checkpoint.claims
        assert await prepare("monitor", "ttyusb0", adminAccess=True) == "", "adminAccess: prepared anyway"
        assert checkpoint.claims["u-monitor"]["devices"][0]["admin"] is True
        assert await prepare("second", "ttyusb0") != "", "the admin claim did not free it"
        assert await unprepare("first") == ""
        assert await prepare("second", "ttyusb0") == "", "the admin claim does not count"
        # shares (nummaxdevices 3): a claim may take several
        assert await prepare("big", "video0", consumedCapacity={"shares": "2"}) == ""
        assert await prepare("small", "video0") == ""
        full = await prepare("more", "video0")
        assert "3 shares, 3 of them taken" in full and "ns/big, ns/small" in full
        assert await prepare("watch", "video0", adminAccess=True) == ""
        # entries from before this check (no "admin" key) are not counted
        assert await unprepare("small") == ""
        checkpoint.claims["u-big"]["devices"][0].pop("admin")
        checkpoint.save()
        assert await prepare("more", "video0", consumedCapacity={"shares": "3"}) == ""
        await client.close()
        await api.stop()
    _run(scenario())


# --- issue 16, item 3: devices of path rules named by identity; prepare checks the device ------------
PATH_RULES = "- devicematch: ^ttyACM[0-9]*$\n  nummaxdevices: 1\n" \
             "- devicematch: ^ttyUSB[0-9]*$\n  nummaxdevices: 1\n" \
             "- devicematch: ^fuse$\n  nummaxdevices: 20\n"


@needs_root
def test_devices_of_path_rules_are_named_by_identity_not_kernel_name(tmp_path: Path) -> None:
    sysfs = FakeSysfs(str(tmp_path / "sys"))
    dev = tmp_path / "dev"
    made = [sysfs.ublox(port="1-1.1", node="ttyACM0"), sysfs.ftdi(port="1-1.2", node="ttyUSB0"),
            sysfs.cp2102(port="1-1.3", node="ttyUSB1"), sysfs.cp2102(port="1-1.4", node="ttyUSB2")]
    for device in made:
        mkdev(dev / device.node, major=device.major, minor=device.minor)
    mkdev(dev / "fuse", major=10, minor=229)
    config = _config(tmp_path, PATH_RULES)

    def names() -> dict[str, DraDevice]:
        inventory = discover(str(dev), config, "smarter-devices", str(tmp_path / "sys"))
        return {d.name: d for d in dra_devices(inventory, "smarter-devices", str(dev),
                                               str(tmp_path / "sys"))[0]}

    found = names()
    assert set(found) == {"ttyacm-7a3f21c4-if00", "ttyusb-a50285bi", "ttyusb-0001-usb-1-1-3",
                          "ttyusb-0001-usb-1-1-4", "fuse"}
    ublox = found["ttyacm-7a3f21c4-if00"]
    assert dict(ublox.attributes)["identity"] == {"string": "7A3F21C4-if00"}
    assert dict(ublox.attributes)["resource"] == {"string": "smarter-devices/ttyACM0"}
    assert ublox.fingerprint == "7A3F21C4-usb-1-1.1-if00"
    assert found["fuse"].fingerprint == ""
    # Re-enumerated: the u-blox now ttyACM1, another modem ttyACM0. Each keeps or gets its own name.
    sysfs.unplug(made[0])
    (dev / "ttyACM0").unlink()
    modem = sysfs.ublox(port="1-1.5", node="ttyACM0", serial="OTHER")
    back = sysfs.ublox(port="1-1.1", node="ttyACM1", serial="7A3F21C4")
    for device in (modem, back):
        mkdev(dev / device.node, major=device.major, minor=device.minor)
    found = names()
    assert found["ttyacm-7a3f21c4-if00"].nodes[0].source == "ttyACM1"
    assert found["ttyacm-other-if00"].nodes[0].source == "ttyACM0"


@needs_root
def test_prepare_refuses_a_name_whose_node_is_another_device_now(tmp_path: Path) -> None:
    from smarter_device_manager.api import dra as pb
    from smarter_device_manager.dra.devices import Paths
    from smarter_device_manager.dra.node import NodeService
    from smarter_device_manager.metrics import Metrics

    sys_dir = str(tmp_path / "sys")
    sysfs = FakeSysfs(sys_dir)
    dev = tmp_path / "dev"
    ublox = sysfs.ublox(port="1-1.1", node="ttyACM0")
    mkdev(dev / "ttyACM0", major=ublox.major, minor=ublox.minor)
    inventory = discover(str(dev), _config(tmp_path, PATH_RULES), "smarter-devices", sys_dir)
    devices, _ = dra_devices(inventory, "smarter-devices", str(dev), sys_dir)
    current = {d.name: d for d in devices}  # the last scan, published: ttyACM0 is the u-blox
    (tmp_path / "state").mkdir()
    (tmp_path / "cdi").mkdir()
    allocated = [{"request": "r", "driver": "d.io", "pool": "n1", "device": "ttyacm-7a3f21c4-if00"}]

    async def scenario() -> None:
        api = FakeApiServer()
        await api.start()
        client = kube.KubeClient(kube.load_kubeconfig(api.kubeconfig(str(tmp_path / "kc"))))
        service = NodeService("d.io", "n1", client, lambda: current, lambda: None,
                              Paths(str(dev), str(dev), sys_dir), "smarter-devices", str(tmp_path / "cdi"),
                              Checkpoint(str(tmp_path / "state")), Metrics(),
                              FileLock(str(tmp_path / "state" / "claims.lock")))
        # Unplugged and another modem enumerated as ttyACM0 (same numbers), before any rescan.
        sysfs.unplug(ublox)
        modem = sysfs.ublox(port="1-1.5", node="ttyACM0", serial="OTHER")
        api.add_claim("ns", "gps", "u-gps", allocated)
        answer = await service.prepare(pb.Claim(namespace="ns", name="gps", uid="u-gps"))
        assert ("device ttyacm-7a3f21c4-if00 was allocated as 7A3F21C4-usb-1-1.1-if00, but /dev/ttyACM0 "
                "is now OTHER-usb-1-1.5-if00; refused") in answer.error
        assert not answer.devices and service.checkpoint.claims == {}
        # The u-blox back behind the node: prepared.
        sysfs.unplug(modem)
        sysfs.ublox(port="1-1.1", node="ttyACM0")
        answer = await service.prepare(pb.Claim(namespace="ns", name="gps", uid="u-gps"))
        assert answer.error == "" and [d.device_name for d in answer.devices] == ["ttyacm-7a3f21c4-if00"]
        await client.close()
        await api.stop()
    _run(scenario())


@needs_root
def test_a_dra_name_never_goes_to_another_twin(tmp_path: Path) -> None:
    """Two CP2102s with serial 0001 in a pool: the one alone is usb-serial-0001; unplugged, the other
    alone is proposed that name, and must be published under another (a claim allocated against
    the old slice names the first adapter)."""
    from smarter_device_manager.dra.devices import keep_names

    sys_dir = str(tmp_path / "sys")
    sysfs = FakeSysfs(sys_dir)
    dev = tmp_path / "dev"
    config = _config(tmp_path, "- {name: usb-serial, pool: true, subsystem: tty, nummaxdevices: 1}\n")
    bound: dict[str, str] = {}

    def scan() -> dict[str, str]:
        inventory = discover(str(dev), config, "smarter-devices", sys_dir)
        devices = keep_names(dra_devices(inventory, "smarter-devices", str(dev), sys_dir)[0], bound)
        return {d.name: d.fingerprint for d in devices}

    a = sysfs.cp2102(port="1-1.3", node="ttyUSB0", minor=0)
    mkdev(dev / "ttyUSB0", major=188, minor=0)
    assert scan() == {"usb-serial-0001": "0001-usb-1-1.3"}
    sysfs.unplug(a)
    (dev / "ttyUSB0").unlink()
    b = sysfs.cp2102(port="1-1.4", node="ttyUSB1", minor=1)
    mkdev(dev / "ttyUSB1", major=188, minor=1)
    assert scan() == {"usb-serial-0001-0001-usb-1-1-4": "0001-usb-1-1.4"}
    sysfs.unplug(b)
    (dev / "ttyUSB1").unlink()
    sysfs.cp2102(port="1-1.3", node="ttyUSB2", minor=2)
    mkdev(dev / "ttyUSB2", major=188, minor=2)
    assert scan() == {"usb-serial-0001": "0001-usb-1-1.3"}


def test_bound_names_outlive_the_daemon_and_two_daemons_share_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """names.json (dra/boundnames.py): what one daemon bound, the next (or the other pod of a
    rolling update) keeps; a write over the other's is repaired by the other's next look."""
    from smarter_device_manager.dra.boundnames import BoundNames

    old, new = BoundNames(str(tmp_path)), BoundNames(str(tmp_path))
    old.load()
    old.bound["usb-serial-0001"] = "0001-usb-1-1.3"
    old.save()
    new.load()
    assert new.bound == {"usb-serial-0001": "0001-usb-1-1.3"}
    new.bound["usb-serial-0001-0001-usb-1-1-4"] = "0001-usb-1-1.4"
    old.bound["ttyacm-x"] = "X-usb-1-1.1"
    new.save()
    old.save()  # over new's write: new's name is not in the file now
    new.refresh()
    new.save()
    old.refresh()
    want = {"usb-serial-0001": "0001-usb-1-1.3", "usb-serial-0001-0001-usb-1-1-4": "0001-usb-1-1.4",
            "ttyacm-x": "X-usb-1-1.1"}
    assert old.bound == new.bound == want
    assert BoundNames(str(tmp_path)).bound == {}
    fresh = BoundNames(str(tmp_path))
    fresh.load()
    assert fresh.bound == want
    for text in ('{"kind": "smarter-device-manager/dra-names", "version": 1, "names": {"a": 1}}',
                 '{"kind": "smarter-device-manager/dra-names", "version": 2, "names": {}}', "\xff"):
        (tmp_path / "names.json").write_text(text)
        caplog.clear()
        broken = BoundNames(str(tmp_path))
        broken.load()
        assert broken.bound == {}
        assert [r.levelname for r in caplog.records] == ["WARNING"], text


def test_the_supervisor_logs_shows_counts_and_restarts_a_task_that_fails(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """dra/supervise.py: a bug in a background task is never silent, and never the end of it."""
    from smarter_device_manager.dra import supervise
    from smarter_device_manager.metrics import Metrics

    monkeypatch.setattr(supervise, "BACKOFF_START", 0.01)
    monkeypatch.setattr(supervise, "STABLE", 0.2)
    runs: list[int] = []
    recovered = asyncio.Event()

    async def work() -> None:
        runs.append(1)
        if len(runs) <= 3:
            raise LookupError("unknown encoding: idna")
        await asyncio.Event().wait()  # runs for ever, as a task should

    done: list[int] = []

    async def once() -> None:
        done.append(1)

    async def scenario() -> None:
        metrics = Metrics(supervise.FAMILY)
        supervisor = supervise.Supervisor(metrics)
        supervisor.start("the writer", work)
        supervisor.start("the lock", once, once=True)
        while len(runs) < 4:
            await asyncio.sleep(0.01)
        assert supervisor.reasons() == ["internal error in the writer: LookupError: unknown encoding: "
                                        "idna (3 times; started again with backoff)"]
        assert 'dra_internal_errors_total{task="the writer"} 3' in metrics.render()
        while supervisor.failures:
            await asyncio.sleep(0.01)
        recovered.set()
        await supervisor.stop()

    with caplog.at_level("INFO"):
        asyncio.run(asyncio.wait_for(scenario(), 30))
    assert recovered.is_set()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is not None  # once, with its traceback
    assert done == [1]  # a task that is done stays done
