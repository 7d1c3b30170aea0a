"""A kubelet stand-in that behaves like the real one towards device plugins.

Modelled on the facts in shared/reference/kubelet-device-plugin-api.md:

* on start it deletes every entry of the plugin dir that is not a directory,
  except its own ``kubelet_internal_checkpoint`` (as the kubelet's
  CleanupPluginDirectory does), then serves ``Registration`` on ``kubelet.sock``;
* ``Register`` is rejected unless the version is ``v1beta1`` and the resource
  name is a valid extended resource name; then it dials the endpoint (retrying
  for up to 10 s), calls ``GetDevicePluginOptions`` and uses *that* answer, and
  opens ``ListAndWatch`` in the background;
* every ListAndWatch message replaces the resource's device list; when the
  stream ends, all its devices turn unhealthy (capacity stays);
* a second Register for the same resource replaces the first endpoint;
* ``restart()`` is a kubelet restart: streams die, sockets are deleted,
  ``kubelet.sock`` is created again. The kubelet never reconnects on its own.
  ``restart(delete_sockets=False)`` recreates ``kubelet.sock`` while the
  plugins' sockets survive (a kubelet whose clean-up did not run, or a socket
  recreated by hand): a plugin must notice ``kubelet.sock`` alone and register
  again on the sockets it still has.

It records how each ListAndWatch stream ended (``PluginState.ended``): ``"ok"``
for the plugin ending it with status OK, the error for a reset or a lost
connection, ``"dropped"`` when the stand-in itself closed it.

Used by the end-to-end tests and by ``bench/run.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import deviceplugin_pb2 as pb  # the real protobuf runtime, generated from our .proto
from deviceplugin_grpc import DevicePluginStub, RegistrationBase
from grpclib import GRPCError, Status
from grpclib.client import Channel
from grpclib.exceptions import StreamTerminatedError
from grpclib.server import Server, Stream

_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
CHECKPOINT = "kubelet_internal_checkpoint"  # the one file CleanupPluginDirectory keeps


def is_extended_resource_name(name: str) -> bool:
    """The kubelet's ``IsExtendedResourceName`` for the ``domain/name`` form."""
    domain, sep, short = name.partition("/")
    if not sep or "/" in short or domain.endswith("kubernetes.io"):
        return False
    if len("requests." + domain) > 253 or not _DNS_SUBDOMAIN.match("requests." + domain):
        return False
    return bool(_QUALIFIED_NAME.match(short))


@dataclass
class Update:
    at: float
    devices: dict[str, str]


@dataclass
class PluginState:
    resource: str
    endpoint: str
    options: pb.DevicePluginOptions
    channel: Channel
    stub: DevicePluginStub
    devices: dict[str, str] = field(default_factory=dict)
    updates: list[Update] = field(default_factory=list)
    streaming: bool = False
    ended: str | None = None  # how the stream ended: "ok", "dropped" or the error
    task: asyncio.Task[None] | None = None
    registered_at: float = 0.0

    @property
    def allocatable(self) -> int:
        return sum(1 for h in self.devices.values() if h == "Healthy")


class _Registration(RegistrationBase):
    def __init__(self, kubelet: KubeletStandin) -> None:
        self.kubelet = kubelet

    async def Register(self, stream: Stream[pb.RegisterRequest, pb.Empty]) -> None:
        request = await stream.recv_message()
        assert request is not None
        await self.kubelet.register(request)
        await stream.send_message(pb.Empty())


class KubeletStandin:
    def __init__(self, plugin_dir: str, dial_timeout: float = 10.0) -> None:
        self.plugin_dir = plugin_dir
        self.socket = os.path.join(plugin_dir, "kubelet.sock")
        self.dial_timeout = dial_timeout
        self.plugins: dict[str, PluginState] = {}
        self.register_requests: list[pb.RegisterRequest] = []
        self.rejected: list[tuple[str, str]] = []
        self.messages_received = 0
        self._server: Server | None = None
        self._changed = asyncio.Condition()

    # --- lifecycle ------------------------------------------------------------------
    async def start(self, delete_sockets: bool = True) -> None:
        os.makedirs(self.plugin_dir, exist_ok=True)
        # As the kubelet's CleanupPluginDirectory (1.28 devicemanager/manager.go): every entry
        # that is not a directory, except its own checkpoint, goes; directories stay.
        for name in os.listdir(self.plugin_dir) if delete_sockets else ():
            path = os.path.join(self.plugin_dir, name)
            if name != CHECKPOINT and not stat.S_ISDIR(os.lstat(path).st_mode):
                os.unlink(path)
        server = Server([_Registration(self)])
        await server.start(path=self.socket)
        self._server = server

    async def stop(self) -> None:
        """The kubelet dies: its socket goes, every stream ends."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        for state in self.plugins.values():
            await self._drop(state)
        await self._notify()

    async def restart(self, delete_sockets: bool = True) -> None:
        await self.stop()
        await self.start(delete_sockets)

    # --- Registration ---------------------------------------------------------------
    async def register(self, request: pb.RegisterRequest) -> None:
        self.register_requests.append(request)
        problem = None
        if request.version != "v1beta1":
            problem = f"unsupported version {request.version!r}"
        elif not is_extended_resource_name(request.resource_name):
            problem = f"invalid extended resource name {request.resource_name!r}"
        elif "/" in request.endpoint or not request.endpoint:
            problem = f"endpoint {request.endpoint!r} must be a file name in the plugin dir"
        if problem:
            self.rejected.append((request.resource_name, problem))
            raise GRPCError(Status.INVALID_ARGUMENT, problem)
        old = self.plugins.pop(request.resource_name, None)
        if old is not None:
            await self._drop(old)
        channel = Channel(path=os.path.join(self.plugin_dir, request.endpoint))
        stub = DevicePluginStub(channel)
        options = await self._dial(stub, request)
        state = PluginState(request.resource_name, request.endpoint, options, channel, stub,
                            registered_at=time.monotonic())
        if old is not None:  # capacity survives a re-registration until the new list arrives
            state.devices = {k: "Unhealthy" for k in old.devices}
        self.plugins[request.resource_name] = state
        state.task = asyncio.create_task(self._list_and_watch(state))
        await self._notify()

    async def _dial(self, stub: DevicePluginStub, request: pb.RegisterRequest) -> pb.DevicePluginOptions:
        deadline = time.monotonic() + self.dial_timeout
        while True:
            try:
                return await stub.GetDevicePluginOptions(pb.Empty(), timeout=self.dial_timeout)
            except (OSError, GRPCError) as exc:
                if time.monotonic() > deadline:
                    raise GRPCError(Status.UNAVAILABLE,
                                    f"cannot dial {request.endpoint}: {exc}") from None
                await asyncio.sleep(0.05)

    async def _list_and_watch(self, state: PluginState) -> None:
        try:
            async with state.stub.ListAndWatch.open() as stream:
                await stream.send_message(pb.Empty(), end=True)
                state.streaming = True
                while True:
                    message = await stream.recv_message()
                    if message is None:
                        break
                    state.devices = {d.ID: d.health for d in message.devices}
                    self.messages_received += 1
                    state.updates.append(Update(time.monotonic(), dict(state.devices)))
                    await self._notify()
            state.ended = "ok"  # leaving the block awaited the trailers: status OK
        except asyncio.CancelledError:
            state.ended = "dropped"
        except (GRPCError, StreamTerminatedError, OSError) as exc:
            state.ended = f"{type(exc).__name__}: {exc}"
        finally:
            # Like the kubelet: a plugin whose stream ended is disconnected; only a new
            # Register brings it back.
            state.streaming = False
            state.channel.close()
            state.devices = {k: "Unhealthy" for k in state.devices}
            await self._notify()

    async def _drop(self, state: PluginState) -> None:
        if state.task is not None:
            state.task.cancel()
            await asyncio.gather(state.task, return_exceptions=True)
        state.channel.close()

    # --- what tests ask ---------------------------------------------------------------
    async def allocate(self, resource: str, ids: list[str]) -> pb.AllocateResponse:
        state = self.plugins[resource]
        request = pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)])
        response: pb.AllocateResponse = await state.stub.Allocate(request)
        return response

    async def preferred(self, resource: str, available: list[str], size: int,
                        must: list[str] | None = None) -> list[str]:
        """GetPreferredAllocation for one container, as the kubelet asks it before Allocate."""
        state = self.plugins[resource]
        request = pb.PreferredAllocationRequest(container_requests=[pb.ContainerPreferredAllocationRequest(
            available_deviceIDs=available, must_include_deviceIDs=must or [], allocation_size=size)])
        response = await state.stub.GetPreferredAllocation(request)
        return list(response.container_responses[0].deviceIDs)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds, woken by every state change. The default
        deadline is generous: it only bounds how long a failing test takes."""
        async def waiter() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)
        try:
            await asyncio.wait_for(waiter(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out after {timeout}s; kubelet sees {self.summary()}") from None

    def summary(self) -> dict[str, str]:
        return {
            name: f"{s.allocatable}/{len(s.devices)} healthy, {'streaming' if s.streaming else 'no stream'}"
            for name, s in sorted(self.plugins.items())
        }

    def healthy(self, resource: str) -> int:
        state = self.plugins.get(resource)
        return state.allocatable if state and state.streaming else 0

    def capacity(self, resource: str) -> int:
        state = self.plugins.get(resource)
        return len(state.devices) if state else 0
