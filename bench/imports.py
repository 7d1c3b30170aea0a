"""The import graph of ``serve``, module by module: what each MiB (and millisecond) buys.

Runs the daemon as ``bench/run.py`` does (default config, 20 devices, the kubelet stand-in) with
``bench/importhook.py`` loaded first, waits until all 20 resources stream, SIGTERMs it and prints
each module's own resident memory and import time, grouped by package, largest first. Needs root
(mknod). Run: ``.venv/bin/python bench/imports.py [--modules N] [--json FILE]``.

The memory figures are the growth of the resident set while a module executed, minus what the
modules it imported added: pages, so read the groups, not single small modules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import DAEMON_ENV, DEFAULT_DEVICES, DEFAULT_RESOURCES, Node, proc_status

HOOK = Path(__file__).resolve().parent


def group_of(name: str) -> str:
    """The package a module is counted under: ours by subpackage, the rest by top level."""
    parts = name.split(".")
    if parts[0] == "smarter_device_manager":
        return ".".join(parts[:2]) if len(parts) > 2 else "smarter_device_manager (core)"
    if parts[0] == "asyncio":
        return "asyncio"
    return parts[0]


class HookedNode(Node):
    """The daemon with the import hook in front of every import."""

    def __init__(self, out: str) -> None:
        super().__init__(DEFAULT_DEVICES)
        self.out = out

    def spawn(self) -> None:
        import subprocess

        code = (f"import sys; sys.path.insert(0, {str(HOOK)!r}); import importhook; "
                "importhook.install(); sys.path.pop(0); "
                "from smarter_device_manager.cli import main; sys.argv[0] = 'smarter-device-manager'; "
                "sys.exit(main())")
        argv = [sys.executable, "-c", code, "serve", "--dev-dir", str(self.dev), "--plugin-dir",
                str(self.plugins), "--log-level", "warning"]
        self.proc = subprocess.Popen(argv, env={**DAEMON_ENV, "SDM_IMPORTS_OUT": self.out})


async def measure(out: str) -> dict[str, float]:
    node = HookedNode(out)
    await node.start(DEFAULT_RESOURCES)
    await asyncio.sleep(1.0)
    assert node.proc is not None
    status = proc_status(node.proc.pid)
    node.terminate()
    await node.close()
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modules", type=int, default=25, help="the N largest modules to list")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (mknod)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "imports.json")
        status = asyncio.run(measure(out))
        with open(out, encoding="utf-8") as f:
            data = json.load(f)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
    modules: dict[str, list[float]] = data["modules"]
    imported_kb = sum(m[0] for m in modules.values())
    imported_ms = sum(m[1] for m in modules.values())
    print(f"python {sys.version.split()[0]}; serve with 20 resources streaming: "
          f"VmRSS {status['VmRSS']:.1f} MiB")
    print(f"  interpreter before the first import of ours {data['start_kb'] / 1024:6.1f} MiB "
          f"({len(data['preloaded'])} modules preloaded by the interpreter and site)")
    print(f"  imports ({len(modules)} modules)                   {imported_kb / 1024:6.1f} MiB  "
          f"{imported_ms:6.0f} ms")
    print(f"  running: sockets, plugins, streams, buffers  "
          f"{(data['end_kb'] - data['start_kb'] - imported_kb) / 1024:6.1f} MiB (at exit)")
    groups: dict[str, list[float]] = {}
    for name, (kb, ms, *_rest) in modules.items():
        entry = groups.setdefault(group_of(name), [0.0, 0.0, 0.0])
        entry[0] += kb
        entry[1] += ms
        entry[2] += 1
    print("\nby package (self figures summed)                MiB      ms  modules")
    for name, (kb, ms, count) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        if kb >= 32 or ms >= 1:
            print(f"  {name:<44} {kb / 1024:5.2f}  {ms:6.1f}  {count:5.0f}")
    print(f"\nthe {args.modules} largest modules (self)")
    for name, (kb, ms, *_rest) in sorted(modules.items(), key=lambda kv: -kv[1][0])[:args.modules]:
        print(f"  {name:<44} {kb / 1024:5.2f}  {ms:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
