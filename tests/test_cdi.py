"""CDI specs: names, versions, the official JSON schema, atomic files, and a real Podman.

The schema is the CDI project's own (schema.json + defs.json), taken from Debian's package of
the CDI Go library, which scripts/test-deps.sh unpacks; nothing of it is copied into this repo. The Podman
test writes a spec into /var/run/cdi (Podman 4.3 reads only /etc/cdi and /var/run/cdi) under a
kind unique to the run, starts a busybox container asking for the device by its CDI name, and
removes the spec again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import IS_ROOT, mkdev, needs_root
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from smarter_device_manager.cdi import (
    DEFAULT_DIR,
    DEFAULT_KIND,
    READ_ONLY_BIND,
    VERSIONS,
    CdiDevice,
    CdiError,
    NodeEdit,
    build_spec,
    device_name,
    kind_problem,
    min_version,
    qualified,
    read_spec,
    remove_spec,
    spec_file_name,
    write_spec,
)

IN_CI = os.environ.get("CI") == "true"
# Where Debian's golang-github-container-orchestrated-devices-container-device-interface-dev puts
# the schema when installed, and where scripts/test-deps.sh unpacks the same .deb instead (test.sh
# sets SDM_CDI_SCHEMA_DIR to whichever it used; ~/.cache/sdm-ci when not root).
_SCHEMA_REL = ("usr/share/gocode/src/github.com/container-orchestrated-devices/"
               "container-device-interface/schema")
_CDI_PKG = "golang-github-container-orchestrated-devices-container-device-interface-dev"
SCHEMA_DIRS = [d for d in (os.environ.get("SDM_CDI_SCHEMA_DIR"), f"/{_SCHEMA_REL}",
                           f"/var/cache/sdm-ci/{_CDI_PKG}/{_SCHEMA_REL}",
                           os.path.expanduser(f"~/.cache/sdm-ci/{_CDI_PKG}/{_SCHEMA_REL}")) if d]
# What the CDI library (every version) accepts as a device name.
CDI_DEVICE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")


def _unavailable(reason: str) -> None:
    """Skip where a tool is truly absent; in CI it must be there (scripts/test.sh installs it)."""
    if IN_CI:
        pytest.fail(f"{reason} (scripts/test-deps.sh should have installed it)")
    pytest.skip(reason)


def test_the_readme_test_command_prepares_what_ci_prepares(tmp_path: Path) -> None:
    """The README's ./scripts/test.sh skipped the schema tests: only .ci/run fetched the schema
    and exported SDM_CDI_SCHEMA_DIR. Now CI adds nothing to the command's environment, and
    test.sh gets the schema, Podman and busybox-static itself (scripts/test-deps.sh)."""
    root = Path(__file__).resolve().parents[1]
    ci = (root / ".ci" / "run").read_text()
    assert "export " not in ci and "SDM_CDI_SCHEMA_DIR" not in ci and "podman" not in ci
    assert ci.rstrip().endswith("exec ./scripts/test.sh")
    test_sh = (root / "scripts" / "test.sh").read_text()
    assert 'eval "$(./scripts/test-deps.sh)"' in test_sh
    assert test_sh.index("test-deps.sh") < test_sh.index("pytest")
    # The script names the schema it found, without installing anything when told not to.
    schema = tmp_path / "schema"
    schema.mkdir()
    (schema / "schema.json").write_text("{}")
    env = {**os.environ, "SDM_TEST_NO_INSTALL": "1", "SDM_CDI_SCHEMA_DIR": str(schema)}
    found = subprocess.run([str(root / "scripts" / "test-deps.sh")], capture_output=True, text=True,
                           env=env, timeout=60, check=True)
    assert found.stdout == f"export SDM_CDI_SCHEMA_DIR={schema}\n"


# --- the official schema ---------------------------------------------------------------------
class CdiSchema:
    """schema.json with defs.json registered for its relative ``$ref``s, plus a check that every
    key we write is one the schema declares: the runtimes parse strictly and refuse unknown
    fields, while the schema itself does not forbid extra properties."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        with open(os.path.join(directory, "schema.json")) as f:
            self.schema: dict[str, Any] = json.load(f)
        with open(os.path.join(directory, "defs.json")) as f:
            self.defs: dict[str, Any] = json.load(f)
        registry: Registry[Any] = Registry().with_resource(
            "defs.json", Resource.from_contents(self.defs, default_specification=DRAFT7))
        self.validator = jsonschema.Draft7Validator(self.schema, registry=registry)

    def validate(self, spec: dict[str, Any]) -> None:
        self.validator.validate(spec)
        self._declared(self.schema, self.schema, spec, "$")

    def _resolve(self, doc: dict[str, Any], node: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        while "$ref" in node:
            target, _, pointer = node["$ref"].partition("#")
            doc = self.defs if target == "defs.json" else doc
            node = doc
            for part in pointer.strip("/").split("/"):
                node = node[part]
        return doc, node

    def _declared(self, doc: dict[str, Any], node: dict[str, Any], value: Any, where: str) -> None:
        doc, node = self._resolve(doc, node)
        if isinstance(value, dict):
            props = node.get("properties", {})
            unknown = set(value) - set(props)
            assert not unknown, f"{where}: keys {sorted(unknown)} are not in the CDI schema"
            for key, item in value.items():
                self._declared(doc, props[key], item, f"{where}.{key}")
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                self._declared(doc, node["items"], item, f"{where}[{i}]")


@pytest.fixture(scope="module")
def cdi_schema() -> CdiSchema:
    for directory in SCHEMA_DIRS:
        if os.path.isfile(os.path.join(directory, "schema.json")):
            return CdiSchema(directory)
    _unavailable(f"the CDI JSON schema is not installed (Debian package {_CDI_PKG}; looked in "
                 f"{', '.join(SCHEMA_DIRS)})")
    raise AssertionError("unreachable")


def test_schema_validator_is_wired_to_the_real_schema(cdi_schema: CdiSchema) -> None:
    """The checks below mean something only if the schema rejects what it should."""
    good = {"cdiVersion": "0.5.0", "kind": "a.io/b",
            "devices": [{"name": "x", "containerEdits": {"env": ["A=1"]}}]}
    cdi_schema.validate(good)
    with pytest.raises(jsonschema.ValidationError, match="'kind' is a required property"):
        cdi_schema.validate({k: v for k, v in good.items() if k != "kind"})
    bad_node = {**good, "devices": [{"name": "x", "containerEdits": {"deviceNodes": [{"major": 1}]}}]}
    with pytest.raises(jsonschema.ValidationError, match="'path' is a required property"):
        cdi_schema.validate(bad_node)
    bad_major = {**good, "devices": [{"name": "x", "containerEdits": {
        "deviceNodes": [{"path": "/dev/x", "major": "1"}]}}]}
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'integer'"):
        cdi_schema.validate(bad_major)
    with pytest.raises(AssertionError, match=r"keys \['fileMod'\] are not in the CDI schema"):
        cdi_schema.validate({**good, "devices": [{"name": "x", "containerEdits": {
            "deviceNodes": [{"path": "/dev/x", "fileMod": 1}]}}]})


# --- device shapes, validated against the schema (real nodes: root) --------------------------
@pytest.fixture
def devroot(tmp_path: Path) -> Path:
    if not IS_ROOT:
        pytest.skip("needs root: mknod of device nodes")
    dev = tmp_path / "dev"
    mkdev(dev / "net" / "tun", "c", 10, 200)
    for name, minor in (("controlC0", 0), ("pcmC0D0p", 16), ("timer", 33)):
        mkdev(dev / "snd" / name, "c", 116, minor)
    mkdev(dev / "ttyUSB0", "c", 188, 0)
    (dev / "serial" / "by-id").mkdir(parents=True)
    (dev / "serial" / "by-id" / "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0").symlink_to("../../ttyUSB0")
    mkdev(dev / "sda1", "b", 8, 1)
    return dev


def node(dev: Path, rel: str, container: str | None = None) -> NodeEdit:
    """A node as the daemon sees it in a container (--dev-dir = ``dev``), with the host's /dev."""
    return NodeEdit(container_path=container or f"/dev/{rel}", host_path=f"/dev/{rel}",
                    local_path=str(dev / rel))


def shapes(dev: Path) -> list[CdiDevice]:
    by_id = "serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
    return [
        CdiDevice("net_tun", (node(dev, "net/tun"),)),
        CdiDevice("snd", tuple(node(dev, f"snd/{n}") for n in ("controlC0", "pcmC0D0p", "timer"))),
        # A symlink resource: the container sees the stable by-id path; the runtime needs the
        # real node, so hostPath is the target and local_path is the link (stat follows it).
        CdiDevice(device_name("serial_by-id_usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"),
                  (NodeEdit(f"/dev/{by_id}", "/dev/ttyUSB0", str(dev / by_id)),)),
        CdiDevice(device_name("A50285BI"), (node(dev, "ttyUSB0"),)),  # a pool member by serial
        CdiDevice("gps", (node(dev, "ttyUSB0", "/dev/gps"),),
                  env=(("GPS_BAUD", "9600"), ("GPS_NAME", "u-blox 7 = fine")),
                  mounts=(("/etc/gps/gps.conf", "/etc/gps.conf"), ("/usr/share/zoneinfo", "/zoneinfo"))),
        CdiDevice("sda1", (node(dev, "sda1"),)),
    ]


def test_every_shape_matches_the_official_schema(devroot: Path, cdi_schema: CdiSchema) -> None:
    spec = build_spec(DEFAULT_KIND, shapes(devroot))
    cdi_schema.validate(spec)
    assert json.loads(json.dumps(spec)) == spec
    assert spec["cdiVersion"] == "0.5.0"  # hostPath on every node
    assert spec["kind"] == "smarter-devices.io/device"
    names = [d["name"] for d in spec["devices"]]
    assert names == sorted(names) == ["A50285BI", "gps", "net_tun", "sda1",
                                      "serial_by-id_usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0", "snd"]
    by_name = {d["name"]: d["containerEdits"] for d in spec["devices"]}
    assert by_name["net_tun"] == {"deviceNodes": [{
        "path": "/dev/net/tun", "hostPath": "/dev/net/tun", "type": "c", "major": 10, "minor": 200,
        "permissions": "rw"}]}
    assert [(n["path"], n["minor"]) for n in by_name["snd"]["deviceNodes"]] == [
        ("/dev/snd/controlC0", 0), ("/dev/snd/pcmC0D0p", 16), ("/dev/snd/timer", 33)]
    serial = by_name["serial_by-id_usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"]["deviceNodes"][0]
    assert (serial["path"], serial["hostPath"], serial["major"], serial["minor"]) == (
        "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0", "/dev/ttyUSB0", 188, 0)
    assert by_name["gps"] == {
        "env": ["GPS_BAUD=9600", "GPS_NAME=u-blox 7 = fine"],
        "deviceNodes": [{"path": "/dev/gps", "hostPath": "/dev/ttyUSB0", "type": "c", "major": 188,
                         "minor": 0, "permissions": "rw"}],
        "mounts": [
            {"hostPath": "/etc/gps/gps.conf", "containerPath": "/etc/gps.conf",
             "options": ["ro", "nosuid", "nodev", "bind"]},
            {"hostPath": "/usr/share/zoneinfo", "containerPath": "/zoneinfo",
             "options": list(READ_ONLY_BIND)}]}
    assert by_name["sda1"]["deviceNodes"][0]["type"] == "b"
    assert (by_name["sda1"]["deviceNodes"][0]["major"], by_name["sda1"]["deviceNodes"][0]["minor"]) == (8, 1)


def test_each_shape_alone_matches_the_schema(devroot: Path, cdi_schema: CdiSchema) -> None:
    """The caller builds per device to leave out a broken one; each piece must stand alone."""
    for device in shapes(devroot):
        spec = build_spec("example.com/serial", [device])
        cdi_schema.validate(spec)
        assert [d["name"] for d in spec["devices"]] == [device.name]


def test_device_order_does_not_change_the_spec(devroot: Path) -> None:
    devices = shapes(devroot)
    assert build_spec(DEFAULT_KIND, devices) == build_spec(DEFAULT_KIND, reversed(devices))


@needs_root
@pytest.mark.parametrize("what", ["missing", "regular", "fifo", "dangling", "directory"])
def test_a_node_that_is_not_a_device_is_refused_by_name(tmp_path: Path, what: str) -> None:
    target = tmp_path / "thing"
    if what == "regular":
        target.write_text("x")
    elif what == "fifo":
        os.mkfifo(target)
    elif what == "dangling":
        target.symlink_to(tmp_path / "gone")
    elif what == "directory":
        target.mkdir()
    device = CdiDevice("thing", (NodeEdit("/dev/thing", "/dev/thing", str(target)),))
    expected = "cannot stat" if what in ("missing", "dangling") else "is not a character or block"
    with pytest.raises(CdiError) as err:
        build_spec(DEFAULT_KIND, [device])
    assert str(err.value).startswith("CDI device 'thing': ")
    assert str(target) in str(err.value)
    assert expected in str(err.value)


@needs_root
def test_devices_no_runtime_would_take_are_refused(tmp_path: Path) -> None:
    """Each of these would make a runtime reject the whole file, every device of the kind."""
    good = NodeEdit("/dev/x", "/dev/x", str(mkdev(tmp_path / "x")))
    cases: list[tuple[list[CdiDevice], str]] = [
        ([], "needs at least one device"),
        ([CdiDevice("x", (good,)), CdiDevice("x", (good,))], "defined twice"),
        ([CdiDevice("empty", ())], "has no device node, env or mount"),
        ([CdiDevice("-x", (good,))], "invalid CDI device name '-x'"),
        ([CdiDevice("x", (good,), env=(("A=B", "1"),))], "invalid environment variable name 'A=B'"),
        ([CdiDevice("x", (good,), env=(("", "1"),))], "invalid environment variable name ''"),
        ([CdiDevice("x", (NodeEdit("dev/x", "/dev/x", good.local_path),))], "must be absolute"),
        ([CdiDevice("x", (NodeEdit("/dev/x", "x", good.local_path),))], "must be absolute"),
        ([CdiDevice("x", (good,), mounts=(("etc/a", "/a"),))], "needs absolute paths"),
    ]
    for devices, message in cases:
        with pytest.raises(CdiError, match=re.escape(message)):
            build_spec(DEFAULT_KIND, devices)
    with pytest.raises(CdiError, match="invalid CDI kind 'nokind'"):
        build_spec("nokind", [CdiDevice("x", (good,))])


def test_env_and_mounts_without_nodes_are_a_device(cdi_schema: CdiSchema) -> None:
    spec = build_spec(DEFAULT_KIND, [CdiDevice("cfg", (), env=(("A", ""),), mounts=(("/a", "/b"),))])
    cdi_schema.validate(spec)
    assert spec["cdiVersion"] == "0.3.0"
    assert spec["devices"][0]["containerEdits"]["env"] == ["A="]


# --- min_version ----------------------------------------------------------------------------
def _spec(kind: str = "a.io/b", name: str = "x", **edits: Any) -> dict[str, Any]:
    return {"cdiVersion": "", "kind": kind,
            "devices": [{"name": name, "containerEdits": edits or {"env": ["A=1"]}}]}


@pytest.mark.parametrize(("spec", "version"), [
    (_spec(), "0.3.0"),
    (_spec(deviceNodes=[{"path": "/dev/x", "type": "c", "major": 1, "minor": 3}]), "0.3.0"),
    (_spec(mounts=[{"hostPath": "/a", "containerPath": "/a", "options": ["bind"]}]), "0.3.0"),
    (_spec(mounts=[{"hostPath": "/a", "containerPath": "/a", "type": "bind"}]), "0.4.0"),
    (_spec(deviceNodes=[{"path": "/dev/x", "hostPath": "/dev/y"}]), "0.5.0"),
    (_spec(name="0001"), "0.5.0"),
    ({**_spec(), "containerEdits": {"deviceNodes": [{"path": "/x", "hostPath": "/y"}]}}, "0.5.0"),
    ({**_spec(), "annotations": {"a": "b"}}, "0.6.0"),
    ({**_spec(), "devices": [{"name": "x", "annotations": {"a": "b"}, "containerEdits": {}}]}, "0.6.0"),
    (_spec(kind="a.io/b.c"), "0.6.0"),
    (_spec(additionalGids=[5]), "0.7.0"),
    (_spec(intelRdt={"closID": "c"}), "0.7.0"),
    ({**_spec(), "containerEdits": {"additionalGids": [5]}}, "0.7.0"),
    (_spec(intelRdt={"enableMonitoring": True}), "1.1.0"),
    (_spec(intelRdt={"schemata": ["L3:0=ff"]}), "1.1.0"),
    (_spec(netDevices=[{"hostInterfaceName": "eth1", "name": "eth1"}]), "1.1.0"),
])
def test_min_version_follows_the_spec_table(spec: dict[str, Any], version: str) -> None:
    assert min_version(spec) == version
    assert version in VERSIONS


def test_min_version_of_our_specs_is_the_one_podman_4_3_and_containerd_2_3_share() -> None:
    """0.5.0: the newest version Podman 4.3's CDI library knows (it stops at 0.5.0) and at least
    what CDI v1.1.0 (containerd 2.3) demands for hostPath. docs/decisions.md has the evidence."""
    spec = build_spec(DEFAULT_KIND, [CdiDevice("x", (NodeEdit("/dev/null", "/dev/null", "/dev/null"),))])
    assert spec["cdiVersion"] == min_version(spec) == "0.5.0"


# --- names ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "net_tun", "serial_by-id_usb-FTDI_ABC-if00", "A50285BI", "0001", "video0", "usb:1-1.3", "a.b", "x",
    "i2c-1",
])
def test_valid_names_pass_unchanged(name: str) -> None:
    assert device_name(name) == name
    assert qualified(DEFAULT_KIND, name) == f"smarter-devices.io/device={name}"


@pytest.mark.parametrize(("name", "stem"), [
    ("FT232R USB UART", "FT232R_USB_UART"),
    ("/dev/ttyUSB0", "dev_ttyUSB0"),
    ("_udev_", "udev"),
    ("serial/by-id/usb-FTDI_X.Y:1", "serial_by-id_usb-FTDI_X.Y:1"),
    ("é1", "1"),
    ("Ω-cam-Ω", "cam"),
    ("tun-", "tun"),
])
def test_awkward_names_map_to_valid_distinct_names(name: str, stem: str) -> None:
    mapped = device_name(name)
    assert re.fullmatch(re.escape(stem) + r"-[0-9a-f]{8}", mapped)
    assert CDI_DEVICE_NAME.match(mapped)
    assert device_name(name) == mapped  # deterministic
    assert qualified(DEFAULT_KIND, mapped).endswith(f"={mapped}")


def test_names_that_differ_stay_different() -> None:
    assert len({device_name(n) for n in ("a b", "a_b", "a/b", "a\tb", "a  b")}) == 5


@pytest.mark.parametrize("name", ["", "___", "ü", "  ", "-", "::"])
def test_names_with_nothing_to_keep_are_refused(name: str) -> None:
    with pytest.raises(CdiError, match="cannot make a CDI device name"):
        device_name(name)


@pytest.mark.parametrize("kind", [
    "smarter-devices.io/device", "example.com/gpu", "foo.bar.baz/foo-bar123.B_az", "vendor.com/foo",
    "ab/cd", "a1.io/Class_9", "x" * 63 + ".io/" + "c" * 63,
])
def test_good_kinds(kind: str) -> None:
    assert kind_problem(kind) is None
    assert spec_file_name(kind) == kind.replace("/", "-") + ".json"


@pytest.mark.parametrize(("kind", "why"), [
    ("foo", "vendor/class"),
    ("vendor.com/", "vendor/class"),
    ("/device", "vendor/class"),
    ("vendor.com/foo/", "class 'foo/'"),
    ("vendor.com/foo/bar", "class 'foo/bar'"),
    ("v/device", "2 to 253"),
    ("vendor.com/d", "2 to 63"),
    ("vendor.com/" + "c" * 64, "2 to 63"),
    ("Vendor.com/device", "DNS subdomain"),
    ("vendor_x.com/device", "DNS subdomain"),
    ("vendor..com/device", "DNS subdomain"),
    ("1vendor.com/device", "start with a letter"),
    ("vendor.com/-dev", "class '-dev'"),
    ("vendor.com/dev-", "class 'dev-'"),
    ("vendor.com/1dev", "class '1dev'"),
    ("vendor.com/dév", "class 'dév'"),
    ("vendor.com/de v", "class 'de v'"),
])
def test_bad_kinds(kind: str, why: str) -> None:
    problem = kind_problem(kind)
    assert problem is not None and why in problem
    with pytest.raises(CdiError, match="invalid CDI kind"):
        spec_file_name(kind)
    with pytest.raises(CdiError, match="invalid CDI kind"):
        qualified(kind, "x")


def test_qualified_refuses_bad_device_names() -> None:
    with pytest.raises(CdiError, match="invalid CDI device name 'a b'"):
        qualified(DEFAULT_KIND, "a b")


def test_default_file_name() -> None:
    assert spec_file_name(DEFAULT_KIND) == "smarter-devices.io-device.json"
    assert DEFAULT_DIR == "/var/run/cdi"


# --- the file: atomic, idempotent, honest about errors --------------------------------------
def big_spec(tag: str, n: int = 300) -> dict[str, Any]:
    """A spec of many pages, so a non-atomic writer would be caught half way."""
    return {"cdiVersion": "0.3.0", "kind": "a.io/b",
            "devices": [{"name": f"d{i}", "containerEdits": {"env": [f"TAG={tag}", "PAD=" + "x" * 100]}}
                        for i in range(n)]}


def test_write_replaces_by_rename_and_skips_identical_content(tmp_path: Path) -> None:
    a, b = big_spec("a"), big_spec("b")
    assert write_spec(str(tmp_path), "a.io-b.json", a) is True
    path = tmp_path / "a.io-b.json"
    first = path.stat()
    assert stat.S_IMODE(first.st_mode) == 0o644
    assert read_spec(str(tmp_path), "a.io-b.json") == a
    assert write_spec(str(tmp_path), "a.io-b.json", b) is True
    second = path.stat()
    assert second.st_ino != first.st_ino  # a new file renamed over the old one, not rewritten
    assert json.loads(path.read_text()) == b
    assert write_spec(str(tmp_path), "a.io-b.json", b) is False
    third = path.stat()
    assert (third.st_ino, third.st_mtime_ns) == (second.st_ino, second.st_mtime_ns)
    assert os.listdir(tmp_path) == ["a.io-b.json"]  # no temp files left behind


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    specs = [big_spec("a"), big_spec("b")]
    write_spec(str(tmp_path), "s.json", specs[0])
    stop = threading.Event()
    seen: list[str] = []
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            with open(tmp_path / "s.json", "rb") as f:
                data = f.read()
            try:
                seen.append(json.loads(data)["devices"][0]["containerEdits"]["env"][0])
            except ValueError:
                bad.append(f"{len(data)} bytes")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            assert write_spec(str(tmp_path), "s.json", specs[(i + 1) % 2])
    finally:
        stop.set()
        thread.join()
    assert bad == []
    assert set(seen) <= {"TAG=a", "TAG=b"} and len(seen) > 0
    assert os.listdir(tmp_path) == ["s.json"]


def test_mode_is_0644_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_spec(str(tmp_path), "s.json", big_spec("a", 1))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s.json").stat().st_mode) == 0o644


def test_temp_name_is_invisible_to_cdi_watchers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runtimes load *.json and *.yaml from the directory as they appear; the temp file is
    neither, so a half-written one is never parsed."""
    seen: list[str] = []
    real_rename = os.rename

    def spy(src: str, dst: str) -> None:
        seen.append(os.path.basename(src))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", spy)
    write_spec(str(tmp_path), "s.json", big_spec("a", 1))
    assert len(seen) == 1 and seen[0].startswith(".s.json.") and seen[0].endswith(".tmp")


def test_missing_or_non_directory_dir_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_spec(str(tmp_path / "missing"), "s.json", big_spec("a", 1))
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        write_spec(str(tmp_path / "file"), "s.json", big_spec("a", 1))
    with pytest.raises(ValueError, match="not a plain file name"):
        write_spec(str(tmp_path), "../s.json", big_spec("a", 1))


def test_failed_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "s.json").mkdir()
    (tmp_path / "s.json" / "keep").write_text("")
    with pytest.raises(OSError):
        write_spec(str(tmp_path), "s.json", big_spec("a", 1))
    assert os.listdir(tmp_path) == ["s.json"]


@needs_root
def test_unwritable_dir_raises_permission_error(tmp_path: Path) -> None:
    """Root writes anywhere, so the write runs as nobody in a directory only root may write."""
    tmp_path.chmod(0o755)
    code = ("from smarter_device_manager.cdi import write_spec\n"
            f"try:\n    write_spec({str(tmp_path)!r}, 's.json', {{'kind': 'a.io/b'}})\n"
            "except PermissionError as e:\n    print('PermissionError', e.strerror)\n")
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if result.returncode != 0 and "setpriv" in result.stderr:
        pytest.skip("setpriv unavailable")
    assert result.stdout.strip() == "PermissionError Permission denied", result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content", [b'{"cdiVersion": "0.5.0", "kind": "a.io/b", "dev', b"",
                                     b"[1, 2]", b"\xff\xfe{}", b"null"])
def test_read_spec_of_a_corrupted_file_is_none(tmp_path: Path, content: bytes) -> None:
    write_spec(str(tmp_path), "s.json", big_spec("a", 2))
    (tmp_path / "s.json").write_bytes(content)
    assert read_spec(str(tmp_path), "s.json") is None
    # ... and the next write puts it right, as the daemon does on a tampered file.
    assert write_spec(str(tmp_path), "s.json", big_spec("a", 2)) is True
    assert read_spec(str(tmp_path), "s.json") == big_spec("a", 2)


def _without_hanging(fifo: Path, call: Any) -> Any:
    """Run ``call`` in a thread; if it is still blocked (on the FIFO) after 30 s, release it by
    opening the FIFO's other end, and fail."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():
        if stat.S_ISFIFO(os.lstat(fifo).st_mode):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(30)
        pytest.fail(f"{call} blocked on the special file at the spec path")
    return result[0] if result else None


@pytest.mark.parametrize("what", ["fifo", "symlink", "symlink to a fifo", "chardev"])
def test_a_special_file_at_the_spec_path_is_replaced_not_read(tmp_path: Path, what: str) -> None:
    """Anyone who can write the CDI directory could leave a FIFO (or a link to /dev/zero) at our
    file's name: the daemon, `dra` and `cdi --write` must not hang on it nor follow it."""
    if what == "chardev" and not IS_ROOT:
        pytest.skip("mknod needs root")
    path = tmp_path / "s.json"
    outside = tmp_path / "outside"
    if what == "fifo":
        os.mkfifo(path)
    elif what == "symlink":
        outside.write_text(json.dumps(big_spec("a", 1)))
        path.symlink_to(outside)
    elif what == "symlink to a fifo":
        os.mkfifo(outside)
        path.symlink_to(outside)
    else:
        os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero: reads never end
    fifo = outside if what == "symlink to a fifo" else path
    assert _without_hanging(fifo, lambda: read_spec(str(tmp_path), "s.json")) is None
    assert _without_hanging(fifo, lambda: write_spec(str(tmp_path), "s.json", big_spec("a", 1))) is True
    assert stat.S_ISREG(os.lstat(path).st_mode)
    assert read_spec(str(tmp_path), "s.json") == big_spec("a", 1)
    if what == "symlink":
        assert json.loads(outside.read_text()) == big_spec("a", 1)  # untouched, not written through


def test_read_and_remove_of_a_missing_file(tmp_path: Path) -> None:
    assert read_spec(str(tmp_path), "s.json") is None
    remove_spec(str(tmp_path), "s.json")
    write_spec(str(tmp_path), "s.json", big_spec("a", 1))
    remove_spec(str(tmp_path), "s.json")
    assert os.listdir(tmp_path) == []


# --- a real runtime: Podman reads the spec and builds the container from it ------------------
def _is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (it needs no libc in the image)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:5] != b"\x7fELF\x02":  # 64-bit
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))  # PT_INTERP


def _podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=120)


@pytest.fixture(scope="module")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-layer image of the host's static busybox: no registry is reachable here."""
    if not IS_ROOT:
        pytest.skip("needs root: podman as root and mknod")
    if shutil.which("podman") is None:
        _unavailable("podman is not installed (apt-get install podman)")
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox) or not _is_static_elf(busybox):
        _unavailable("a static busybox is not installed (apt-get install busybox-static)")
    root = tmp_path_factory.mktemp("image")
    tar_path = root / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(busybox, "bin/busybox")
        for applet in ("sh", "ls", "stat", "cat", "echo", "touch"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    tag = f"localhost/sdm-cdi-test:{os.getpid()}-{os.urandom(3).hex()}"
    _podman("import", str(tar_path), tag)
    yield tag
    _podman("rmi", "--force", tag, check=False)


@pytest.fixture
def run_kind() -> Iterator[str]:
    """A kind of our own in the real /var/run/cdi (Podman 4.3 reads no other directory), so
    parallel runs and real specs are never touched; its file is removed afterwards."""
    kind = f"test-{os.getpid()}-{os.urandom(3).hex()}.smarter-devices.io/device"
    os.makedirs(DEFAULT_DIR, exist_ok=True)
    yield kind
    remove_spec(DEFAULT_DIR, spec_file_name(kind))


# podman asks runc for nofile/nproc limits above this VM's hard limits, which root cannot raise
# here (no CAP_SYS_RESOURCE); explicit low limits need no /etc/containers changes.
RUN = ("run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


@pytest.mark.podman
def test_podman_gives_the_container_what_the_spec_says(
        busybox_image: str, run_kind: str, tmp_path: Path) -> None:
    host_node = mkdev(tmp_path / "hostdev" / "ttyUSB0", "c", 1, 3)  # a copy of /dev/null
    conf = tmp_path / "gps.conf"
    conf.write_text("baud=9600\n")
    name = device_name("A50285BI")
    spec = build_spec(run_kind, [CdiDevice(
        name, (NodeEdit("/dev/gps", str(host_node), str(host_node)),),
        env=(("GPS_BAUD", "9600"),), mounts=((str(conf), "/etc/gps.conf"),))])
    assert write_spec(DEFAULT_DIR, spec_file_name(run_kind), spec)
    script = ("ls -l /dev/gps; stat -c '%F %t:%T' /dev/gps; echo \"GPS_BAUD=$GPS_BAUD\"; "
              "cat /etc/gps.conf; touch /etc/gps.conf 2>/dev/null && echo writable || echo read-only")
    result = _podman(*RUN, "--device", qualified(run_kind, name), busybox_image, "sh", "-c", script,
                     check=False)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("crw") and "1,   3" in lines[0] and lines[0].endswith("/dev/gps")
    assert lines[1:] == ["character special file 1:3", "GPS_BAUD=9600", "baud=9600", "read-only"]


@pytest.mark.podman
def test_podman_4_3_refuses_a_version_above_0_5_0(busybox_image: str, run_kind: str, tmp_path: Path) -> None:
    """The evidence for writing the minimum version: Podman 4.3 (CDI library 0.5.x) does not
    know 0.6.0 and drops the whole file. Newer Podmans know more, so this pins 4.3 only."""
    version = _podman("--version").stdout.split()[-1]
    if not version.startswith("4.3."):
        pytest.skip(f"podman {version}: the 0.5.0 ceiling is Podman 4.3's")
    host_node = mkdev(tmp_path / "ttyUSB0", "c", 1, 3)
    spec = build_spec(run_kind, [CdiDevice("gps", (NodeEdit("/dev/gps", str(host_node), str(host_node)),))])
    device = ("--device", qualified(run_kind, "gps"), busybox_image, "ls", "-l", "/dev/gps")
    write_spec(DEFAULT_DIR, spec_file_name(run_kind), {**spec, "cdiVersion": "0.6.0"})
    refused = _podman(*RUN, *device, check=False)
    assert refused.returncode != 0
    assert f"unresolvable CDI devices {run_kind}=gps" in refused.stderr
    write_spec(DEFAULT_DIR, spec_file_name(run_kind), spec)
    accepted = _podman(*RUN, *device, check=False)
    assert accepted.returncode == 0, accepted.stderr
    assert "1,   3" in accepted.stdout
