"""Rules' ``mounts``: only host paths under an allowlist, never a socket, FIFO or device node.

A denylist let a ConfigMap hand every pod that asked for a device the container runtime's socket
(a read-only bind of a socket still connects). The config check refuses what lies outside the
allowed trees, with file and line; the escape hatch is the deployer's option, not a config key;
on the node, what a mount's path is now (a socket swapped in, a symlink out) is checked again
before it reaches a container: at the scan, in Allocate and in the CDI spec. Device nodes are
real (mknod, root) and the daemon runs as a process against the kubelet stand-in.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Node, mkdev, needs_root
from kubelet_standin import KubeletStandin

from smarter_device_manager import mountpolicy
from smarter_device_manager.cdi import CdiDevice, CdiError, device_entry
from smarter_device_manager.config import parse_config
from smarter_device_manager.discovery import discover
from smarter_device_manager.rules import ConfigError


@pytest.fixture(autouse=True)
def no_escape_hatch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mountpolicy, "_extra", ())
    monkeypatch.delenv(mountpolicy.VARIABLE, raising=False)


def mount_rule(host: str, container: str = "/mnt/x") -> str:
    return (f"- devicematch: ^null$\n  nummaxdevices: 1\n  mounts:\n"
            f"    - hostpath: {host}\n      containerpath: {container}\n")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "conf.yaml")
    return info.value.problems


def sdm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smarter_device_manager", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


# --- the config check ---------------------------------------------------------------------------
@pytest.mark.parametrize("host", [
    "/run/containerd/containerd.sock", "/var/run/docker.sock", "/run/k3s/containerd/containerd.sock",
    "/var/run/crio/crio.sock", "/run", "/var/run", "/etc", "/etc/kubernetes", "/root", "/root/.ssh",
    "/var/lib", "/var/lib/docker", "/var/lib/rancher", "/home", "/tmp", "/opt", "/opt/x", "/boot",
    "/usr", "/usr/bin", "/lib", "/lib/modules", "/sys", "/sys/kernel", "/sys/fs/cgroup",
    "/sys/firmware", "/sys/firmware/efi", "/sys/classx", "/sys/class-gpio", "/usr/share2",
])
def test_host_paths_outside_the_allowed_trees_are_refused(host: str) -> None:
    [problem] = problems(mount_rule(host))
    assert problem.startswith(f"conf.yaml:4: rule 1: 'hostpath' '{host}' is outside the host paths a "
                              "mount may expose (/sys/class, /sys/bus, /sys/devices, "
                              "/sys/firmware/devicetree, /lib/firmware, /usr/lib/firmware, /usr/share)")
    assert problem.endswith("whoever deploys the daemon can add its directory with "
                            "--allow-mount-prefix (SDM_ALLOW_MOUNT_PREFIX)")


@pytest.mark.parametrize(("host", "root"), [
    ("/proc", "/proc"), ("/proc/1/root", "/proc"), ("/dev", "/dev"), ("/dev/mem", "/dev"),
    ("/var/lib/kubelet", "/var/lib/kubelet"), ("/var/lib/kubelet/pods", "/var/lib/kubelet"),
])
def test_forbidden_trees_say_so(host: str, root: str) -> None:
    assert problems(mount_rule(host)) == [
        f"conf.yaml:4: rule 1: 'hostpath' '{host}' is under {root}, which is not allowed here"]


@pytest.mark.parametrize("host", [
    "/sys/class/gpio", "/sys/class", "/sys/bus/iio/devices", "/sys/devices/platform/soc",
    "/sys/firmware/devicetree/base", "/lib/firmware/brcm", "/usr/lib/firmware", "/usr/share/zoneinfo",
])
def test_host_paths_a_device_needs_are_accepted(host: str) -> None:
    [rule] = parse_config(mount_rule(host), "c").rules
    assert rule.mounts[0].host_path == host


def test_check_config_refuses_the_runtime_socket_and_the_escape_hatch_allows_a_tree(
        tmp_path: Path) -> None:
    config = tmp_path / "conf.yaml"
    config.write_text(mount_rule("/run/containerd/containerd.sock") + mount_rule("/opt/calib/cam0"))
    refused = sdm("check-config", str(config))
    assert refused.returncode == 2
    assert [line.split(" is outside")[0] for line in refused.stderr.splitlines()[:2]] == [
        f"{config}:4: rule 1: 'hostpath' '/run/containerd/containerd.sock'",
        f"{config}:9: rule 2: 'hostpath' '/opt/calib/cam0'"]
    # The deployer allows /opt/calib (flag or variable); the socket stays refused.
    for args, env in ((["--allow-mount-prefix", "/opt/calib"], {}),
                      ([], {mountpolicy.VARIABLE: "/srv/maps:/opt/calib"})):
        half = sdm("check-config", str(config), *args, env=env)
        assert half.returncode == 2 and "'/opt/calib/cam0'" not in half.stderr
        assert "'/run/containerd/containerd.sock' is outside" in half.stderr
    config.write_text(mount_rule("/opt/calib/cam0"))
    allowed = sdm("check-config", str(config), "--allow-mount-prefix", "/opt/calib")
    assert (allowed.returncode, allowed.stdout) == (0, f"{config}: valid, 1 rules\n")


@pytest.mark.parametrize(("value", "message"), [
    ("opt/calib", "'opt/calib' must be a plain absolute path"),
    ("/opt/../etc", "'/opt/../etc' must be a plain absolute path"),
    ("/opt/calib/", "'/opt/calib/' must be a plain absolute path"),
    ("/", "'/' would allow every host path"),
    ("/proc/1", "'/proc/1' would allow /proc, which no mount may expose"),
    ("/dev", "'/dev' would allow /dev, which no mount may expose"),
    ("/var/lib", "'/var/lib' would allow /var/lib/kubelet, which no mount may expose"),
    ("/opt:/var", "'/var' would allow /var/lib/kubelet, which no mount may expose"),
])
def test_bad_escape_hatch_values_are_usage_errors(value: str, message: str, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("[]\n")
    for command in (["check-config", str(config)], ["list", "--config", str(config)],
                    ["cdi", "--config", str(config)], ["serve", "--config", str(config)]):
        flag = sdm(*command, "--allow-mount-prefix", value)
        assert flag.returncode == 2, flag.stderr
        assert f"argument --allow-mount-prefix: {message}" in flag.stderr, flag.stderr
        variable = sdm(*command, env={mountpolicy.VARIABLE: value})
        assert variable.returncode == 2
        assert (f"argument --allow-mount-prefix (set by {mountpolicy.VARIABLE}): {message}"
                in variable.stderr), variable.stderr


def test_the_escape_hatch_is_not_a_config_key() -> None:
    """Whoever edits the rules must not be able to widen what they may mount."""
    text = mount_rule("/etc").replace("  mounts:", "  allow-mount-prefix: /etc\n  mounts:")
    found = problems(text)
    assert any("unknown key 'allow-mount-prefix'" in p for p in found)
    assert any("'/etc' is outside" in p for p in found)


# --- on the node: what the path is now --------------------------------------------------------
class Host:
    """A dev dir with /dev/null's twin, and an allowed tree (the escape hatch) holding a file, a
    directory, a socket, a FIFO, a device node and a symlink out of the tree."""

    def __init__(self, root: Path) -> None:
        self.dev = root / "dev"
        mkdev(self.dev / "null", major=1, minor=3)
        self.tree = root / "allowed"
        self.tree.mkdir()
        (self.tree / "file").write_text("calibration\n")
        (self.tree / "dir").mkdir()
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(self.tree / "socket"))
        os.mkfifo(self.tree / "fifo")
        os.mknod(self.tree / "device", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        (root / "outside").mkdir()
        (self.tree / "link").symlink_to(root / "outside")

    def scan(self, name: str) -> tuple[list[str], tuple[str, ...]]:
        found = discover(str(self.dev), parse_config(mount_rule(str(self.tree / name)), "c"), "p")
        return sorted(found.resources), found.problems


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    made = Host(tmp_path)
    monkeypatch.setattr(mountpolicy, "_extra", (str(made.tree),))
    yield made
    made.listener.close()


@needs_root
@pytest.mark.parametrize(("name", "why"), [
    ("socket", "is a socket, not a file or directory: refused"),
    ("fifo", "is a FIFO, not a file or directory: refused"),
    ("device", "is a device node, not a file or directory: refused"),
    ("missing", "does not exist on this node"),
])
def test_a_special_file_at_a_mount_path_withholds_the_rules_devices(host: Host, name: str, why: str) -> None:
    resources, found = host.scan(name)
    assert resources == []
    assert found == (f"rule 1: mount source {host.tree / name} {why}; the rule's devices are not "
                     "exported until that is put right",)
    if name != "missing":
        entry = CdiDevice("x", (), (("A", "b"),), ((str(host.tree / name), "/mnt/x"),))
        with pytest.raises(CdiError, match=why.split(",")[0]):
            device_entry(entry)


@needs_root
def test_a_symlink_out_of_the_allowed_trees_is_refused(host: Host) -> None:
    resources, found = host.scan("link")
    assert resources == []
    assert found == (f"rule 1: mount source {host.tree / 'link'} resolves to {host.tree.parent / 'outside'}, "
                     "outside the host paths a mount may expose: refused; the rule's devices are not "
                     "exported until that is put right",)


@needs_root
@pytest.mark.parametrize("name", ["file", "dir"])
def test_files_and_directories_are_mounted(host: Host, name: str) -> None:
    assert host.scan(name) == (["null"], ())
    device_entry(CdiDevice("x", (), (), ((str(host.tree / name), "/mnt/x"),)))


@needs_root
@pytest.mark.e2e
def test_allocate_refuses_a_mount_swapped_for_a_socket_after_the_scan(node: Node) -> None:
    """The daemon scanned a good directory; someone replaces it with a socket: Allocate must not
    hand it over, and says why."""
    tree = node.root / "allowed"
    (tree / "calib").mkdir(parents=True)
    mkdev(node.dev / "null", major=1, minor=3)
    node.write_config(mount_rule(str(tree / "calib")))

    async def scenario() -> None:
        from grpclib.exceptions import GRPCError

        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        node.start("--allow-mount-prefix", str(tree))
        try:
            await kubelet.wait_for(lambda: kubelet.healthy("smarter-devices/null") == 1, timeout=30)
            [given] = (await kubelet.allocate("smarter-devices/null", ["0"])).container_responses
            assert [(m.host_path, m.read_only) for m in given.mounts] == [(str(tree / "calib"), True)]
            (tree / "calib").rmdir()
            with socket.socket(socket.AF_UNIX) as listener:
                listener.bind(str(tree / "calib"))
                with pytest.raises(GRPCError) as info:
                    await kubelet.allocate("smarter-devices/null", ["0"])
            assert info.value.message == (f"smarter-devices/null: mount source {tree / 'calib'} is a "
                                          "socket, not a file or directory: refused")
        finally:
            await kubelet.stop()

    asyncio.run(asyncio.wait_for(scenario(), 90))
