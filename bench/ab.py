"""A/B: this tree's daemon against another checkout's, alternately, with the same stand-in.

One VM's speed drifts from hour to hour (the same 2.0 code measured 0.48 ms per Allocate one day
and 0.86-1.34 ms another), so two builds are only compared in pairs taken one right after the
other. Each round starts each daemon on the default config with 20 devices, warms the connection
(100 Allocates), then times 1,000 Allocates and reads both ends' CPU and the daemon's RSS.

    sudo .venv/bin/python bench/ab.py OTHER_SRC [--rounds 3]

``OTHER_SRC`` is the ``src`` directory of another checkout (``git worktree add /tmp/v21 90a5050``
gives ``/tmp/v21/src``); it runs with the same interpreter and dependencies, first on the path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # bench/run.py: the node, the stand-in, the helpers

BASE_ENV = dict(run.DAEMON_ENV)


async def one(src: str | None, calls: int) -> str:
    run.DAEMON_ENV.clear()
    run.DAEMON_ENV.update(BASE_ENV)
    if src:
        run.DAEMON_ENV["PYTHONPATH"] = src
    node = run.Node(run.DEFAULT_DEVICES)
    started = await node.start(run.DEFAULT_RESOURCES)
    assert node.proc is not None
    await asyncio.sleep(0.5)
    resource = run.PREFIX + "video0"
    for i in range(100):
        await node.kubelet.allocate(resource, [str(i % 20)])
    daemon, own = run.cpu_seconds(node.proc.pid), time.process_time()
    took = []
    for i in range(calls):
        t0 = time.perf_counter()
        await node.kubelet.allocate(resource, [str(i % 20)])
        took.append((time.perf_counter() - t0) * 1000)
    daemon = (run.cpu_seconds(node.proc.pid) - daemon) / calls * 1000
    own = (time.process_time() - own) / calls * 1000
    rss = run.proc_status(node.proc.pid)["VmRSS"]
    await node.close()
    return (f"start {started:.3f} s  Allocate p50 {run.pct(took, 50):.2f} / p99 {run.pct(took, 99):.2f} ms"
            f"  CPU per call: daemon {daemon:.3f}, stand-in {own:.3f} ms  RSS {rss:.1f} MiB")


async def main(other: str, rounds: int, calls: int) -> None:
    for round_ in range(1, rounds + 1):
        for label, src in (("this tree", None), ("other    ", other)):
            print(f"round {round_} {label}  {await one(src, calls)}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other_src", help="the src directory of the other checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (mknod)")
    if not (Path(args.other_src) / "smarter_device_manager").is_dir():
        sys.exit(f"{args.other_src} holds no smarter_device_manager package")
    asyncio.run(main(args.other_src, args.rounds, args.calls))
