"""Discovery over a temporary dev root with real device nodes (mknod: root only)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IS_ROOT, mkdev, needs_root

from smarter_device_manager.config import parse_config
from smarter_device_manager.discovery import KIND_DEVICE, KIND_DIRECTORY, KIND_SYMLINK, discover
from smarter_device_manager.naming import name_problem, prefix_problem, sanitize, socket_name

PREFIX = "smarter-devices"


def rules(*patterns: str, count: int = 1) -> str:
    return "".join(f"- devicematch: {p}\n  nummaxdevices: {count}\n" for p in patterns)


def scan(dev: Path, *patterns: str):  # type: ignore[no-untyped-def]
    return discover(str(dev), parse_config(rules(*patterns), "c"), PREFIX)


# --- naming (no root needed) ---------------------------------------------------------------
def test_sanitize_is_the_originals_mapping() -> None:
    assert sanitize("net/tun") == "net_tun"
    assert sanitize("bus/usb/001/002") == "bus_usb_001_002"
    assert sanitize("serial/by-id/usb-FTDI_X.Y:1") == "serial_by-id_usb-FTDI_X_Y_1"


@pytest.mark.parametrize(("name", "ok"), [
    ("video0", True), ("i2c-1", True), ("net_tun", True), ("a", True),
    ("_udev", False), ("tun_", False), ("-x", False), ("x" * 63, True), ("x" * 64, False),
])
def test_name_rules(name: str, ok: bool) -> None:
    assert (name_problem(name) is None) is ok


@pytest.mark.parametrize(("prefix", "ok"), [
    ("smarter-devices", True), ("edge.example.com", True), ("Upper.com", False),
    ("kubernetes.io", False), ("foo.k8s.io", False), ("a..b", False), ("", False),
])
def test_prefix_rules(prefix: str, ok: bool) -> None:
    assert (prefix_problem(prefix) is None) is ok


def test_socket_names_fit_sun_path() -> None:
    assert socket_name(PREFIX, "net_tun", "/var/lib/kubelet/device-plugins") == "smarter-net_tun.sock"
    assert socket_name("edge.io", "x", "/p") == "edge_io-x.sock"
    long_dir = "/var/lib/rancher/k3s/agent/kubelet/device-plugins"
    name = "a" * 63
    short = socket_name(PREFIX, name, long_dir)
    assert len(long_dir) + 1 + len(short) <= 107
    assert short == socket_name(PREFIX, name, long_dir)  # stable
    assert short != socket_name(PREFIX, "a" * 62 + "b", long_dir)
    assert socket_name(PREFIX, name, "/" + "d" * 95).endswith(".sock")  # hash only: 13 chars


# --- walking a real dev root -----------------------------------------------------------------
@needs_root
def test_char_and_block_nodes_in_subdirectories(tmp_path: Path) -> None:
    mkdev(tmp_path / "video0")
    mkdev(tmp_path / "sda", kind="b", major=8)
    mkdev(tmp_path / "net" / "tun")
    mkdev(tmp_path / "bus" / "usb" / "001" / "002")
    mkdev(tmp_path / "a" / "b" / "c" / "d" / "e" / "f" / "deep0")  # no depth limit
    found = scan(tmp_path, "^video0$", "^sda$", "^net/tun$", "^bus/usb/001/002$", "deep0$")
    assert sorted(found.resources) == ["a_b_c_d_e_f_deep0", "bus_usb_001_002", "net_tun", "sda",
                                       "video0"]
    tun = found.resources["net_tun"]
    assert (tun.kind, tun.path, tun.count, tun.rule.index) == (KIND_DEVICE, "net/tun", 1, 3)
    assert [(n.path, n.source) for n in tun.nodes] == [("net/tun", "net/tun")]
    assert found.problems == ()


@needs_root
def test_directory_resource_holds_every_node_inside(tmp_path: Path) -> None:
    mkdev(tmp_path / "snd" / "controlC0")
    mkdev(tmp_path / "snd" / "pcmC0D0p")
    mkdev(tmp_path / "snd" / "by-path" / "nested0")
    (tmp_path / "snd" / "by-path" / "link").symlink_to("../controlC0")
    (tmp_path / "snd" / "README").write_text("x")
    found = scan(tmp_path, "^snd$")
    snd = found.resources["snd"]
    assert snd.kind == KIND_DIRECTORY
    assert [n.path for n in snd.nodes] == ["snd/by-path/nested0", "snd/controlC0", "snd/pcmC0D0p"]


@needs_root
def test_empty_directory_is_not_exported(tmp_path: Path) -> None:
    (tmp_path / "dri").mkdir()
    found = scan(tmp_path, "^dri$")
    assert found.resources == {}
    assert found.problems == ("skipped /dev/dri: directory holds no device nodes",)


@needs_root
def test_symlinks_inside_outside_broken_and_looping(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    mkdev(dev / "ttyUSB0", major=188)
    by_id = dev / "serial" / "by-id"
    by_id.mkdir(parents=True)
    (by_id / "usb-FTDI_1").symlink_to("../../ttyUSB0")
    outside = tmp_path / "outside0"
    mkdev(outside)
    (dev / "escape0").symlink_to(outside)
    (dev / "dangling0").symlink_to("nothing-here")
    (dev / "loop0").symlink_to("loop1")
    (dev / "loop1").symlink_to("loop0")
    (dev / "dirlink0").symlink_to("serial")
    found = scan(dev, "^serial/by-id/", "^escape", "^dangling", "^loop", "^dirlink")
    assert list(found.resources) == ["serial_by-id_usb-FTDI_1"]
    link = found.resources["serial_by-id_usb-FTDI_1"]
    assert link.kind == KIND_SYMLINK
    assert [(n.path, n.source) for n in link.nodes] == [("serial/by-id/usb-FTDI_1", "ttyUSB0")]
    text = "\n".join(found.problems)
    assert f"skipped /dev/escape0: symlink leaves the dev directory (-> {outside})" in text
    assert "skipped /dev/dangling0: a broken symlink" in text
    assert "skipped /dev/loop0: a symlink loop" in text
    assert "skipped /dev/dirlink0: symlink to a directory" in text


@needs_root
def test_symlinked_directories_are_not_followed(tmp_path: Path) -> None:
    mkdev(tmp_path / "real" / "video0")
    (tmp_path / "real" / "again").symlink_to("..")  # a loop if followed
    (tmp_path / "alias").symlink_to("real")
    found = scan(tmp_path, "video0$")
    assert list(found.resources) == ["real_video0"]


def test_regular_files_sockets_and_fifos_are_never_exported(tmp_path: Path) -> None:
    (tmp_path / "ttyFAKE0").write_text("not a device")
    os.mkfifo(tmp_path / "ttyFIFO0")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "ttySOCK0"))
    try:
        found = scan(tmp_path, "^tty")
    finally:
        sock.close()
    assert found.resources == {}
    assert sorted(found.problems) == [
        "skipped /dev/ttyFAKE0: a regular file; only character and block devices are exported",
        "skipped /dev/ttyFIFO0: a FIFO; only character and block devices are exported",
        "skipped /dev/ttySOCK0: a socket; only character and block devices are exported",
    ]


@needs_root
def test_first_rule_wins_and_overlap_is_reported(tmp_path: Path) -> None:
    mkdev(tmp_path / "ttyUSB0")
    found = discover(str(tmp_path), parse_config(
        "- {devicematch: ^tty, nummaxdevices: 2}\n- {devicematch: USB, nummaxdevices: 5}", "c"), PREFIX)
    assert found.resources["ttyUSB0"].count == 2
    assert found.problems == ("/dev/ttyUSB0 matches rule 1 (^tty) and also rule 2 (USB); rule 1 wins",)


@needs_root
def test_names_colliding_or_rejected_do_not_hide_others(tmp_path: Path) -> None:
    mkdev(tmp_path / "net" / "tun")
    mkdev(tmp_path / "net_tun")
    mkdev(tmp_path / ("video" + "1" * 60))
    mkdev(tmp_path / "video0")
    mkdev(tmp_path / "video_")
    found = scan(tmp_path, "net.tun", "^video")
    assert list(found.resources) == ["video0"]
    text = "\n".join(found.problems)
    assert "/dev/net/tun, /dev/net_tun all map to the resource name smarter-devices/net_tun" in text
    assert "it is 65 characters long and the kubelet allows at most 63" in text
    assert "/dev/video_: resource name smarter-devices/video_ would be rejected" in text


@pytest.mark.skipif(not IS_ROOT, reason="needs root to drop privileges")
def test_unreadable_subdirectory_is_reported_and_the_rest_scanned(reachable_tmp: Path) -> None:
    tmp_path = reachable_tmp  # reachable for nobody
    mkdev(tmp_path / "video0")
    mkdev(tmp_path / "secret" / "video1")
    (tmp_path / "secret").chmod(0)
    tmp_path.chmod(0o755)
    code = (
        "import sys, json; from smarter_device_manager.config import parse_config;"
        "from smarter_device_manager.discovery import discover;"
        f"i = discover({str(tmp_path)!r}, parse_config('[{{devicematch: video, nummaxdevices: 1}}]',"
        "'c'), 'p'); print(json.dumps([sorted(i.resources), list(i.problems)]))"
    )
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if result.returncode != 0 and "setpriv" in result.stderr:
        pytest.skip("setpriv unavailable")
    names, problems = json.loads(result.stdout)
    assert names == ["video0"]
    assert problems == ["cannot read /dev/secret: Permission denied"]


def test_missing_dev_dir_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    found = scan(tmp_path / "nope", "x")
    assert found.resources == {}
    assert found.problems[0].startswith("cannot read /dev/: No such file")


@needs_root
def test_list_cli_json_matches_contract(tmp_path: Path) -> None:
    mkdev(tmp_path / "dev" / "video0")
    mkdev(tmp_path / "dev" / "snd" / "pcmC0D0p")
    mkdev(tmp_path / "dev" / "snd" / "controlC0")
    config = tmp_path / "c.yaml"
    config.write_text(rules("^video[0-9]*$", "^snd$", count=20))
    out = subprocess.run([sys.executable, "-m", "smarter_device_manager", "list", "--config",
                          str(config), "--dev-dir", str(tmp_path / "dev"), "--output", "json"],
                         capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    # 2.0's keys keep their meaning; 2.1 adds kind, rule and each device's sysfs view.
    assert [{k: r[k] for k in ("resource", "count", "paths")} for r in rows] == [
        {"resource": "smarter-devices/snd", "count": 20,
         "paths": ["/dev/snd/controlC0", "/dev/snd/pcmC0D0p"]},
        {"resource": "smarter-devices/video0", "count": 20, "paths": ["/dev/video0"]},
    ]
    assert [(r["kind"], r["rule"]) for r in rows] == [("directory", 2), ("device", 1)]
    assert [d["path"] for d in rows[0]["devices"]] == ["/dev/snd/controlC0", "/dev/snd/pcmC0D0p"]
    assert (rows[1]["devices"][0]["major"], rows[1]["devices"][0]["minor"]) == (1, 3)
    table = subprocess.run([sys.executable, "-m", "smarter_device_manager", "list", "--config",
                            str(config), "--dev-dir", str(tmp_path / "dev")],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert table[0].split() == ["RESOURCE", "COUNT", "PATHS"]
    resources = [line.split() for line in table if line.startswith("smarter-devices/")]
    assert resources[1] == ["smarter-devices/video0", "20", "/dev/video0"]
    assert any(line.startswith("    /dev/video0  ") for line in table)
