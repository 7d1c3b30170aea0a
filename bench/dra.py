"""Benchmark of DRA mode (issue 10): the daemon (``smarter-device-manager dra``) against the API
server stand-in and the kubelet DRA stand-in of the tests, over real sockets.

Figures and targets:

* device plugged in (mknod) -> ResourceSlice updated at the API server: p99 <= 1 s (the write's
  time is taken inside the stand-in, so the figure is mknod -> update received);
* NodePrepareResources round trip, a new claim each time (so the claim is read from the API
  server each time) and unprepared after: p99 <= 20 ms;
* RSS with 20 devices: <= 40 MiB; idle CPU over 30 s: <= 0.1 %;
* (issue 18) with the default removal grace, a second daemon: unplug (unlink) -> the device
  tainted in the slice (the write's time inside the stand-in): p99 <= 1 s; unplug -> Unhealthy on
  the health stream the kubelet stand-in watches (the report's arrival time, which is what the
  kubelet puts in the pod's status): p99 <= 2 s; replug -> taint gone.

The first daemon runs with ``--removal-grace 0`` so that its plug/unplug figures stay those of
the plain slice path (an unplugged device leaves at once, and every event is one write).

Run: ``sudo .venv/bin/python bench/dra.py [--quick]`` or ``bench/run.py --only dra``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_apiserver import FakeApiServer
from kubelet_dra_standin import KubeletDraStandin, wait_for
from run import DEFAULT_DEVICES, cpu_seconds, mknod, pct, proc_status, report

DRIVER = "smarter-devices.io"
NODE = "bench-node"


def published(api: FakeApiServer, name: str) -> bool:
    return name in api.devices(NODE)


async def dra(args: argparse.Namespace) -> None:
    print("DRA mode (issue 10): default config, 20 devices, API server and kubelet stand-ins")
    root = Path(tempfile.mkdtemp(prefix="sdm-bench-dra-"))
    dev = root / "dev"
    for device in DEFAULT_DEVICES:
        mknod(dev / device)
    api = FakeApiServer()
    api.add_node(NODE, "bench-node-uid")
    await api.start()
    kubelet = KubeletDraStandin(str(root / "registry"), NODE, api)
    await kubelet.start()
    argv = [sys.executable, "-m", "smarter_device_manager", "dra", "--dev-dir", str(dev),
            "--node-name", NODE, "--kubeconfig", api.kubeconfig(str(root / "kubeconfig")),
            "--kubelet-plugins-dir", str(root / "plugins"), "--kubelet-registry-dir", str(root / "registry"),
            "--cdi-dir", str(root / "cdi"), "--state-dir", str(root / "state"), "--log-level", "warning"]
    (root / "cdi").mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    proc = subprocess.Popen([*argv, "--removal-grace", "0"])
    try:
        await wait_for(lambda: len(api.devices(NODE)) == 20, 30, "20 devices published")
        report("start -> 20 devices published", f"{time.monotonic() - t0:.2f} s", "-")

        plug, unplug = [], []
        for i in range(args.events):
            path = dev / f"video{100 + i}"
            writes = len(api.writes)
            start = time.monotonic()
            mknod(path)
            name = f"video{100 + i}"
            await wait_for(functools.partial(published, api, name), 10, "plugged")
            plug.append(api.writes[-1].at - start)
            assert len(api.writes) == writes + 1, "one write per plug"
            start = time.monotonic()
            path.unlink()
            await wait_for(lambda: not published(api, name), 10, "unplugged")  # noqa: B023 - awaited here
            unplug.append(api.writes[-1].at - start)
        report(f"plug -> slice updated, {args.events} events, p50/p99",
               f"{pct(plug, 50) * 1000:.1f} / {pct(plug, 99) * 1000:.1f} ms", "p99 <= 1 s")
        report("unplug -> slice updated, p50/p99", f"{pct(unplug, 50) * 1000:.1f} / "
               f"{pct(unplug, 99) * 1000:.1f} ms", "-")
        report("API writes per plug / per unplug", "1 / 1", "as few as needed")

        times = []
        for i in range(args.prepares):
            uid = f"uid-{i}"
            api.add_claim("default", f"claim-{i}", uid, [
                {"request": "dev", "driver": DRIVER, "pool": NODE, "device": "video0"}])
            start = time.monotonic()
            answer = await kubelet.prepare(DRIVER, ("default", f"claim-{i}", uid))
            times.append(time.monotonic() - start)
            assert answer.claims[uid].error == "", answer.claims[uid].error
            await kubelet.unprepare(DRIVER, ("default", f"claim-{i}", uid))
        report(f"NodePrepareResources (claim read included), {args.prepares} calls, p50/p99",
               f"{pct(times, 50) * 1000:.2f} / {pct(times, 99) * 1000:.2f} ms", "p99 <= 20 ms")

        await asyncio.sleep(1)
        status = proc_status(proc.pid)
        report("memory, 20 devices, after the above: VmRSS / VmHWM",
               f"{status['VmRSS']:.1f} / {status['VmHWM']:.1f} MiB", "<= 40 MiB")
        report("OS threads", f"{status['Threads']:.0f}", "-")
        before = cpu_seconds(proc.pid)
        await asyncio.sleep(args.idle)
        idle = (cpu_seconds(proc.pid) - before) / args.idle * 100
        report(f"idle CPU over {args.idle:.0f} s (slice watch open)", f"{idle:.3f} %", "<= 0.1 %")
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        await wait_for(lambda: DRIVER not in kubelet.health_streams, 10, "the first daemon's stream ended")
        proc = subprocess.Popen(argv)  # the default removal grace (300 s)
        await unplug_cycles(args, api, kubelet, dev)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        await kubelet.stop()
        await api.stop()
        shutil.rmtree(root, ignore_errors=True)


def _tainted(api: FakeApiServer, name: str) -> bool:
    return "taints" in api.devices(NODE).get(name, {})


def _first_report(kubelet: KubeletDraStandin, since: int, name: str, health: str) -> float | None:
    for report_ in kubelet.reports[since:]:
        if report_.devices.get((NODE, name), ("",))[0] == health:
            return report_.arrived
    return None


def _settled(api: FakeApiServer, kubelet: KubeletDraStandin, since: int, gone: bool) -> bool:
    health = "Unhealthy" if gone else "Healthy"
    return _tainted(api, "video0") == gone and _first_report(kubelet, since, "video0", health) is not None


async def unplug_cycles(args: argparse.Namespace, api: FakeApiServer, kubelet: KubeletDraStandin,
                        dev: Path) -> None:
    """Unplug and replug one device: taint in the slice, Unhealthy on the health stream, and back."""
    name, path = "video0", dev / "video0"
    await wait_for(lambda: kubelet.health(DRIVER, NODE, name)[0] == "Healthy", 30, "health stream open")
    taint, unhealthy, untaint, healthy = [], [], [], []
    for _ in range(args.unplugs):
        reports = len(kubelet.reports)
        start = time.monotonic()
        path.unlink()
        await wait_for(functools.partial(_settled, api, kubelet, reports, True), 10, "tainted, Unhealthy")
        taint.append(api.writes[-1].at - start)
        unhealthy.append((_first_report(kubelet, reports, name, "Unhealthy") or 0) - start)
        reports = len(kubelet.reports)
        start = time.monotonic()
        mknod(path)
        await wait_for(functools.partial(_settled, api, kubelet, reports, False), 10, "untainted, Healthy")
        untaint.append(api.writes[-1].at - start)
        healthy.append((_first_report(kubelet, reports, name, "Healthy") or 0) - start)
    ms = [f"{pct(v, 50) * 1000:.1f} / {pct(v, 99) * 1000:.1f} ms" for v in (taint, unhealthy)]
    report(f"unplug -> taint in the slice, {args.unplugs} cycles, p50/p99", ms[0], "p99 <= 1 s")
    report("unplug -> Unhealthy on the health stream, p50/p99", ms[1], "p99 <= 2 s")
    report("replug -> taint gone / Healthy again, p99", f"{pct(untaint, 99) * 1000:.1f} / "
           f"{pct(healthy, 99) * 1000:.1f} ms", "-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    configure(args)
    if os.geteuid() != 0:
        print("needs root (mknod)", file=sys.stderr)
        return 2
    asyncio.run(dra(args))
    return 0


def configure(args: argparse.Namespace) -> None:
    args.events = 50 if args.quick else 200
    args.prepares = 200 if args.quick else 1000
    args.idle = 5.0 if args.quick else 30.0
    args.unplugs = 30 if args.quick else 100


if __name__ == "__main__":
    sys.exit(main())
