"""Where the daemon's time goes during Allocate calls: a cProfile of the daemon, summed by part.

Runs the daemon under ``cProfile`` (default config, 20 devices, the kubelet stand-in of
``bench/run.py``), makes N Allocate calls, stops it and prints the CPU (cProfile's own time, so
the sum is the profiled run's total) per part of the process, and the functions that took most.
cProfile slows Python code several times over; read shares, not milliseconds.

    sudo .venv/bin/python bench/profile.py [--calls 3000] [--src OTHER_SRC] [--top 20]

``--src`` profiles another checkout's daemon (its ``src`` directory), as ``bench/ab.py`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # bench/run.py: the node, the stand-in, the helpers

PARTS = (  # (part, what a path or name holds), first match wins
    ("waiting in epoll (idle)", "select.epoll"),
    ("socket send/recv syscalls", "_socket.socket"),
    ("our Allocate (plugin, handover, checks)", "deviceplugin/plugin.py"),
    ("our Allocate (plugin, handover, checks)", "handover.py"),
    ("our Allocate (plugin, handover, checks)", "discovery.py"),
    ("our Allocate (plugin, handover, checks)", "mountpolicy.py"),
    ("our messages codec", "api/messages.py"),
    ("HTTP/2 + gRPC: grpcwire, hpackdecode", "grpcwire.py"),
    ("HTTP/2 + gRPC: grpcwire, hpackdecode", "hpackdecode.py"),
    ("HTTP/2 + gRPC: grpclib, h2, hpack, hyperframe, multidict", "site-packages/grpclib"),
    ("HTTP/2 + gRPC: grpclib, h2, hpack, hyperframe, multidict", "site-packages/h2"),
    ("HTTP/2 + gRPC: grpclib, h2, hpack, hyperframe, multidict", "site-packages/hpack"),
    ("HTTP/2 + gRPC: grpclib, h2, hpack, hyperframe, multidict", "site-packages/hyperframe"),
    ("HTTP/2 + gRPC: grpclib, h2, hpack, hyperframe, multidict", "site-packages/multidict"),
    ("HTTP/2 + gRPC: grpclib, h2, hpack, hyperframe, multidict", "smarter_device_manager/lowmem.py"),
    ("asyncio event loop", "asyncio/"),
    ("asyncio event loop", "selectors.py"),
    ("asyncio event loop", "_contextvars"),
)


def part_of(where: str) -> str:
    for part, needle in PARTS:
        if needle in where:
            return part
    return "other (start-up, logging, builtins)"


class ProfiledNode(run.Node):
    def __init__(self, out: str) -> None:
        super().__init__(run.DEFAULT_DEVICES)
        self.out = out

    def spawn(self) -> None:
        argv = [sys.executable, "-m", "cProfile", "-o", self.out, "-m", "smarter_device_manager",
                "serve", "--dev-dir", str(self.dev), "--plugin-dir", str(self.plugins),
                "--log-level", "warning"]
        self.proc = subprocess.Popen(argv, env=run.DAEMON_ENV)


async def profile(out: str, calls: int) -> None:
    node = ProfiledNode(out)
    await node.start(run.DEFAULT_RESOURCES)
    for i in range(calls):
        await node.kubelet.allocate(run.PREFIX + "video0", [str(i % 20)])
    node.terminate()  # the profile is written as the daemon exits
    await node.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--src", help="another checkout's src directory to profile instead")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (mknod)", file=sys.stderr)
        return 2
    if args.src:
        run.DAEMON_ENV["PYTHONPATH"] = args.src
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "daemon.prof")
        asyncio.run(profile(out, args.calls))
        stats = pstats.Stats(out)
    table = stats.stats  # type: ignore[attr-defined]
    parts: dict[str, float] = {}
    for (filename, _line, name), (_cc, _nc, own, _cum, _callers) in table.items():
        where = f"{filename}:{name}"
        parts[part_of(where)] = parts.get(part_of(where), 0.0) + own
    busy = sum(v for k, v in parts.items() if not k.startswith("waiting"))
    print(f"{args.calls} Allocate calls; the daemon's own time by part (cProfile), busy {busy:.2f} s "
          f"= {busy / args.calls * 1000:.3f} ms a call under the profiler")
    for part, own in sorted(parts.items(), key=lambda kv: -kv[1]):
        share = "" if part.startswith("waiting") else f"{own / busy * 100:5.1f} %"
        print(f"  {part:<60} {own:6.2f} s  {share}")
    print(f"\nthe {args.top} functions with most own time")
    ranked = sorted(table.items(), key=lambda kv: -kv[1][2])[:args.top]
    for (filename, line, name), (_cc, calls_, own, cum, _callers) in ranked:
        short = "/".join(filename.split("/")[-2:])
        print(f"  {own:6.3f} s own {cum:6.3f} s cum {calls_:7d}x  {short}:{line} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
