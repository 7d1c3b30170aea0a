"""The memory trims apply to the pinned libraries and do what they claim; a trim whose
target is missing or changed is skipped with one warning, and the daemon still works.

Run in subprocesses: ``lowmem.install()`` patches modules process-wide.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Coroutine
from typing import Any

import pytest
from conftest import Node, mkdev, needs_root
from kubelet_standin import KubeletStandin

CHECK = textwrap.dedent("""
    import asyncio, logging, os, tempfile
    logging.basicConfig(level=logging.WARNING)
    from smarter_device_manager import lowmem
    assert lowmem.install() == []
    import grpclib.server, h2.settings, hpack.table, grpclib.protocol
    from grpclib.client import Channel
    from grpclib.server import Server
    from smarter_device_manager.api import messages as pb
    from smarter_device_manager.discovery import Resource
    from smarter_device_manager.deviceplugin.plugin import DevicePlugin, Paths, PluginServer

    assert all(type(v) is lowmem.SmallList for v in h2.settings.Settings()._settings.values())
    assert type(hpack.table.HeaderTable().dynamic_entries) is lowmem.SmallList
    assert grpclib.server.Handler.__name__ == "ForgetfulHandler"
    assert grpclib.protocol.H2Connection.__name__ == "LeanH2Connection"
    assert grpclib.protocol.EventsProcessor.__name__ == "LeanEventsProcessor"
    assert grpclib.protocol.Event is lowmem.SmallEvent
    assert grpclib.protocol.Queue is lowmem.SmallQueue
    assert grpclib.protocol.deque is lowmem.SmallList

    async def eventually(condition, what):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not condition():
            assert loop.time() < deadline, what
            await asyncio.sleep(0.01)

    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            plugin = DevicePlugin("d/x", Resource("x", "x", "device", 2, 1, ()), Paths(tmp, tmp))
            server = PluginServer(plugin, os.path.join(tmp, "x.sock"))
            await server.start()
            channel = Channel(path=server.socket_path)
            from grpclib.client import UnaryUnaryMethod
            options = UnaryUnaryMethod(channel, "/v1beta1.DevicePlugin/GetDevicePluginOptions",
                                       pb.Empty, pb.DevicePluginOptions)
            for _ in range(5):
                assert (await options(pb.Empty())).get_preferred_allocation_available
            [handler] = server._server._handlers
            await eventually(lambda: not handler._tasks, "finished streams kept")
            [protocol] = server._server._protocols
            dispatch = protocol.connection._connection._frame_dispatch_table
            assert type(dispatch) is lowmem._FrameDispatch
            assert "processors" not in vars(protocol.processor)
            channel.close()
            await server.stop()
    asyncio.run(main())
    print("ok")
""")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)


def test_trims_apply_and_finished_streams_are_forgotten() -> None:
    result = run_python(CHECK)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "not applied" not in result.stderr


# Each breaks one target the way a new release of the library could, in name, type or meaning.
BREAKAGES = {
    "missing": ("grpclib.protocol.EventsProcessor",
                "import grpclib.protocol as m; del m.EventsProcessor",
                "has no 'EventsProcessor'"),
    "not a class": ("grpclib.server.Handler",
                    "import grpclib.server as m; m.Handler = lambda *a: None",
                    "not a class"),
    "other base": ("grpclib.server.Handler",
                   "import grpclib.server as m\nclass H: pass\nm.Handler = H",
                   "no longer a subclass of AbstractHandler"),
    "signature": ("grpclib.server.Handler",
                  "import grpclib.server as m\nold = m.Handler.accept\n"
                  "def accept(self, stream, headers, release_stream, extra=None):\n"
                  "    return old(self, stream, headers, release_stream)\n"
                  "m.Handler.accept = accept",
                  "Handler.accept(self, stream, headers, release_stream, extra) has changed"),
    "meaning": ("grpclib.protocol.EventsProcessor",
                "import grpclib.protocol as m\n"
                "m.EventsProcessor.process = lambda self, event: getattr(self, 'table')[event]",
                "no longer uses processors"),
    "type": ("hpack.table.deque",
             "import collections, hpack.table as m\n"
             "m.deque = type('deque', (collections.deque,), {})",
             "not collections.deque"),
    "new deque use": ("h2.settings.collections",
                      "import h2.settings as m\n"
                      "m.Settings.trim = lambda self: self._settings[1].rotate(1)",
                      "Settings.trim uses deque's rotate"),
    "dispatch rename": ("grpclib.protocol.H2Connection",
                        "import h2.connection as m\n"
                        "m.H2Connection._receive_frame = lambda self, frame: self._table[frame]",
                        "_receive_frame no longer uses _frame_dispatch_table"),
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_a_missing_or_changed_target_is_skipped_with_one_warning(case: str) -> None:
    target, breakage, reason = BREAKAGES[case]
    code = breakage + textwrap.dedent("""
        import logging
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(message)s")
        from smarter_device_manager import lowmem
        print(lowmem.install())
    """)
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr([target])
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, result.stderr
    assert f"memory trim of {target} (" in warnings[0] and "not applied" in warnings[0]
    assert reason in warnings[0]
    assert "Traceback" not in result.stderr


def test_every_trim_names_its_target() -> None:
    from smarter_device_manager.lowmem import TRIMS

    targets = [trim.target for trim in TRIMS]
    assert len(set(targets)) == len(targets) == 8


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


@needs_root
@pytest.mark.e2e
def test_the_daemon_starts_and_serves_when_targets_changed(node: Node) -> None:
    """The daemon itself, started with two targets changed as a new release might."""
    mkdev(node.dev / "ttyUSB0", major=188)
    node.write_config("- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 2\n")
    prelude = BREAKAGES["signature"][1] + "\n" + BREAKAGES["type"][1]

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        node.start(prelude=prelude)
        await kubelet.wait_for(lambda: kubelet.healthy("smarter-devices/ttyUSB0") == 2)
        response = await kubelet.allocate("smarter-devices/ttyUSB0", ["1"])
        assert response.container_responses[0].devices[0].container_path == "/dev/ttyUSB0"
        await kubelet.stop()

    run(scenario())
    proc = node.procs[0]
    assert proc.stop() == 0
    log = proc.log
    assert log.count("not applied") == 2, log
    assert "WARNING memory trim of grpclib.server.Handler" in " ".join(log.split())
    assert "memory trim of hpack.table.deque" in log
    assert "Traceback" not in log
