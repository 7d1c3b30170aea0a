"""The memory trims still apply to the pinned libraries, and do what they claim.

Run in a subprocess: ``lowmem.install()`` patches modules process-wide.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHECK = textwrap.dedent("""
    import asyncio, os, tempfile
    from smarter_device_manager import lowmem
    lowmem.install()
    import grpclib.server, h2.settings, hpack.table
    from grpclib.client import Channel
    from grpclib.server import Server
    from smarter_device_manager.api import messages as pb
    from smarter_device_manager.discovery import Resource
    from smarter_device_manager.plugin import DevicePlugin, Paths, PluginServer

    assert all(type(v) is lowmem.SmallList for v in h2.settings.Settings()._settings.values())
    assert type(hpack.table.HeaderTable().dynamic_entries) is lowmem.SmallList
    assert grpclib.server.Handler is lowmem.ForgetfulHandler
    import grpclib.protocol
    assert grpclib.protocol.H2Connection is lowmem.LeanH2Connection
    assert grpclib.protocol.EventsProcessor is lowmem.LeanEventsProcessor

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
            await asyncio.sleep(0.05)
            [handler] = server._server._handlers
            assert not handler._tasks, f"finished streams kept: {len(handler._tasks)}"
            [protocol] = server._server._protocols
            dispatch = protocol.connection._connection._frame_dispatch_table
            assert type(dispatch) is lowmem._FrameDispatch
            assert "processors" not in vars(protocol.processor)
            channel.close()
            await server.stop()
    asyncio.run(main())
    print("ok")
""")


def test_trims_apply_and_finished_streams_are_forgotten() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_missing_attribute_fails_loudly() -> None:
    code = ("import grpclib.protocol as p; del p.deque\n"
            "from smarter_device_manager import lowmem\n"
            "try:\n    lowmem.install()\nexcept RuntimeError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert "has no attribute 'deque'; re-check the pins" in result.stdout
