"""The DevicePlugin gRPC service for one resource, and the server that hosts it.

A plugin knows its resource and nothing else: not the kubelet, not the config,
not other resources. The reconcile loop swaps its resource (``update``) and
health; the plugin turns that into ListAndWatch messages and Allocate answers.

Device IDs are ``"0"`` ... ``"N-1"``: short, printable, and stable across
restarts so the kubelet's checkpoint keeps matching (the original sent control
characters here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from grpclib import GRPCError, Status
from grpclib.server import Server, Stream

from smarter_device_manager.api import messages as pb
from smarter_device_manager.api.services import DevicePluginService
from smarter_device_manager.discovery import KIND_DIRECTORY, Resource, directory_nodes, node_problem
from smarter_device_manager.lowmem import SmallEvent

log = logging.getLogger(__name__)

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
OPTIONS = pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


# (resource name, device IDs, container paths handed over, error or None)
AllocateHook = Callable[[str, list[str], list[str], "str | None"], None]


@dataclass(frozen=True)
class Paths:
    """Where device nodes are, seen by the daemon and by the node's runtime."""

    dev_dir: str
    host_dev_dir: str


class DevicePlugin(DevicePluginService):
    """Serves one resource: ``<prefix>/<resource.name>``."""

    __slots__ = ("_changed", "_idle", "_on_allocate", "_paths", "_stopped", "healthy",
                 "messages_sent", "resource", "resource_name", "streams")

    def __init__(
        self,
        resource_name: str,
        resource: Resource,
        paths: Paths,
        on_allocate: AllocateHook | None = None,
    ) -> None:
        self.resource_name = resource_name
        self.resource = resource
        self.healthy = True
        self._paths = paths
        self._on_allocate = on_allocate
        self._changed = SmallEvent()  # replaced on every change; streams wait on it
        self._stopped = False
        self._idle: asyncio.Future[None] | None = None  # only while stopping
        self.streams = 0
        self.messages_sent = 0

    # --- state, driven by reconcile -------------------------------------------------
    def update(self, resource: Resource, healthy: bool) -> bool:
        """Take a new resource/health; return True if the kubelet must be told."""
        announce = resource.count != self.resource.count or healthy != self.healthy
        self.resource = resource
        self.healthy = healthy
        if announce:
            self._wake()
        return announce

    def stop(self) -> None:
        """End every ListAndWatch stream (the kubelet then marks devices unhealthy)."""
        self._stopped = True
        self._wake()

    def resume(self) -> None:
        self._stopped = False

    def _wake(self) -> None:
        self._changed.set()
        self._changed = SmallEvent()

    def device_ids(self) -> list[str]:
        return [str(i) for i in range(self.resource.count)]

    def list_response(self) -> pb.ListAndWatchResponse:
        health = HEALTHY if self.healthy else UNHEALTHY
        return pb.ListAndWatchResponse(
            devices=[pb.Device(ID=device_id, health=health) for device_id in self.device_ids()]
        )

    # --- RPCs --------------------------------------------------------------------------
    async def GetDevicePluginOptions(self, stream: Stream[pb.Empty, pb.DevicePluginOptions]) -> None:
        await stream.recv_message()
        await stream.send_message(OPTIONS)

    async def ListAndWatch(self, stream: Stream[pb.Empty, pb.ListAndWatchResponse]) -> None:
        await stream.recv_message()
        self.streams += 1
        try:
            while not self._stopped:
                changed = self._changed
                await stream.send_message(self.list_response())
                self.messages_sent += 1
                await changed.wait()
        finally:
            self.streams -= 1
            if not self.streams and self._idle is not None and not self._idle.done():
                self._idle.set_result(None)

    async def streams_ended(self, timeout: float) -> None:
        """Wait (briefly) for every stream to send its end, so the kubelet sees a clean close."""
        if not self.streams:
            return
        self._idle = asyncio.get_running_loop().create_future()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        self._idle = None

    async def GetPreferredAllocation(
        self, stream: Stream[pb.PreferredAllocationRequest, pb.PreferredAllocationResponse]
    ) -> None:
        request = await stream.recv_message()
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "no request message")
        responses = []
        for container in request.container_requests:
            chosen = list(dict.fromkeys(container.must_include_deviceIDs))
            for device_id in container.available_deviceIDs:
                if len(chosen) >= container.allocation_size:
                    break
                if device_id not in chosen:
                    chosen.append(device_id)
            responses.append(pb.ContainerPreferredAllocationResponse(deviceIDs=chosen))
        await stream.send_message(pb.PreferredAllocationResponse(container_responses=responses))

    async def Allocate(self, stream: Stream[pb.AllocateRequest, pb.AllocateResponse]) -> None:
        request = await stream.recv_message()
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "no request message")
        known = set(self.device_ids())
        responses = []
        for container in request.container_requests:
            ids = list(container.devices_ids)
            try:
                unknown = [i for i in ids if i not in known]
                if unknown:
                    raise GRPCError(
                        Status.INVALID_ARGUMENT,
                        f"{self.resource_name}: unknown device IDs {unknown}; "
                        f"this plugin has IDs 0 to {len(known) - 1}",
                    )
                specs = self._device_specs()
            except GRPCError as exc:
                self._report(ids, [], str(exc.message))
                raise
            responses.append(pb.ContainerAllocateResponse(devices=specs))
            self._report(ids, [s.container_path for s in specs], None)
        await stream.send_message(pb.AllocateResponse(container_responses=responses))

    def _report(self, ids: list[str], paths: list[str], error: str | None) -> None:
        if self._on_allocate is not None:
            self._on_allocate(self.resource_name, ids, paths, error)

    async def PreStartContainer(
        self, stream: Stream[pb.PreStartContainerRequest, pb.PreStartContainerResponse]
    ) -> None:
        await stream.recv_message()
        await stream.send_message(pb.PreStartContainerResponse())

    def _device_specs(self) -> list[pb.DeviceSpec]:
        """Specs for every node of the resource, each checked to still be a device
        inside the dev dir.

        Checked again here, not only at discovery, because the node may have been
        replaced by something else since the last scan, or a directory on its way
        swapped for a symlink to somewhere else; a container must never be handed a
        regular file, a socket or a node from outside the dev dir. (The runtime opens
        the host path later, when it creates the container; a swap after this check
        is beyond what a device plugin can see.)
        """
        if not self.healthy:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"{self.resource_name}: /dev/{self.resource.path} is gone from the node",
            )
        nodes = self.resource.nodes
        if self.resource.kind == KIND_DIRECTORY:
            # What is in the directory now, not at the last scan: a sound card
            # may have gained or lost nodes since.
            nodes, problems = directory_nodes(self._paths.dev_dir, self.resource.path)
            for problem in problems:
                log.warning("%s: Allocate: %s", self.resource_name, problem)
            if not nodes:
                why = "; ".join(problems) or f"/dev/{self.resource.path} holds no device nodes"
                raise GRPCError(Status.FAILED_PRECONDITION, f"{self.resource_name}: {why}")
        specs = []
        for node in nodes:
            # Checked again here, every node of every kind, never following a symlink.
            refused = node_problem(self._paths.dev_dir, node.source)
            if refused is not None:
                raise GRPCError(Status.FAILED_PRECONDITION, f"{self.resource_name}: {refused}")
            specs.append(
                pb.DeviceSpec(
                    container_path=f"/dev/{node.path}",
                    host_path=f"{self._paths.host_dev_dir.rstrip('/')}/{node.source}",
                    permissions="rw",
                )
            )
        return specs


class _Server(Server):
    """grpclib's Server, which on close() also closes the connections it accepted.

    grpclib only cancels the running calls; the kubelet's connection would stay
    open until the kubelet drops it, and a node that withdraws thousands of
    resources (hotplug bursts) would keep thousands of dead connections.
    """

    _shared: ClassVar[tuple[Any, Any] | None] = None  # (grpclib config, h2 config)

    def __init__(self, handlers: list[Any]) -> None:
        super().__init__(handlers)
        # The configurations are the same for every server: share one pair rather
        # than keep two objects per resource.
        if _Server._shared is None:
            _Server._shared = (self._config, self._h2_config)
        self._config, self._h2_config = _Server._shared
        self._protocols: set[Any] = set()

    def _protocol_factory(self) -> Any:
        # Forget connections that are already closed (a plain set, not a WeakSet
        # or a callback per connection: both cost memory on every resource).
        self._protocols = {p for p in self._protocols if not _closed(p)}
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return protocol

    def close(self) -> None:
        super().close()
        for protocol in list(self._protocols):
            connection = getattr(protocol, "connection", None)
            if connection is not None:
                connection.close()


def _closed(protocol: Any) -> bool:
    connection = getattr(protocol, "connection", None)
    return connection is not None and bool(connection.is_closing())


class PluginServer:
    """A gRPC server on a unix socket hosting one plugin."""

    __slots__ = ("_inode", "_server", "plugin", "socket_path")

    def __init__(self, plugin: DevicePlugin, socket_path: str) -> None:
        self.plugin = plugin
        self.socket_path = socket_path
        self._server: Server | None = None
        self._inode = 0

    async def start(self) -> None:
        _remove_socket(self.socket_path)
        self.plugin.resume()
        server = _Server([self.plugin])
        await server.start(path=self.socket_path)
        self._server = server
        self._inode = os.stat(self.socket_path).st_ino

    def socket_present(self) -> bool:
        """Is our socket file (not a stranger's with the same name) still there?"""
        try:
            return os.stat(self.socket_path).st_ino == self._inode
        except OSError:
            return False

    async def stop(self, end_streams: bool = True) -> None:
        # The socket goes first, so once the kubelet sees its stream end the
        # resource is really gone from the directory too.
        if self.socket_present():
            _remove_socket(self.socket_path)
        if end_streams:
            self.plugin.stop()
            await self.plugin.streams_ended(0.1)
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()


def _remove_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
