"""The DevicePlugin gRPC service for one resource, and the server that hosts it.

A plugin knows its resource and nothing else: not the kubelet, not the config,
not other resources. The reconcile loop swaps its resource (``update``) and
health; the plugin turns that into ListAndWatch messages and Allocate answers.

Device IDs are ``"0"`` ... ``"N-1"``: short, printable, and stable across
restarts so the kubelet's checkpoint keeps matching (the original sent control
characters here). A pool's IDs are its members' stable identities (``A50285BI``,
or ``A50285BI-0`` ... when each member may be shared), so an ID always means the
same physical device, and a member that is unplugged turns only its own IDs
Unhealthy.

What a container gets (docs: README "What a container gets"): the device nodes
at their /dev paths or the rule's ``containerpath`` (pools number it per device
handed over: ``/dev/gps0``, ``/dev/gps1``), the rule's ``env`` and read-only
``mounts``, and ``<PREFIX>_<NAME>`` = the container paths it got (comma
separated; pools also ``..._IDS``), so a program can find its devices without
knowing the node's names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smarter_device_manager.api import messages as pb
from smarter_device_manager.api.services import SERVER_METHODS, DevicePluginService
from smarter_device_manager.discovery import (
    KIND_DIRECTORY,
    KIND_POOL,
    DeviceNode,
    Member,
    Resource,
    directory_nodes,
    node_problem,
)
from smarter_device_manager.grpcserver import UnixServer
from smarter_device_manager.grpcwire import Call, RpcError, Server, Status
from smarter_device_manager.handover import Handover, handover, member_ids

if TYPE_CHECKING:
    from smarter_device_manager.deviceplugin.cdisync import CdiKeeper
from smarter_device_manager.lowmem import SmallEvent
from smarter_device_manager.mountpolicy import host_problem

log = logging.getLogger(__name__)

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
OPTIONS = pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


# (resource name, device IDs, container paths handed over, error or None)
AllocateHook = Callable[[str, list[str], list[str], "str | None"], None]


@dataclass(frozen=True)
class Paths:
    """Where device nodes are, seen by the daemon and by the node's runtime; and, with
    ``--cdi on``, the CDI spec that names them (shared by every plugin)."""

    dev_dir: str
    host_dev_dir: str
    cdi: CdiKeeper | None = None


class DevicePlugin(DevicePluginService):
    """Serves one resource: ``<prefix>/<resource.name>``."""

    __slots__ = ("_changed", "_fixed", "_idle", "_ids", "_on_allocate", "_paths", "_stopped", "gone",
                 "healthy", "messages_sent", "resource", "resource_name", "streams")

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
        self.gone: tuple[Member, ...] = ()  # pool members unplugged, advertised Unhealthy
        self._paths = paths
        self._on_allocate = on_allocate
        self._changed = SmallEvent()  # replaced on every change; streams wait on it
        self._stopped = False
        self._idle: asyncio.Future[None] | None = None  # only while stopping
        # Worked out from the resource once, on the first Allocate after it changed (see answer):
        self._ids: tuple[tuple[str, ...], frozenset[str]] | None = None  # IDs, in order and as a set
        self._fixed: tuple[list[pb.DeviceSpec], dict[str, str], list[pb.Mount], Handover] | None = None
        self.streams = 0
        self.messages_sent = 0

    # --- state, driven by reconcile -------------------------------------------------
    def update(self, resource: Resource, healthy: bool, gone: tuple[Member, ...] = ()) -> bool:
        """Take a new resource/health; return True if the kubelet must be told."""
        if resource.kind == KIND_POOL or self.resource.kind == KIND_POOL:
            before = self.listing()
            self.resource, self.healthy, self.gone = resource, healthy, gone
            announce = self.listing() != before
        else:
            announce = resource.count != self.resource.count or healthy != self.healthy
            self.resource, self.healthy = resource, healthy
        self._ids = self._fixed = None
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
        if self.resource.kind == KIND_POOL:
            return [device_id for device_id, _ in self.listing()]
        return [str(i) for i in range(self.resource.count)]

    def listing(self) -> list[tuple[str, str]]:
        """(device ID, health) as the kubelet is told, in a stable order."""
        health = HEALTHY if self.healthy else UNHEALTHY
        if self.resource.kind != KIND_POOL:
            return [(str(i), health) for i in range(self.resource.count)]
        members = [(m, health) for m in self.resource.members] + [(m, UNHEALTHY) for m in self.gone]
        members.sort(key=lambda pair: pair[0].identity)
        return [(device_id, h) for m, h in members for device_id in member_ids(m, self.resource.count)]

    def list_response(self) -> pb.ListAndWatchResponse:
        return pb.ListAndWatchResponse(
            devices=[pb.Device(ID=device_id, health=health) for device_id, health in self.listing()]
        )

    # --- RPCs --------------------------------------------------------------------------
    async def GetDevicePluginOptions(self, stream: Call) -> None:
        await stream.recv_message()
        await stream.send_message(OPTIONS)

    async def ListAndWatch(self, stream: Call) -> None:
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

    async def GetPreferredAllocation(self, stream: Call) -> None:
        request = await stream.recv_message()
        responses = [
            pb.ContainerPreferredAllocationResponse(deviceIDs=self.prefer(
                list(container.available_deviceIDs), list(container.must_include_deviceIDs),
                container.allocation_size))
            for container in request.container_requests
        ]
        await stream.send_message(pb.PreferredAllocationResponse(container_responses=responses))

    def prefer(self, available: list[str], must: list[str], size: int) -> list[str]:
        """The IDs to give a container: ``must`` first, then, for a pool, distinct
        devices while any is free, the least shared (most free copies) first."""
        chosen = list(dict.fromkeys(must))
        candidates = [i for i in dict.fromkeys(available) if i not in chosen]
        if self.resource.kind != KIND_POOL:
            return chosen + candidates[:max(0, size - len(chosen))]
        owner = {device_id: m.identity for m in self.resource.members + self.gone
                 for device_id in member_ids(m, self.resource.count)}
        free: dict[str, int] = {}
        for device_id in candidates:
            free[owner.get(device_id, device_id)] = free.get(owner.get(device_id, device_id), 0) + 1
        used: dict[str, int] = {}
        for device_id in chosen:
            used[owner.get(device_id, device_id)] = used.get(owner.get(device_id, device_id), 0) + 1
        while len(chosen) < size and candidates:
            def rank(device_id: str) -> tuple[int, int, str]:
                member = owner.get(device_id, device_id)
                return used.get(member, 0), -free[member], device_id

            best = min(candidates, key=rank)
            candidates.remove(best)
            member = owner.get(best, best)
            used[member] = used.get(member, 0) + 1
            free[member] -= 1
            chosen.append(best)
        return chosen

    async def Allocate(self, stream: Call) -> None:
        request = await stream.recv_message()
        if self._ids is None:
            ordered = tuple(self.device_ids())
            self._ids = ordered, frozenset(ordered)
        ordered, known = self._ids
        responses = []
        for container in request.container_requests:
            ids = list(container.devices_ids)
            try:
                unknown = [i for i in ids if i not in known]
                if unknown:
                    span = f"{ordered[0]} to {ordered[-1]}" if ordered else "- to -"
                    raise RpcError(
                        Status.INVALID_ARGUMENT,
                        f"{self.resource_name}: unknown device IDs {unknown}; "
                        f"this plugin has IDs {span}",
                    )
                answer = self.answer(ids)
            except RpcError as exc:
                self._report(ids, [], str(exc.message))
                raise
            responses.append(answer)
            self._report(ids, [s.container_path for s in answer.devices], None)
        await stream.send_message(pb.AllocateResponse(container_responses=responses))

    def _report(self, ids: list[str], paths: list[str], error: str | None) -> None:
        if self._on_allocate is not None:
            self._on_allocate(self.resource_name, ids, paths, error)

    async def PreStartContainer(self, stream: Call) -> None:
        await stream.recv_message()
        await stream.send_message(pb.PreStartContainerResponse())

    def answer(self, ids: list[str]) -> pb.ContainerAllocateResponse:
        """What one container gets for ``ids`` (see handover.py): nodes, env and
        mounts, every node checked again to still be a device inside the dev root.

        The checks run on every call; what they check does not change between rescans for a
        resource of fixed nodes (not a pool, whose answer depends on the IDs, nor a directory,
        listed again each time), so its DeviceSpecs, env and mounts are worked out on the first
        Allocate after the resource changed and reused until it changes again (``update``)."""
        resource = self.resource
        if not self.healthy:
            raise RpcError(Status.FAILED_PRECONDITION,
                           f"{self.resource_name}: {resource.where} is gone from the node")
        nodes: tuple[DeviceNode, ...] | None = None
        members: list[Member] | None = None
        fixed = self._fixed
        if fixed is not None:
            specs, env, mounts, given = fixed
            for node, _ in given.nodes:
                self._check(node)
            for mount in given.mounts:
                self._check_mount(mount.host_path)
        else:
            if resource.kind == KIND_POOL:
                members = self._members(ids)
            elif resource.kind == KIND_DIRECTORY:
                # What is in the directory now, not at the last scan: a sound card
                # may have gained or lost nodes since.
                nodes, problems = directory_nodes(self._paths.dev_dir, resource.path)
                for problem in problems:
                    log.warning("%s: Allocate: %s", self.resource_name, problem)
                if not nodes:
                    why = "; ".join(problems) or f"/dev/{resource.path} holds no device nodes"
                    raise RpcError(Status.FAILED_PRECONDITION, f"{self.resource_name}: {why}")
            given = handover(self.resource_name, resource, nodes, members)
            specs = [self._spec(node, target) for node, target in given.nodes]
            mounts = []
            for mount in given.mounts:
                self._check_mount(mount.host_path)
                mounts.append(pb.Mount(container_path=mount.container_path,
                                       host_path=mount.host_path, read_only=True))
            env = dict(given.env)
            if resource.kind not in (KIND_POOL, KIND_DIRECTORY):
                self._fixed = specs, env, mounts, given
        answer = pb.ContainerAllocateResponse(devices=specs, envs=env, mounts=mounts)
        cdi = self._paths.cdi
        if cdi is not None and cdi.error is None:
            from smarter_device_manager.cdi import CdiError

            try:
                names = cdi.names(resource, members)
            except CdiError as exc:
                log.warning("%s: answering without CDI: %s", self.resource_name, exc)
            else:
                # The DeviceSpecs, envs and mounts go along: a kubelet before 1.31 (or with
                # the gate off) ignores cdi_devices, and containerd 2.3 with both merges them
                # (one device, one mount; tried on Kubernetes 1.36, docs/decisions.md).
                answer.cdi_devices = [pb.CDIDevice(name=name) for name in names]
        return answer

    def _members(self, ids: list[str]) -> list[Member]:
        """The distinct pool members behind ``ids``, in the order asked."""
        owner = {device_id: m for m in self.resource.members
                 for device_id in member_ids(m, self.resource.count)}
        members: list[Member] = []
        for device_id in ids:
            member = owner.get(device_id)
            if member is None:
                raise RpcError(Status.FAILED_PRECONDITION,
                               f"{self.resource_name}: device {device_id} is unplugged")
            if member not in members:
                members.append(member)
        return members

    def _spec(self, node: DeviceNode, container_path: str) -> pb.DeviceSpec:
        """A DeviceSpec for ``node``, which must still be a device node inside the dev dir.

        Checked again here, not only at discovery, because the node may have been
        replaced by something else since the last scan, or a directory on its way
        swapped for a symlink to somewhere else; a container must never be handed a
        regular file, a socket or a node from outside the dev dir. (The runtime opens
        the host path later, when it creates the container; a swap after this check
        is beyond what a device plugin can see.)
        """
        self._check(node)
        return pb.DeviceSpec(
            container_path=container_path,
            host_path=f"{self._paths.host_dev_dir.rstrip('/')}/{node.source}",
            permissions="rw",
        )


    def _check(self, node: DeviceNode) -> None:
        refused = node_problem(self._paths.dev_dir, node.source)
        if refused is not None:
            raise RpcError(Status.FAILED_PRECONDITION, f"{self.resource_name}: {refused}")

    def _check_mount(self, host_path: str) -> None:
        refused = host_problem(host_path)  # swapped for a socket since the scan?
        if refused:
            raise RpcError(Status.FAILED_PRECONDITION, f"{self.resource_name}: {refused}")


class PluginServer(UnixServer):
    """The gRPC server on a unix socket that hosts one plugin."""

    __slots__ = ("plugin",)

    def __init__(self, plugin: DevicePlugin, socket_path: str) -> None:
        super().__init__(plugin, socket_path)
        self.plugin = plugin

    def _new_server(self) -> Server:
        return Server(self.plugin, SERVER_METHODS)

    async def start(self) -> None:
        self.plugin.resume()
        await super().start()

    async def stop(self, end_streams: bool = True) -> None:
        # The socket goes first, so once the kubelet sees its stream end the
        # resource is really gone from the directory too.
        self.remove_own_socket()
        if end_streams:
            self.plugin.stop()
            await self.plugin.streams_ended(0.1)
        await self.close_server()
