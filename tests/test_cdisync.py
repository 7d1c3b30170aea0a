"""CDI in the daemon: the spec kept equal to what is served, Allocate naming it, the ``cdi``
command for Podman users.

Real parts: mknod device nodes, the CDI JSON schema from Debian's CDI package
(tests/test_cdi.py's fixture), the daemon as a process against the kubelet stand-in
(tests/kubelet_standin.py), and real Podman reading what the ``cdi`` command wrote. The
fake sysfs tree (tests/fakesysfs.py) stands in for the kernel's /sys.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import Node, mkdev, needs_root
from fakesysfs import FakeSysfs
from kubelet_standin import KubeletStandin
from test_cdi import RUN, CdiSchema, _podman, _without_hanging, busybox_image, cdi_schema, run_kind

from smarter_device_manager import mountpolicy
from smarter_device_manager.cdi import DEFAULT_DIR, read_spec, spec_file_name
from smarter_device_manager.config import parse_config
from smarter_device_manager.deviceplugin.cdisync import CdiKeeper, CdiSettings
from smarter_device_manager.discovery import Inventory, discover
from smarter_device_manager.options import DEFAULT_CDI_KIND, cdi_kind

pytestmark = needs_root
KIND = "smarter-devices.io/device"
SPEC = "smarter-devices.io-device.json"

CONFIG = """\
- devicematch: ^video[0-9]+$
  nummaxdevices: 2
- devicematch: ^snd$
  nummaxdevices: 1
- devicematch: ^serial/by-id/
  nummaxdevices: 1
- name: gps
  attributes: {idVendor: "0403", serial: "A50285BI"}
  nummaxdevices: 1
  containerpath: /dev/gps
  env: {GPS_BAUD: "9600"}
  mounts: [{hostpath: MOUNT, containerpath: /etc/gps}]
- name: serials
  pool: true
  attributes: {idVendor: "10c4"}
  nummaxdevices: 1
  containerpath: /dev/serial
"""


class Host:
    """A dev dir, a fake sysfs and a CDI dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dev = root / "dev"
        self.cdi = root / "cdi"
        self.cdi.mkdir(parents=True)
        self.sysfs = FakeSysfs(str(root / "sys"))
        self.mount = root / "gps.d"
        self.mount.mkdir()
        mkdev(self.dev / "video0", major=81, minor=0)
        mkdev(self.dev / "snd" / "controlC0", major=116, minor=0)
        mkdev(self.dev / "snd" / "pcmC0D0p", major=116, minor=16)
        self.devices = [self.sysfs.ftdi(port="1-1.3", node="ttyUSB0"),
                        self.sysfs.cp2102(port="1-1.4", node="ttyUSB1", serial="S1"),
                        self.sysfs.cp2102(port="1-1.5", node="ttyUSB2", serial="S2")]
        for device in self.devices:
            mkdev(self.dev / device.node, major=device.major, minor=device.minor)
        (self.dev / "serial" / "by-id").mkdir(parents=True)
        (self.dev / "serial" / "by-id" / "usb-FTDI-if00").symlink_to("../../ttyUSB0")

    @property
    def config(self) -> str:
        return CONFIG.replace("MOUNT", str(self.mount))

    def inventory(self, config: str | None = None) -> Inventory:
        return discover(str(self.dev), parse_config(config or self.config, "c"), "smarter-devices",
                        str(self.root / "sys"))

    def keeper(self) -> CdiKeeper:
        return CdiKeeper(CdiSettings(str(self.cdi), KIND, "smarter-devices", str(self.dev), "/host/dev"))

    def spec(self) -> dict[str, Any]:
        spec = read_spec(str(self.cdi), SPEC)
        assert spec is not None
        return spec


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    # The GPS mount's stand-in is in the test's directory, outside the trees a mount may expose:
    # the deployer's escape hatch allows it, here and in the daemons and commands started.
    monkeypatch.setattr(mountpolicy, "_extra", (str(tmp_path),))
    monkeypatch.setenv(mountpolicy.VARIABLE, str(tmp_path))
    return Host(tmp_path)


def edits(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d["containerEdits"] for d in spec["devices"]}


def test_the_spec_holds_every_kind_of_resource_and_matches_the_schema(
        host: Host, cdi_schema: CdiSchema) -> None:
    keeper = host.keeper()
    keeper.sync(host.inventory())
    spec = host.spec()
    cdi_schema.validate(spec)
    assert (spec["cdiVersion"], spec["kind"]) == ("0.5.0", KIND)
    devices = edits(spec)
    assert sorted(devices) == ["gps", "serial_by-id_usb-FTDI-if00", "serials:S1", "serials:S2", "snd",
                               "video0"]
    assert devices["video0"] == {
        "env": ["SMARTER_DEVICES_VIDEO0=/dev/video0"],
        "deviceNodes": [{"path": "/dev/video0", "hostPath": "/host/dev/video0", "type": "c", "major": 81,
                         "minor": 0, "permissions": "rw"}]}
    assert [n["path"] for n in devices["snd"]["deviceNodes"]] == ["/dev/snd/controlC0", "/dev/snd/pcmC0D0p"]
    link = devices["serial_by-id_usb-FTDI-if00"]["deviceNodes"][0]
    assert (link["path"], link["hostPath"], link["major"]) == (
        "/dev/serial/by-id/usb-FTDI-if00", "/host/dev/ttyUSB0", 188)
    gps = devices["gps"]
    assert gps["env"] == ["GPS_BAUD=9600", "SMARTER_DEVICES_GPS=/dev/gps"]
    assert [(n["path"], n["hostPath"]) for n in gps["deviceNodes"]] == [("/dev/gps", "/host/dev/ttyUSB0")]
    assert gps["mounts"] == [{"hostPath": str(host.mount), "containerPath": "/etc/gps",
                              "options": ["ro", "nosuid", "nodev", "bind"]}]
    member = devices["serials:S2"]
    assert [(n["path"], n["hostPath"]) for n in member["deviceNodes"]] == [
        ("/dev/serial0", "/host/dev/ttyUSB2")]
    assert member["env"] == ["SMARTER_DEVICES_SERIALS_IDS=S2", "SMARTER_DEVICES_SERIALS=/dev/serial0"]
    assert keeper.writes == 1 and keeper.error is None


def test_a_pools_set_of_devices_is_written_before_it_is_named(host: Host, cdi_schema: CdiSchema) -> None:
    keeper = host.keeper()
    inventory = host.inventory()
    keeper.sync(inventory)
    pool = inventory.resources["serials"]
    s1, s2 = pool.members
    assert keeper.names(pool, [s2, s1]) == [f"{KIND}=serials:S2:S1"]
    spec = host.spec()
    cdi_schema.validate(spec)
    both = edits(spec)["serials:S2:S1"]
    assert [(n["path"], n["hostPath"]) for n in both["deviceNodes"]] == [
        ("/dev/serial0", "/host/dev/ttyUSB2"), ("/dev/serial1", "/host/dev/ttyUSB1")]
    assert keeper.names(pool, [s1]) == [f"{KIND}=serials:S1"]
    writes = keeper.writes
    keeper.names(pool, [s2, s1])  # known: not written again
    keeper.sync(host.inventory())  # nothing changed: not written again
    assert keeper.writes == writes
    assert keeper.names(inventory.resources["video0"], None) == [f"{KIND}=video0"]


def test_hotplug_and_reload_rewrite_the_spec_and_keep_what_containers_may_need(host: Host) -> None:
    keeper = host.keeper()
    keeper.sync(host.inventory())
    mkdev(host.dev / "video1", major=81, minor=1)
    keeper.sync(host.inventory())
    assert "video1" in edits(host.spec())
    # A reload that drops the video rule: the devices stay in the spec while their nodes exist
    # (a running container given one restarts with its CDI name) ...
    keeper.sync(host.inventory("\n".join(host.config.splitlines()[2:]) + "\n"))
    assert {"video0", "video1"} <= set(edits(host.spec()))
    # ... and go with their nodes.
    (host.dev / "video1").unlink()
    keeper.sync(host.inventory("\n".join(host.config.splitlines()[2:]) + "\n"))
    assert "video1" not in edits(host.spec()) and "video0" in edits(host.spec())
    # A pool member unplugged: the sets it was part of go with it.
    pool = host.inventory().resources["serials"]
    keeper.names(pool, list(pool.members))
    (host.dev / "ttyUSB2").unlink()
    keeper.sync(host.inventory())
    assert not [n for n in edits(host.spec()) if n.startswith("serials:S1:") or n.endswith(":S2")]


def test_a_bad_device_is_left_out_alone(host: Host) -> None:
    keeper = host.keeper()
    inventory = host.inventory()
    (host.dev / "video0").unlink()
    (host.dev / "video0").write_text("no longer a device")
    keeper.sync(inventory)  # the scan saw a device; the spec write finds a regular file
    assert "video0" not in edits(host.spec()) and "gps" in edits(host.spec())
    assert any("video0" in p and "not a character or block device" in p for p in keeper.problems)


def test_missing_or_unwritable_cdi_dir_is_an_error_not_a_crash(host: Host, tmp_path: Path) -> None:
    missing = CdiKeeper(CdiSettings(str(tmp_path / "nope"), KIND, "smarter-devices", str(host.dev),
                                    str(host.dev)))
    missing.sync(host.inventory())
    assert missing.error == (f"CDI directory {tmp_path / 'nope'} does not exist (mount the host's CDI "
                             "directory there, or run with --cdi off)")
    assert not (tmp_path / "nope").exists()  # never created: the runtime would not read it
    (tmp_path / "file").write_text("x")
    blocked = CdiKeeper(CdiSettings(str(tmp_path / "file"), KIND, "smarter-devices", str(host.dev),
                                    str(host.dev)))
    blocked.sync(host.inventory())
    assert blocked.error is not None and "cannot write the CDI spec" in blocked.error


def test_a_spec_changed_behind_our_back_is_written_again(host: Host) -> None:
    keeper = host.keeper()
    keeper.sync(host.inventory())
    good = host.spec()
    (host.cdi / SPEC).write_text('{"cdiVersion": "0.5.0", "kind": "x/y", "devices": []}')
    keeper.repair()
    assert host.spec() == good
    (host.cdi / SPEC).unlink()
    keeper.repair()
    assert host.spec() == good


def test_the_default_kind_is_valid_without_loading_cdi() -> None:
    assert cdi_kind(DEFAULT_CDI_KIND) == DEFAULT_CDI_KIND
    from smarter_device_manager.cdi import kind_problem

    assert kind_problem(DEFAULT_CDI_KIND) is None


def test_serve_with_cdi_off_does_not_load_it(tmp_path: Path) -> None:
    code = ("import sys; sys.argv=['x','serve','--help']\n"
            "from smarter_device_manager import cli\n"
            "try: cli.main()\nexcept SystemExit: pass\n"
            "args = cli.build_parser().parse_args(['serve'])\n"
            "cli.build_parser().commands['serve'].take_env(args)\n"
            "assert args.cdi == 'off'\n"
            "print(sorted(m for m in sys.modules if 'cdi' in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


# --- the daemon ---------------------------------------------------------------------------------
def run(coro: Coroutine[Any, Any, None], timeout: float = 90) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.mark.e2e
def test_allocate_names_the_devices_the_spec_on_disk_defines(node: Node, tmp_path: Path) -> None:
    host = Host(tmp_path / "host")
    node.dev = host.dev
    node.write_config(host.config)

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        node.start("--sys-dir", str(host.root / "sys"), "--cdi", "on", "--cdi-dir", str(host.cdi),
                   "--http-address", "127.0.0.1:0", "--allow-mount-prefix", str(host.root))
        await kubelet.wait_for(lambda: kubelet.healthy("smarter-devices/gps") == 1
                               and kubelet.healthy("smarter-devices/serials") == 2, timeout=30)
        defined = set(edits(host.spec()))
        [gps] = (await kubelet.allocate("smarter-devices/gps", ["0"])).container_responses
        assert [d.name for d in gps.cdi_devices] == [f"{KIND}=gps"]
        assert {d.name.split("=", 1)[1] for d in gps.cdi_devices} <= defined
        # DeviceSpecs, env and mounts go along (a runtime without CDI still gets the device).
        assert [d.container_path for d in gps.devices] == ["/dev/gps"]
        assert dict(gps.envs)["GPS_BAUD"] == "9600"
        [pool] = (await kubelet.allocate("smarter-devices/serials", ["S2", "S1"])).container_responses
        assert [d.name for d in pool.cdi_devices] == [f"{KIND}=serials:S2:S1"]
        assert "serials:S2:S1" in edits(host.spec())  # on disk before Allocate answered

        # A device plugged in: in the spec before the kubelet hears of it.
        mkdev(host.dev / "video1", major=81, minor=1)
        await kubelet.wait_for(lambda: kubelet.healthy("smarter-devices/video1") == 2, timeout=30)
        assert "video1" in edits(host.spec())

        # Deleted behind our back: written again.
        (host.cdi / SPEC).unlink()
        deadline = time.monotonic() + 30
        while not (host.cdi / SPEC).exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert "video1" in edits(host.spec())
        await kubelet.stop()

    run(scenario())


@pytest.mark.e2e
def test_an_unusable_cdi_dir_keeps_serving_without_cdi(node: Node, tmp_path: Path) -> None:
    mkdev(node.dev / "video0", major=81, minor=0)
    node.write_config("- {devicematch: ^video0$, nummaxdevices: 1}\n")

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        proc = node.start("--cdi", "on", "--cdi-dir", str(tmp_path / "missing"),
                          "--http-address", "127.0.0.1:0")
        await kubelet.wait_for(lambda: kubelet.healthy("smarter-devices/video0") == 1, timeout=30)
        [answer] = (await kubelet.allocate("smarter-devices/video0", ["0"])).container_responses
        assert list(answer.cdi_devices) == []
        assert [d.container_path for d in answer.devices] == ["/dev/video0"]
        proc.wait_log("HTTP listener on", timeout=30)
        port = int(proc.log.split("HTTP listener on 127.0.0.1:")[1].split()[0])
        loop = asyncio.get_running_loop()

        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        status, text = await loop.run_in_executor(None, get, "/readyz")
        assert status == 503
        assert f"CDI not in use: CDI directory {tmp_path / 'missing'} does not exist" in text
        _, metrics = await loop.run_in_executor(None, get, "/metrics")
        assert 'smarter_device_manager_cdi_enabled{spec="' in metrics and '.json"} 0' in metrics
        await kubelet.stop()

    run(scenario())
    assert not (tmp_path / "missing").exists()


# --- outside Kubernetes: the cdi command and real Podman ----------------------------------------
def sdm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smarter_device_manager", *args], capture_output=True,
                          text=True, timeout=60)


def test_cdi_command_prints_writes_and_removes(host: Host, cdi_schema: CdiSchema) -> None:
    config = host.root / "conf.yaml"
    config.write_text(host.config)
    common = ["--config", str(config), "--dev-dir", str(host.dev), "--sys-dir", str(host.root / "sys")]
    printed = sdm("cdi", *common)
    assert printed.returncode == 0, printed.stderr
    spec = json.loads(printed.stdout)
    cdi_schema.validate(spec)
    assert "gps" in edits(spec)
    written = sdm("cdi", *common, "--write", "--cdi-dir", str(host.cdi))
    assert written.returncode == 0, written.stderr
    assert written.stdout.startswith(f"wrote {host.cdi / SPEC}: 6 devices: {KIND}=gps ")
    assert host.spec() == spec
    listed = sdm("list", *common, "--cdi", "on", "--cdi-dir", str(host.cdi), "-o", "json")
    rows = {r["resource"]: r for r in json.loads(listed.stdout)}
    assert rows["smarter-devices/gps"]["cdi"] == [f"{KIND}=gps"]
    assert rows["smarter-devices/serials"]["cdi"] == [f"{KIND}=serials:S1", f"{KIND}=serials:S2"]
    assert sdm("cdi", "--cdi-dir", str(host.cdi), "--remove").returncode == 0
    assert not (host.cdi / SPEC).exists()


def test_cdi_command_says_what_it_did(host: Host, tmp_path: Path) -> None:
    """`--remove` claimed "removed" with nothing there; `--write` into a missing directory
    printed the daemon's "answering Allocate without CDI" line, and with no device claimed to
    have written "0 devices: " into it; one device was "1 devices"."""
    config = host.root / "conf.yaml"
    config.write_text("- {devicematch: ^video0$, nummaxdevices: 1}\n")
    common = ["--config", str(config), "--dev-dir", str(host.dev), "--sys-dir", str(host.root / "sys")]
    gone = sdm("cdi", "--cdi-dir", str(host.cdi), "--remove")
    assert (gone.returncode, gone.stdout, gone.stderr) == (
        0, f"nothing to remove: {host.cdi / SPEC} does not exist\n", "")
    missing = sdm("cdi", *common, "--write", "--cdi-dir", str(tmp_path / "missing"))
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == (f"error: CDI directory {tmp_path / 'missing'} does not exist (mount the "
                              "host's CDI directory there, or run with --cdi off)\n")
    one = sdm("cdi", *common, "--write", "--cdi-dir", str(host.cdi))
    assert (one.returncode, one.stdout, one.stderr) == (
        0, f"wrote {host.cdi / SPEC}: 1 device: {KIND}=video0\n", "")
    config.write_text("- {devicematch: ^nothing$, nummaxdevices: 1}\n")
    none = sdm("cdi", *common, "--write", "--cdi-dir", str(host.cdi))
    assert (none.returncode, none.stdout) == (1, "")
    assert none.stderr == f"error: no device to put in a CDI spec; {host.cdi / SPEC} not written\n"
    assert not (host.cdi / SPEC).exists()  # the old spec named a device that is not here
    assert not (tmp_path / "missing").exists()  # never created
    (host.cdi / SPEC).write_text("{}")
    removed = sdm("cdi", "--cdi-dir", str(host.cdi), "--remove")
    assert (removed.returncode, removed.stdout, removed.stderr) == (0, f"removed {host.cdi / SPEC}\n", "")
    (tmp_path / "file").write_text("")
    blocked = sdm("cdi", "--cdi-dir", str(tmp_path / "file"), "--remove")
    assert blocked.returncode == 1 and blocked.stderr.startswith(f"error: cannot remove {tmp_path}/file/")
    assert "Traceback" not in blocked.stderr


def test_a_fifo_at_the_spec_path_does_not_hang_cdi_write_or_the_keeper(host: Host) -> None:
    """A FIFO left at our file's name blocked `cdi --write` (and `serve --cdi on`, and `dra`,
    which share the reader) in open() for good; now it is replaced by the spec."""
    os.mkfifo(host.cdi / SPEC)
    config = host.root / "conf.yaml"
    config.write_text(host.config)
    try:
        written = sdm("cdi", "--config", str(config), "--dev-dir", str(host.dev), "--sys-dir",
                      str(host.root / "sys"), "--write", "--cdi-dir", str(host.cdi))
    except subprocess.TimeoutExpired:
        os.close(os.open(host.cdi / SPEC, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("cdi --write hung on a FIFO at the spec path")
    assert written.returncode == 0, written.stderr
    assert stat.S_ISREG(os.lstat(host.cdi / SPEC).st_mode)
    assert "gps" in edits(host.spec())
    # The daemon's keeper: a FIFO swapped in behind its back is noticed and replaced.
    keeper = host.keeper()
    keeper.sync(host.inventory())
    (host.cdi / SPEC).unlink()
    os.mkfifo(host.cdi / SPEC)
    _without_hanging(host.cdi / SPEC, keeper.repair)
    assert keeper.error is None
    assert stat.S_ISREG(os.lstat(host.cdi / SPEC).st_mode)
    assert "gps" in edits(host.spec())


@pytest.mark.parametrize(("args", "message"), [
    (["--cdi-kind", "Bad/kind"], "argument --cdi-kind: CDI kind 'Bad/kind' is not valid"),
    (["--cdi-dir", "relative"], "argument --cdi-dir: CDI dir 'relative' must be an absolute path"),
    (["--write", "--remove"], "not allowed with argument"),
])
def test_cdi_command_bad_values(args: list[str], message: str) -> None:
    result = sdm("cdi", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("SDM_CDI", "maybe", "argument --cdi (set by SDM_CDI): invalid choice 'maybe'; choose from off, on"),
    ("SDM_CDI_DIR", "cdi", "argument --cdi-dir (set by SDM_CDI_DIR): CDI dir 'cdi' must be an absolute path"),
    ("SDM_CDI_KIND", "x", "argument --cdi-kind (set by SDM_CDI_KIND): CDI kind 'x' is not valid"),
])
def test_serve_cdi_options_from_variables_are_checked(variable: str, value: str, message: str) -> None:
    env = {**os.environ, variable: value}
    result = subprocess.run([sys.executable, "-m", "smarter_device_manager", "serve"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.podman
def test_podman_runs_a_container_with_the_cdi_commands_spec(
        busybox_image: str, run_kind: str, host: Host) -> None:
    """The README's Podman recipe, for real: `smarter-device-manager cdi --write`, then
    `podman run --device <kind>=gps`."""
    # The adapters' nodes become copies of /dev/null, /dev/zero and /dev/full (1:3, 1:5, 1:7), which
    # this VM can open, with the fake sysfs linking those numbers to the adapters.
    for device, minor in zip(host.devices, (3, 5, 7), strict=True):
        host.sysfs.unlink_dev(False, device.major, device.minor)
        host.sysfs.dev_link(False, 1, minor, device.path)
        (host.dev / device.node).unlink()
        mkdev(host.dev / device.node, major=1, minor=minor)
    config = host.root / "conf.yaml"
    config.write_text(host.config)
    written = sdm("cdi", "--config", str(config), "--dev-dir", str(host.dev), "--sys-dir",
                  str(host.root / "sys"), "--write", "--cdi-dir", DEFAULT_DIR, "--cdi-kind", run_kind)
    assert written.returncode == 0, written.stderr
    assert os.path.exists(os.path.join(DEFAULT_DIR, spec_file_name(run_kind)))
    (host.mount / "gps.conf").write_text("baud=9600\n")
    script = ("stat -c '%F %t:%T' /dev/gps; echo \"$GPS_BAUD $SMARTER_DEVICES_GPS\"; cat /etc/gps/gps.conf")
    result = _podman(*RUN, "--device", f"{run_kind}=gps", busybox_image, "sh", "-c", script, check=False)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["character special file 1:3", "9600 /dev/gps", "baud=9600"]
