#!/usr/bin/env python3
"""Memory of the daemon in its image, 20 resources registered and streaming (not a test).

    sudo .venv/bin/python scripts/image-memory.py IMAGE [--runtime /usr/sbin/runc] [--seconds 30]
        [--mode serve|dra]

--mode dra runs DRA mode instead, against the test suite's API-server stand-in
(tests/fake_apiserver.py, over HTTP on 127.0.0.1, so the container shares the host's network)
and kubelet DRA stand-in: measured once the kubelet registered it and its ResourceSlice lists
the 20 devices, with ssl and the API client loaded.

Makes 20 device nodes (mknod) in a temp dir, which the default rules turn into 20 resources:
video0-9, gpiochip0-3, i2c-1, ttyUSB0, ttyACM0, rtc0, fuse and net/tun. Runs IMAGE with podman,
read-only and without capabilities, that dir mounted read-only at /dev-host, and a host dir with
the test suite's kubelet stand-in (tests/kubelet_standin.py) at /var/lib/kubelet/device-plugins.
Once all 20 resources are registered and their ListAndWatch streams are open, it reads the
daemon's /proc/PID/status from the host every 10 s and prints VmRSS/VmHWM/RssAnon/RssFile.

A foreign-architecture image runs under qemu-user: PID is then the qemu process, whose RSS holds
the emulated program's pages *plus* qemu itself and its translated-code cache: an upper bound.
For those the script also prints "guest": the RSS (from /proc/PID/smaps) of the mappings below
qemu's own heap that are not qemu's binary, i.e. where qemu-user places the guest's address
space (guest_base 0 on this x86-64 host): an estimate of what the program itself uses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kubelet_standin import KubeletStandin  # noqa: E402

DEVICES = ([(f"video{i}", 81, i) for i in range(10)] + [(f"gpiochip{i}", 254, i) for i in range(4)]
           + [("i2c-1", 89, 1), ("ttyUSB0", 188, 0), ("ttyACM0", 166, 0), ("rtc0", 252, 0),
              ("fuse", 10, 229), ("net/tun", 10, 200)])
FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads")


def status(pid: str) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        found = {k: v.strip() for k, _, v in (line.partition(":") for line in f) if k in FIELDS}
    guest = guest_rss_kb(pid)
    if guest is not None:
        found["guest"] = f"{guest} kB"
    return found


def guest_rss_kb(pid: str) -> int | None:
    """Under qemu-user: RSS of the guest's mappings (below qemu's [heap], not qemu's binary)."""
    vmas: list[tuple[int, str, int]] = []  # start, name, rss kB
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:
                vmas.append((int(head[0].split("-")[0], 16), head[5] if len(head) > 5 else "", 0))
            elif head[0] == "Rss:":
                start, name, _ = vmas[-1]
                vmas[-1] = (start, name, int(head[1]))
    if not any("qemu" in name for _, name, _ in vmas):
        return None  # native: VmRSS is the figure
    heap = min((start for start, name, _ in vmas if name == "[heap]"), default=None)
    if heap is None:
        return None
    return sum(rss for start, name, rss in vmas if start < heap and "qemu" not in name)


async def sample(podman: list[str], name: str, seconds: int) -> None:
    """Print the container's daemon's memory every 10 s for ``seconds``."""
    pid = subprocess.run([*podman, "inspect", "--format", "{{.State.Pid}}", name],
                         capture_output=True, text=True, check=True).stdout.strip()
    for elapsed in range(0, seconds + 1, 10):
        print(f"  t+{elapsed:>3} s  " + "  ".join(f"{k} {v}" for k, v in status(pid).items()))
        await asyncio.sleep(10)


def remove(podman: list[str], name: str) -> None:
    subprocess.run([*podman, "stop", "-t", "10", name], capture_output=True, check=False)
    subprocess.run([*podman, "rm", name], capture_output=True, check=False)


async def measure_dra(image: str, podman: list[str], seconds: int, extra: list[str]) -> None:
    from fake_apiserver import FakeApiServer
    from kubelet_dra_standin import KubeletDraStandin, wait_for

    work = Path(tempfile.mkdtemp(prefix="sdm-mem-", dir="/tmp"))  # short: AF_UNIX paths
    try:
        dev = work / "dev"
        (dev / "net").mkdir(parents=True)
        for name, major, minor in DEVICES:
            os.mknod(dev / name, 0o600 | 0o020000, os.makedev(major, minor))
        api = FakeApiServer()
        await api.start()
        kubeconfig = api.kubeconfig(str(work / "kubeconfig"))
        kubelet = KubeletDraStandin(str(work / "registry"), "node-mem", api)
        await kubelet.start()
        name = f"sdm-mem-{os.getpid()}"
        started = time.monotonic()
        subprocess.run([*podman, "run", "-d", "--name", name, "--network", "host",
                        "--cap-drop=ALL", "--read-only", "-v", f"{work}:{work}", *extra, image,
                        "dra", "--dev-dir", str(dev), "--node-name", "node-mem",
                        "--kubeconfig", kubeconfig, "--kubelet-plugins-dir", str(work / "plugins"),
                        "--kubelet-registry-dir", str(work / "registry"),
                        "--cdi-dir", str(work / "cdi"), "--state-dir", str(work / "state")],
                       check=True, stdout=subprocess.DEVNULL)
        try:
            await wait_for(lambda: len(api.devices("node-mem")) == len(DEVICES), 120, "slice")
            print(f"{image} dra: registered, {len(api.devices('node-mem'))} devices in the "
                  f"ResourceSlice {time.monotonic() - started:.1f} s after podman run")
            await sample(podman, name, seconds)
        finally:
            remove(podman, name)
            await kubelet.stop()
            await api.stop()
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


async def measure(image: str, podman: list[str], seconds: int, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dev, plugins = Path(tmp) / "dev", Path(tmp) / "plugins"
        (dev / "net").mkdir(parents=True)
        plugins.mkdir()
        for name, major, minor in DEVICES:
            os.mknod(dev / name, 0o600 | 0o020000, os.makedev(major, minor))
        kubelet = KubeletStandin(str(plugins))
        await kubelet.start()
        name = f"sdm-mem-{os.getpid()}"
        started = time.monotonic()
        subprocess.run([*podman, "run", "-d", "--name", name, "--network", "none",
                        "--cap-drop=ALL", "--read-only", "-v", f"{dev}:/dev-host:ro",
                        "-v", f"{plugins}:/var/lib/kubelet/device-plugins", *extra, image,
                        "serve", "--dev-dir", "/dev-host"], check=True, stdout=subprocess.DEVNULL)
        try:
            await kubelet.wait_for(lambda: len(kubelet.plugins) == len(DEVICES) and all(
                s.streaming and s.devices for s in kubelet.plugins.values()), timeout=120)
            print(f"{image}: {len(kubelet.plugins)} resources registered and streaming "
                  f"{time.monotonic() - started:.1f} s after podman run")
            await sample(podman, name, seconds)
        finally:
            remove(podman, name)
            await kubelet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("--runtime", help="podman --runtime (e.g. /usr/sbin/runc)")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--mode", choices=["serve", "dra"], default="serve")
    parser.add_argument("--podman-arg", action="append", default=[],
                        help="extra `podman run` argument (repeatable), e.g. -e=NAME=VALUE")
    args = parser.parse_args()
    podman = ["podman"] + (["--runtime", args.runtime] if args.runtime else [])
    run = measure_dra if args.mode == "dra" else measure
    asyncio.run(run(args.image, podman, args.seconds, args.podman_arg))


if __name__ == "__main__":
    main()
